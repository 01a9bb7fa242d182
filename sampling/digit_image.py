"""Pictures in and out of the browser demo: a drawing or a photo made into an MNIST digit,
digits blown up for the page, and a digit with the code rows the prior rewrites tinted.
Plain torch/numpy, so the tests use it without gradio."""
from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import VQGenError
from common.images import to_uint8

BOX, FIELD = 20, 28         # MNIST: the ink's bounding box scaled to 20x20, centred by mass in 28x28
INK_CHOICES = ("auto", "white on black", "black on white")
SHOW_SCALE = 4              # pixels per MNIST pixel in the page


MAX_PICTURE_PIXELS = 2048 * 2048   # an upload's size, read from its header before any decoding


class PictureError(VQGenError):
    """A picture given to the page or to --complete that cannot be used: the message says why."""


def check_picture(source, what: str = "the picture") -> None:
    """Refuse, in one line and before decoding a pixel, a picture that is unreadable or larger
    than MAX_PICTURE_PIXELS (a 194 KB PNG can declare 13000x13000 pixels: gigabytes decoded).
    source: a path or a binary file object."""
    import warnings
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # we say it ourselves
            with Image.open(source) as image:   # reads the header only
                width, height = image.size
    except Image.DecompressionBombError as err:   # the page lowers Pillow's own bound to ours
        width = height = None
        found = re.search(r"\((\d+) pixels\)", str(err))
    except (UnidentifiedImageError, OSError, ValueError):
        raise PictureError(f"{what} is not an image vqgen can read (PNG, JPEG, WebP, ...)") from None
    if width is None or width * height > MAX_PICTURE_PIXELS:
        size = f"{width}x{height} pixels" if width else f"{int(found[1]) / 1e6:.0f} megapixels" if found \
            else "too many pixels"
        raise PictureError(f"{what} has {size}; the most taken is {MAX_PICTURE_PIXELS / 1e6:.1f} megapixels "
                        f"(2048x2048): scale it down first")


def to_mnist(image: np.ndarray, ink: str = "auto") -> torch.Tensor:
    """A drawing or a photo (H,W), (H,W,3) or (H,W,4) uint8 -> float [1,28,28] in [0,1],
    made the way MNIST's digits were: white ink on black, the ink's bounding box scaled
    to fit 20x20 with its aspect kept, placed so its centre of mass is the field's centre.
    Strokes on a transparent canvas are ink wherever there is paint, whatever the colour;
    an opaque image is inverted when its ink is dark (ink="auto": a bright border)."""
    if ink not in INK_CHOICES:
        raise PictureError(f"ink={ink!r}: expected one of {', '.join(INK_CHOICES)}")
    shape = np.shape(image)
    if len(shape) not in (2, 3) or min(shape[:2]) < 2:
        raise PictureError(f"need an image, got an array of shape {shape}")
    if shape[0] * shape[1] > MAX_PICTURE_PIXELS:   # before the float copy, which costs 4 bytes a value
        raise PictureError(f"the picture has {shape[1]}x{shape[0]} pixels; the most taken is "
                        f"{MAX_PICTURE_PIXELS / 1e6:.1f} megapixels (2048x2048): scale it down first")
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 4 and a[..., 3].min() < 255:
        gray = a[..., 3] / 255
    else:
        gray = (a[..., :3].mean(-1) if a.ndim == 3 else a) / 255
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        if ink == "black on white" or (ink == "auto" and np.median(border) > 0.5):
            gray = 1 - gray
    gray = np.clip(gray, 0, 1)
    rows, cols = np.nonzero(gray > 0.1)
    if len(rows) == 0:
        raise PictureError("the canvas is empty: draw a digit (or pick a test digit) first")
    crop = torch.from_numpy(np.ascontiguousarray(gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]))
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    small = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1)
    mass = small.sum()
    centre_y = (small.sum(1) * torch.arange(size[0])).sum() / mass
    centre_x = (small.sum(0) * torch.arange(size[1])).sum() / mass
    # MNIST's test digits have their centre of mass at pixel (14.0, 14.0), measured so.
    top = int(np.clip(round(FIELD / 2 - centre_y.item()), 0, FIELD - size[0]))
    left = int(np.clip(round(FIELD / 2 - centre_x.item()), 0, FIELD - size[1]))
    field = torch.zeros(1, FIELD, FIELD)
    field[0, top:top + size[0], left:left + size[1]] = small
    return field


def shown_scale(side: int) -> int:
    """Pixels on the page per image pixel: about 112 on the page, MNIST's 28 x SHOW_SCALE."""
    return max(1, round(FIELD * SHOW_SCALE / side))


def enlarged(images: torch.Tensor, scale: int = 0) -> np.ndarray:
    """float [N,C,H,W] in [0,1] -> uint8 [N,H*scale,W*scale] (grey) or [N,H*scale,W*scale,3],
    blown up without blur for the page (scale 0: shown_scale of the images' side)."""
    scale = scale or shown_scale(images.shape[-1])
    return to_uint8(images).repeat_interleave(scale, 1).repeat_interleave(scale, 2).numpy()


def fit_to(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A drawn digit [1,28,28] made the tokenizer's input shape (C,H,W): resized, and on every
    channel for a colour tokenizer (white ink on black, as drawn)."""
    channels, height, width = shape
    if tuple(image.shape[-2:]) != (height, width):
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    return image.expand(channels, -1, -1).contiguous()


GAP = 2 * SHOW_SCALE        # pixels between the digits of an answer's picture
COLUMNS = 8


def picture(images: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    """uint8 [N,h,w] -> one uint8 picture of them, `columns` a row, GAP pixels apart (grey
    gaps): one file per answer instead of one per digit, for the page's cache."""
    n, h, w = images.shape[:3]
    columns = min(columns, n)
    rows = -(-n // columns)
    sheet = np.full((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP, *images.shape[3:]), 96, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * (h + GAP): r * (h + GAP) + h, c * (w + GAP): c * (w + GAP) + w] = image
    return sheet


def picked(x: float, y: float, n: int, cell: int, columns: int = COLUMNS) -> int | None:
    """Which of n digits in a picture() of cells cell x cell pixels lies under pixel (x, y);
    None for a gap or past the last digit."""
    columns = min(columns, n)
    c, dx = divmod(int(x), cell + GAP)
    r, dy = divmod(int(y), cell + GAP)
    index = r * columns + c
    if x < 0 or y < 0 or dx >= cell or dy >= cell or c >= columns or index >= n:
        return None
    return index


def kept_part(image: torch.Tensor, keep_rows: int, grid: int) -> np.ndarray:
    """The input [C,H,W] as RGB with the rows the prior will rewrite tinted blue: what it keeps, seen."""
    shown = torch.from_numpy(enlarged(image[None])[0]).float()
    rgb = torch.stack([shown, shown, shown], -1) if shown.dim() == 2 else shown
    cut = round(keep_rows * rgb.shape[0] / grid)
    rgb[cut:] = rgb[cut:] * 0.35 + torch.tensor([20.0, 40.0, 110.0])
    return rgb.round().to(torch.uint8).numpy()
