"""Pictures in and out of the browser demo: a drawing or a photo made into an MNIST digit,
digits blown up for the page, and a digit with the code rows the prior rewrites tinted.
Plain torch/numpy, so the tests use it without gradio."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from prior.model import GRID
from sampling.demo import DemoError

BOX, FIELD = 20, 28         # MNIST: the ink's bounding box scaled to 20x20, centred by mass in 28x28
INK_CHOICES = ("auto", "white on black", "black on white")
SHOW_SCALE = 4              # pixels per MNIST pixel in the page


def to_mnist(image: np.ndarray, ink: str = "auto") -> torch.Tensor:
    """A drawing or a photo (H,W), (H,W,3) or (H,W,4) uint8 -> float [1,28,28] in [0,1],
    made the way MNIST's digits were: white ink on black, the ink's bounding box scaled
    to fit 20x20 with its aspect kept, placed so its centre of mass is the field's centre.
    Strokes on a transparent canvas are ink wherever there is paint, whatever the colour;
    an opaque image is inverted when its ink is dark (ink="auto": a bright border)."""
    if ink not in INK_CHOICES:
        raise DemoError(f"ink={ink!r}: expected one of {', '.join(INK_CHOICES)}")
    a = np.asarray(image, dtype=np.float32)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 2:
        raise DemoError(f"need an image, got an array of shape {a.shape}")
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
        raise DemoError("the canvas is empty: draw a digit (or pick a test digit) first")
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


def to_uint8(images: torch.Tensor, scale: int = SHOW_SCALE) -> np.ndarray:
    """float [N,1,28,28] in [0,1] -> uint8 [N,28*scale,28*scale], blown up without blur."""
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2).numpy()


def kept_part(image: torch.Tensor, keep_rows: int) -> np.ndarray:
    """The input as RGB with the rows the prior will rewrite tinted blue: what it keeps, seen."""
    gray = torch.from_numpy(to_uint8(image[None])[0]).float()
    rgb = torch.stack([gray, gray, gray], -1)
    cut = keep_rows * (FIELD // GRID) * SHOW_SCALE
    rgb[cut:] = rgb[cut:] * 0.35 + torch.tensor([20.0, 40.0, 110.0])
    return rgb.round().to(torch.uint8).numpy()
