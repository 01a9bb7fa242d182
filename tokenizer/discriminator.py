"""A small patch discriminator and the hinge losses of the adversarial decoder phase.

As in VQGAN (Esser et al. 2021) and pix2pix before it, the discriminator scores
patches, not whole images: an image in [-1, 1] -> a grid of logits at a quarter of
its side (MNIST: 28x28 -> 7x7), each seeing about a quarter of the picture. No
spectral normalisation: with it this small net learnt slower and made the decoder
unstable at a higher learning rate (docs/EXPERIMENTS.md); the MSE term anchors the
decoder instead. The decoder never needs it to decode: it lives only in the
phase's checkpoints.

A patch head alone never sees a whole picture, while a classifier that tells our
pictures from real ones does (the evaluator's two-sample test). `whole_image=True`
adds a second head on the same features: one logit per image from all positions.
Each head's hinge loss is averaged over its own logits, so the single whole-image
logit weighs as much as all the patches together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, image_channels: int, image_size: int, channels: int = 32, whole_image: bool = False):
        super().__init__()
        C = channels
        self.features = nn.Sequential(
            nn.Conv2d(image_channels, C, 4, stride=2, padding=1), nn.LeakyReLU(0.2),   # side / 2
            nn.Conv2d(C, 2 * C, 4, stride=2, padding=1), nn.LeakyReLU(0.2),            # side / 4
        )
        self.patch_head = nn.Conv2d(2 * C, 1, 3, padding=1)                     # (B, 1, side / 4, side / 4)
        cells = (image_size // 4) ** 2
        self.image_head = nn.Sequential(nn.Flatten(), nn.Linear(2 * C * cells, 1)) if whole_image else None
        self._register_load_state_dict_pre_hook(_old_head_name)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, C, H, W) in [-1, 1] -> each head's logits, > 0 meaning "real": patch
        logits (B, 1, H/4, W/4), then with whole_image one logit per image (B, 1)."""
        h = self.features(images)
        return [self.patch_head(h)] + ([self.image_head(h)] if self.image_head is not None else [])


def _old_head_name(state_dict, prefix, *args):
    """A checkpoint's discriminator saved when the whole-picture head was called digit_head."""
    for key in [k for k in state_dict if k.startswith(prefix + "digit_head.")]:
        state_dict[key.replace(prefix + "digit_head.", prefix + "image_head.", 1)] = state_dict.pop(key)


def hinge_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Per head, mean relu(1 - D(x)) + mean relu(1 + D(G(z))): the discriminator's side of the hinge game."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))


def hinge_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Per head, -mean D(G(z)): the decoder pushes its scores up."""
    return -sum(f.mean() for f in fake_logits)


def r1_penalty(real_logits: list[torch.Tensor], real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over images of ||grad_x D(x)||^2 on real images, which
    keeps the discriminator smooth where the data is, so it can be made stronger without
    throwing the decoder around. real_images must require grad."""
    total = sum(r.sum() for r in real_logits)
    grad, = torch.autograd.grad(total, real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def adversarial_weight(step: int, weight: float, warmup_steps: int) -> float:
    """The adversarial term's weight at `step`: a linear ramp from 0 over warmup_steps, then `weight`.
    The ramp lets the discriminator learn what real strokes are before the decoder listens to it."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, (step + 1) / warmup_steps)
