"""Code grids of the train and test sets under a frozen tokenizer, encoded once.

The cache file is keyed by a hash of the tokenizer's weights (the tensors, not the
file: safetensors' metadata order varies, so identical weights can differ as files),
so retraining the tokenizer invalidates it instead of silently training on stale codes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from common.checkpoint import CheckpointError, load_weights, save_weights, tensors_digest
from common.grid import grid_to_sequence
from tokenizer.data import load_split, to_float


@torch.no_grad()
def encode_all(tokenizer, images_uint8: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """uint8 [N,28,28] -> int16 [N,49] codes in raster order."""
    device = next(tokenizer.parameters()).device
    out = [grid_to_sequence(tokenizer.encode(to_float(images_uint8[i:i + batch_size]).to(device))).cpu()
           for i in range(0, len(images_uint8), batch_size)]
    return torch.cat(out).to(torch.int16)


def load_code_grids(tokenizer, root: Path, dataset: str, cache_dir: Path,
                    train_subset: int = 0) -> dict[str, torch.Tensor]:
    """{train_codes, train_labels, test_codes, test_labels}, from cache when still valid."""
    key = f"{dataset}-{train_subset}-{tensors_digest(tokenizer.state_dict())[:16]}"
    cache = Path(cache_dir) / f"codes-{key}.safetensors"
    if cache.is_file():
        try:
            return load_weights(cache, "codes")
        except CheckpointError:
            cache.unlink(missing_ok=True)   # a damaged cache is just recomputed
    train_x, train_y = load_split(root, dataset, train=True, subset=train_subset)
    test_x, test_y = load_split(root, dataset, train=False)
    grids = {"train_codes": encode_all(tokenizer, train_x), "train_labels": train_y,
             "test_codes": encode_all(tokenizer, test_x), "test_labels": test_y}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for old in Path(cache_dir).glob("codes-*.safetensors"):
        old.unlink()
    save_weights(cache, grids, "codes")
    return grids
