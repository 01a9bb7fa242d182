"""The refiner: draws one of the pictures a code grid stands for, where the decoder paints their average.

A deterministic decoder trained on squared error paints the mean of the pictures that share a code
grid: a smooth stroke a classifier learns to spot. The refiner is a small conditional
flow-matching network (a U-Net over 2x2 patches), conditioned on the decoder's reconstruction,
that learns the straight path from noise (time 0) to a picture (time 1). Sampling starts part-way
along it, at time `start`, from the reconstruction blended with noise, and takes a few Euler steps
(SDEdit's start, a flow's steps): the reconstruction fixes the shape, the steps draw the strokes'
detail. The codes, the decoder and the prior are untouched (docs/EXPERIMENTS.md, "A decoder that
draws").

Everything here is in the model's range [-1, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    """conv, scaled and shifted by the time, conv; a residual whose second conv starts at 0 (so
    the block starts as the identity). No normalisation: on CPU it cost a third of the time."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(t_dim, 2 * c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(t)[:, :, None, None].chunk(2, 1)
        h = F.silu(self.conv1(F.silu(x)) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class Refiner(nn.Module):
    """The picture at the end of the path, predicted from a point x_t on it at time t and the
    reconstruction: the reconstruction plus what a two-level U-Net over 2x2 patches (side/2 ->
    side/4) adds (0 at first). Predicting the picture, not the velocity, makes the last Euler
    step land on a prediction: a velocity net left speckles of the starting noise."""

    PATCH = 2   # pixels a side per position: a full-resolution level cost two thirds of the time

    def __init__(self, channels: int, width: int):
        super().__init__()
        w1, w2, t_dim = width, 2 * width, width
        self.t_dim = t_dim
        self.time = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        patch_channels = channels * self.PATCH ** 2
        self.stem = nn.Conv2d(2 * patch_channels, w1, 3, padding=1)
        self.down1 = _Block(w1, w1, t_dim)
        self.pool = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.mid = _Block(w2, w2, t_dim)
        self.up1 = _Block(w2 + w1, w1, t_dim)
        self.out = nn.Conv2d(w1, patch_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.t_dim // 2
        freqs = torch.exp(-math.log(1000) * torch.arange(half, device=t.device) / half)
        angles = 1000 * t[:, None] * freqs[None]
        return self.time(torch.cat([angles.sin(), angles.cos()], 1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        te = self.embed(t)
        h1 = self.down1(self.stem(F.pixel_unshuffle(torch.cat([x_t, recon], 1), self.PATCH)), te)
        h = self.mid(self.pool(h1), te)
        h = self.up1(torch.cat([F.interpolate(h, size=h1.shape[-2:]), h1], 1), te)
        return recon + F.pixel_shuffle(self.out(h), self.PATCH)


MIN_TIME_LEFT = 0.05   # the velocity's denominator near the path's end: bounds the loss weight there


def velocity(refiner: Refiner, x_t: torch.Tensor, t: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The straight path's velocity towards the predicted picture, clamped to the pixels' range:
    a prediction past black (or white) is black, so training never pulls it back to hover about
    the edge, where it left the background speckled with faint grey (which tells a classifier
    at once: real backgrounds are exactly black)."""
    left = (1 - t).clamp(min=MIN_TIME_LEFT)[:, None, None, None]
    return (refiner(x_t, t, recon).clamp(-1, 1) - x_t) / left


def flow_loss(refiner: Refiner, recon: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Flow matching on the straight path from noise to the picture, at a logit-normal time over
    the whole path (the middle matters most; a path trained only where sampling runs measured
    worse): the velocity's squared error."""
    noise = torch.randn_like(image)
    t = torch.sigmoid(torch.randn(len(image), device=image.device))
    tb = t[:, None, None, None]
    return F.mse_loss(velocity(refiner, (1 - tb) * noise + tb * image, t, recon), image - noise)


@torch.no_grad()
def refine(refiner: Refiner, recon: torch.Tensor, steps: int, start: float,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler steps along the learned path from time `start`, where the picture is taken to be the
    reconstruction blended with noise, to time 1: one of the pictures the code grid behind recon
    stands for."""
    noise = torch.randn(recon.shape, generator=generator, device="cpu").to(recon)
    x = start * recon + (1 - start) * noise
    for k in range(steps):
        t = torch.full((len(x),), start + (1 - start) * k / steps, device=x.device)
        x = x + velocity(refiner, x, t, recon) * (1 - start) / steps
    return x.clamp(-1, 1)
