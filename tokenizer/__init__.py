"""Stage one: the VQ-VAE tokenizer.

    from tokenizer import load_tokenizer
    tok = load_tokenizer("runs/tokenizer")   # eval mode, on CPU unless device= given
    idx = tok.encode(x)                      # float [B,1,28,28] in [0,1] -> long [B,7,7]
    x_hat = tok.decode(idx)                  # -> float [B,1,28,28] in [0,1]
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import CheckpointError
from common.runs import load_run, load_weights_into
from tokenizer.config import TokenizerConfig
from tokenizer.model import VQVAE


def load_tokenizer(run_dir: str | Path = "runs/tokenizer", device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild a trained VQVAE from its run dir (config.yaml + model.safetensors)."""
    run_dir, cfg, weights = load_run(run_dir, TokenizerConfig, "tokenizer")
    model = VQVAE(cfg.shape(), seed=cfg.seed)
    if model.refiner is not None and not any(k.startswith("refiner.") for k in weights):
        model.refiner = None   # a run stopped before its refiner's phase: it decodes as it stands
    load_weights_into(model, weights, run_dir / "model.safetensors")
    return model.to(device).eval()


def tokenizer_data(run_dir: str | Path) -> tuple[str, dict]:
    """(dataset, what it is: channels, image_size, class_names, split, sizes) of a tokenizer run."""
    from common.config import ConfigError, config_from_file
    from common.pretrained import CONFIG, find_run
    from tokenizer.data import run_data_info
    folder = find_run(run_dir, "tokenizer")
    try:
        dataset = config_from_file(TokenizerConfig, folder / CONFIG).dataset
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return dataset, run_data_info(folder, dataset)


__all__ = ["load_tokenizer", "tokenizer_data", "VQVAE", "TokenizerConfig"]
