"""One picture file -> the pixels a viewer shows, as uint8, or a BadPicture that says why not.

How each kind of file is read (the README's table says the same):
- EXIF orientation is applied: a phone photo trains the way up every viewer shows it.
- An embedded colour profile (RGB or CMYK) is converted to sRGB.
- 8-bit grey and bilevel: as they are. 16-bit grey: scaled, 65535 -> 255. 32-bit integer
  grey: read as 16-bit; values outside 0..65535 are refused.
- Float grey: a picture within [0, 1] is scaled to 0..255, one within [0, 255] kept; anything
  else (negative, over 255, not a number) is refused: its range cannot be guessed.
- Palette: its colours (grey when every palette entry is grey).
- CMYK, YCbCr, HSV and premultiplied RGBa: converted to RGB. LAB and premultiplied La are
  refused, named: there is no conversion to trust here.
- Transparency (an alpha channel or a palette's transparent entry): composited onto black.
- Several frames (animations, TIFF pages): the first, the one a viewer shows still; the set's
  summary counts such files.
- A declared size over `max_pixels` is refused from the header, before any decoding.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_PIXELS = 100_000_000   # default bound on a picture's declared width x height (a 10000x10000 photo)
COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
REFUSED_MODES = {"LAB": "CIELab colour", "La": "premultiplied grey + alpha"}


class BadPicture(Exception):
    """A file that cannot be read as a picture; str(err) is the reason, without the path."""


@dataclass
class Header:
    colour: bool
    side: int      # the shorter side, in pixels
    frames: int


@contextlib.contextmanager
def pixel_limit():
    """Pillow's own decompression-bomb check off (it refuses at twice its limit with a message of
    its own): within this, `opened` checks the bound the caller states, with one message."""
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def opened(file, max_pixels: int = MAX_PIXELS):
    """The file opened by Pillow (not decoded), its declared size checked; any failure to open
    is a BadPicture."""
    from PIL import Image
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as err:
        raise BadPicture(f"declares more than {max_pixels:,} pixels ({err}); raise max_image_pixels= "
                         f"if it is a real picture") from None
    except Exception as err:   # noqa: BLE001 (Pillow raises many kinds on a bad file; each is a bad file)
        raise BadPicture(reason(err)) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise BadPicture(f"declares {width}x{height} = {width * height:,} pixels, over max_image_pixels="
                             f"{max_pixels:,} (a decompression bomb, or raise the bound if it is a real picture)")
        if width < 1 or height < 1:
            raise BadPicture(f"declares {width}x{height} pixels")
        yield image


def reason(err: Exception) -> str:
    """An exception as a short reason: its first line, or its type when it says nothing."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text or type(err).__name__


def read_header(file, max_pixels: int = MAX_PIXELS) -> Header:
    """Colour, shorter side and frame count from the header alone."""
    with opened(file, max_pixels) as image:
        try:
            return Header(is_colour(image), min(image.size), getattr(image, "n_frames", 1))
        except Exception as err:   # noqa: BLE001
            raise BadPicture(reason(err)) from None


def is_colour(image) -> bool:
    """Whether a picture (opened, not decoded) is colour: its mode, or a palette of colours."""
    if image.mode in ("P", "PA"):
        palette = image.getpalette()
        entries = np.asarray(palette or [], np.uint8)
        entries = entries[:len(entries) // 3 * 3].reshape(-1, 3)
        return bool((entries.max(1) != entries.min(1)).any()) if len(entries) else False
    return image.mode in COLOUR_MODES


def read_picture(file, colour: bool, max_pixels: int = MAX_PIXELS):
    """The file's first frame as a viewer shows it: a PIL image in mode RGB (colour) or L."""
    with opened(file, max_pixels) as image:
        try:
            return to_viewed(image, colour)
        except BadPicture:
            raise
        except Exception as err:   # noqa: BLE001 (a truncated or corrupt body fails while decoding)
            raise BadPicture(reason(err)) from None


def to_viewed(image, colour: bool):
    """An opened PIL image -> RGB or L with orientation, profile, range and alpha applied."""
    from PIL import Image, ImageOps
    if image.mode in REFUSED_MODES:
        raise BadPicture(f"mode {image.mode} ({REFUSED_MODES[image.mode]}) is not read; save it as RGB or grey")
    image.load()
    profile = image.info.get("icc_profile")   # taken first: a converted image does not keep it
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in SIXTEEN_BIT or image.mode in ("I", "F"):
        image = Image.fromarray(wide_grey_to_uint8(image))
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if profile and image.mode in ("RGB", "RGBA", "CMYK"):
        image = to_srgb(image, profile)
    mode = "RGB" if colour else "L"
    return image if image.mode == mode else image.convert(mode)


def wide_grey_to_uint8(image) -> np.ndarray:
    """16-bit, 32-bit integer and float grey -> uint8 [H,W], scaled by the range the mode
    means (floats: the range they are found in, [0,1] or [0,255])."""
    pixels = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(pixels).all():
            raise BadPicture("float pixels that are not numbers (NaN or infinite)")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 255:
            raise BadPicture(f"float pixels from {low:g} to {high:g}: only [0, 1] or [0, 255] can be read; "
                             f"save it rescaled to one of them, or as an 8- or 16-bit PNG")
        scale = 255.0 if high <= 1 else 1.0
        return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
    if image.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        raise BadPicture(f"32-bit integer pixels from {pixels.min()} to {pixels.max()}: read as 16-bit "
                         f"(0..65535), and these are outside it; save it as an 8- or 16-bit PNG")
    return np.rint(pixels.astype(np.float32) * (255 / 65535)).astype(np.uint8)


def to_srgb(image, profile: bytes):
    """Pixels in an embedded colour profile -> sRGB, as a colour-managed viewer shows them."""
    from PIL import ImageCms
    mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        transform = _transform_to_srgb(profile, image.mode, mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as err:
        raise BadPicture(f"its embedded colour profile cannot be applied ({reason(err)}); save it without "
                         f"one, or as sRGB") from None
    return ImageCms.applyTransform(image, transform)


@lru_cache(maxsize=16)   # a folder of photos from one camera shares one profile
def _transform_to_srgb(profile: bytes, in_mode: str, out_mode: str):
    from PIL import ImageCms
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), in_mode, out_mode)


def square(image, size: int):
    """A PIL picture (RGB or L) -> uint8 [size,size(,3)]: shorter side resized to size
    (antialiased), centre-cropped."""
    from PIL import Image
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.BICUBIC, reducing_gap=None)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)
