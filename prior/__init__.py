"""Stage two: the Transformer prior over code grids.

    from prior import load_prior
    gpt, cfg = load_prior("runs/prior")      # eval mode, on CPU unless device= given
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import CheckpointError
from common.runs import load_run, load_weights_into
from prior.config import PriorConfig
from prior.model import GPT


def load_prior(run_dir: str | Path = "runs/prior", device: str | torch.device = "cpu") -> tuple[GPT, PriorConfig]:
    """Rebuild a trained GPT from its run dir; returns (model, its config)."""
    run_dir, cfg, weights = load_run(run_dir, PriorConfig, "prior")
    if cfg.num_codes < 2:
        raise CheckpointError(f"{run_dir / 'config.yaml'}: num_codes={cfg.num_codes} is not a trained prior's")
    model = GPT(cfg.shape())
    load_weights_into(model, weights, run_dir / "model.safetensors")
    return model.to(device).eval(), cfg


__all__ = ["load_prior", "GPT", "PriorConfig"]
