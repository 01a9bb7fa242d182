"""Run directories: `config.yaml` + `model.safetensors` describe a trained model.

A run is rebuilt from the config saved beside its weights, so nobody retypes sizes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from common.checkpoint import CheckpointError, atomic_write_text, load_weights, save_weights
from common.config import ConfigError, config_from_file, config_to_dict

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def save_run_config(run_dir: Path, cfg) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def save_run_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], stage: str) -> None:
    save_weights(Path(run_dir) / WEIGHTS, state_dict, stage)


def load_run(run_dir: Path, config_cls, stage: str):
    """Return (config, weights) of a finished or in-progress run; one-line errors."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir}: no trained {stage} here (need {CONFIG} and {WEIGHTS}); "
                              f"train one first with `accelerate launch {stage}/train.py`")
    try:
        cfg = config_from_file(config_cls, run_dir / CONFIG)
    except ConfigError as err:
        message = str(err)
        raise CheckpointError(message if str(run_dir / CONFIG) in message else f"{run_dir / CONFIG}: {message}") from None
    return cfg, load_weights(run_dir / WEIGHTS, stage)
