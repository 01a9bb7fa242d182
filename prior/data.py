"""Code grids of the train and test sets under a frozen tokenizer, encoded once,
and (with `augment`) fresh grids of slightly distorted training pictures each epoch.

The cache file is keyed by a hash of the tokenizer's weights (the tensors, not the
file: safetensors' metadata order varies, so identical weights can differ as files),
so retraining the tokenizer invalidates it instead of silently training on stale codes.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from common.checkpoint import CheckpointError, load_weights, save_weights, tensors_digest
from common.grid import grid_to_sequence
from tokenizer.data import encode_images


def encode_all(tokenizer, images_uint8: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
    """uint8 [N,H,W] or [N,C,H,W] -> int16 [N,h*w] codes in raster order (MNIST: [N,49])."""
    return grid_to_sequence(encode_images(tokenizer, images_uint8, batch_size)).to(torch.int16)


def load_code_grids(tokenizer, data, dataset: str, cache_dir: Path, train_subset: int = 0) -> dict[str, torch.Tensor]:
    """{train_codes, train_labels, test_codes, test_labels} of a tokenizer.data.DataSet, from
    cache when still valid (the key names the set, its sizes and the tokenizer's weights)."""
    name = hashlib.sha256(f"{dataset}|{len(data.train)}|{len(data.test)}".encode()).hexdigest()[:12]
    key = f"{name}-{train_subset}-{tensors_digest(tokenizer.state_dict())[:16]}"
    cache = Path(cache_dir) / f"codes-{key}.safetensors"
    if cache.is_file():
        try:
            return load_weights(cache, "codes")
        except (CheckpointError, FileNotFoundError):   # damaged, or removed by another machine meanwhile:
            cache.unlink(missing_ok=True)               # just recomputed
    grids = {"train_codes": encode_all(tokenizer, data.train), "train_labels": data.train_labels,
             "test_codes": encode_all(tokenizer, data.test), "test_labels": data.test_labels}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for old in Path(cache_dir).glob("codes-*.safetensors"):
        old.unlink(missing_ok=True)   # another machine sharing the folder may have removed it
    save_weights(cache, grids, "codes")
    return grids


# Label-preserving distortions for `augment`: small enough that a 6 never turns into a 9.
MAX_SHIFT_PX = 1.5
MAX_ROTATION_DEG = 8.0
MAX_SCALE_CHANGE = 0.08


@torch.no_grad()
def distort(images_uint8: torch.Tensor, generator: torch.Generator, share: float, flip: bool = False,
            strength: float = 1.0, chunk: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,H,W] or [N,C,H,W] -> (the same shape, long [M] which): a random `share` of the
    pictures shifted, rotated and scaled a little (one affine warp each, bilinear; `strength`
    times the MAX_ sizes above), and with flip=True half of those mirrored left to right; the
    others as they are. (Exact one-pixel moves leaked into the samples more: docs/EXPERIMENTS.md.)

    Every random number is drawn for every image, so the result is a function of the
    generator's seed alone (exact resume), whatever `share` selects.
    """
    n = len(images_uint8)
    chosen = torch.rand(n, generator=generator) < share
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEG * strength)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * (MAX_SCALE_CHANGE * strength)
    side = images_uint8.shape[-1]
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (MAX_SHIFT_PX * strength * 2 / side)   # side = 2
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),    # x read from -x: mirrored
                         torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)   # (N, 2, 3)
    out = images_uint8.clone()
    which = chosen.nonzero().squeeze(1)
    grey = images_uint8.dim() == 3
    for i in range(0, len(which), chunk):   # bounded memory: the sampling grid is 2 floats a pixel
        rows = which[i:i + chunk]
        x = (images_uint8[rows].unsqueeze(1) if grey else images_uint8[rows]).float()
        grid = F.affine_grid(theta[rows], list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[rows] = (warped.squeeze(1) if grey else warped).round().clamp(0, 255).to(torch.uint8)
    return out, which


def augmented_codes(tokenizer, images_uint8: torch.Tensor, codes: torch.Tensor, seed: int, epoch: int,
                    share: float, flip: bool = False, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the code grids of epoch `epoch`, long [M] which are distorted): `codes` (those of
    images_uint8) with the distorted pictures re-encoded by the frozen tokenizer (only
    those: encoding is the cost)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    warped, which = distort(images_uint8, generator, share, flip, strength)
    fresh = codes.clone()
    fresh[which] = encode_all(tokenizer, warped[which]).to(codes.dtype)
    return fresh, which
