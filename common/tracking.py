"""Experiment tracking: opt-in wandb, offline unless the user's WANDB_MODE says otherwise."""
from __future__ import annotations

import os

from common.config import ConfigError


def make_accelerator(tracker: str):
    """An Accelerator that logs to wandb only when asked; never blocks without network."""
    from accelerate import Accelerator

    if tracker == "wandb":
        # Offline by default: a training run must never hang on a missing network.
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("tracker=wandb needs the wandb package: pip install wandb") from None
        return Accelerator(log_with="wandb")
    return Accelerator()


def start_tracking(accelerator, tracker: str, stage: str, config: dict, out_dir: str) -> None:
    if tracker == "wandb":
        accelerator.init_trackers(f"vqgen-{stage}", config=config,
                                  init_kwargs={"wandb": {"dir": out_dir}})
