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
from common.runs import load_run
from tokenizer.config import TokenizerConfig
from tokenizer.model import VQVAE


def load_tokenizer(run_dir: str | Path = "runs/tokenizer", device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild a trained VQVAE from its run dir (config.yaml + model.safetensors)."""
    run_dir, cfg, weights = load_run(run_dir, TokenizerConfig, "tokenizer")
    model = VQVAE(cfg.shape(), seed=cfg.seed)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{run_dir / 'model.safetensors'}: weights do not match its config.yaml "
                              f"({str(err).splitlines()[0]})") from None
    return model.to(device).eval()


__all__ = ["load_tokenizer", "VQVAE", "TokenizerConfig"]
