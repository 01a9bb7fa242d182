"""Experiment tracking: opt-in wandb, offline unless the user's WANDB_MODE says otherwise."""
from __future__ import annotations

import os

from common.config import ConfigError


def use_all_cores(accelerator) -> None:
    """On CPU, give each local process its share of the cores.

    `accelerate launch` without --cpu pins OMP_NUM_THREADS=1, which halves speed on
    a 2-core laptop; VQGEN_THREADS overrides our choice.
    """
    if accelerator.device.type != "cpu":
        return
    import torch
    wanted = os.environ.get("VQGEN_THREADS")
    threads = int(wanted) if wanted else max(1, (os.cpu_count() or 1) // accelerator.num_processes)
    torch.set_num_threads(threads)


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
        accelerator = Accelerator(log_with="wandb")
    else:
        accelerator = Accelerator()
    use_all_cores(accelerator)
    return accelerator


def start_tracking(accelerator, tracker: str, stage: str, config: dict, out_dir: str) -> None:
    if tracker == "wandb":
        accelerator.init_trackers(f"vqgen-{stage}", config=config,
                                  init_kwargs={"wandb": {"dir": out_dir}})
