"""Pictures as the stages pass them: uint8 as stored, float [N,C,H,W] in [0,1] as the models
take them; PSNR; and batches sized in pixels, so that a batch stated for small grey pictures
keeps its memory for large colour ones."""
from __future__ import annotations

import math
from typing import Callable

import torch

REFERENCE_PIXELS = 28 * 28   # the picture batch sizes and budgets are stated for (MNIST's grey 28x28)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W] (grey) or [N,C,H,W] -> float [N,C,H,W] in [0,1] (the API's pixel range)."""
    return (images.unsqueeze(1) if images.dim() == 3 else images).float().div_(255)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [N,C,H,W] in [0,1] -> uint8 as pictures are stored: [N,H,W] grey, [N,H,W,C] colour."""
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.permute(0, 2, 3, 1)


def quantized(images: torch.Tensor) -> torch.Tensor:
    """float pictures rounded to the 256 levels a saved picture has (what a judge of saved samples sees)."""
    return (images.clamp(0, 1) * 255).round() / 255


def psnr(mse: float | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error between pictures in [0,1]."""
    return 10 * math.log10(1 / max(float(mse), 1e-10))


def batch_for_pixels(images: torch.Tensor, reference_batch: int) -> int:
    """How many of `images` hold as many pixels as reference_batch grey 28x28 pictures."""
    return max(1, reference_batch * REFERENCE_PIXELS // (images[0].numel() if len(images) else REFERENCE_PIXELS))


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over consecutive batches of images, concatenated: bounded memory for any number."""
    return torch.cat([fn(images[i:i + batch_size]) for i in range(0, max(len(images), 1), batch_size)])
