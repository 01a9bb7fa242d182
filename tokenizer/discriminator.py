"""A small patch discriminator and the hinge losses of the adversarial decoder phase.

As in VQGAN (Esser et al. 2021) and pix2pix before it, the discriminator scores
patches, not whole images: 28x28 in [-1, 1] -> a 7x7 grid of logits, each seeing
a receptive field of about a quarter of the digit. No spectral normalisation: with
it this small net learnt slower, cost 20% more time a step, and at a higher
learning rate made the decoder unstable (docs/RESULTS.md); the MSE term anchors
the decoder instead. The decoder never needs it to decode: it lives only in the
phase's checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        C = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, C, 4, stride=2, padding=1), nn.LeakyReLU(0.2),        # 28 -> 14
            nn.Conv2d(C, 2 * C, 4, stride=2, padding=1), nn.LeakyReLU(0.2),    # 14 -> 7
            nn.Conv2d(2 * C, 1, 3, padding=1),                                  # (B, 1, 7, 7)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 1, 28, 28) in [-1, 1] -> patch logits (B, 1, 7, 7); > 0 means "real"."""
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean relu(1 - D(x)) + mean relu(1 + D(G(z))): the discriminator's side of the hinge game."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean D(G(z)): the decoder pushes its patches' scores up."""
    return -fake_logits.mean()


def adversarial_weight(step: int, weight: float, warmup_steps: int) -> float:
    """The adversarial term's weight at `step`: a linear ramp from 0 over warmup_steps, then `weight`.
    The ramp lets the discriminator learn what real strokes are before the decoder listens to it."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, (step + 1) / warmup_steps)
