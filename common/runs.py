"""Run directories: `config.yaml` + `model.safetensors` describe a trained model.

A run is rebuilt from the config saved beside its weights, so nobody retypes sizes.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import torch
import yaml

from common.checkpoint import CheckpointError, atomic_write_text, load_weights, save_weights
from common.config import ConfigError, config_from_file, config_to_dict
from common.pretrained import CONFIG, WEIGHTS, find_run, is_run, missing_run_message

LOCK = ".lock"


class RunInUseError(CheckpointError):
    """Another live training holds this run folder; printed as one line."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on run_dir while the block runs: one writer per run folder.

    flock(2) is released by the kernel when its holder dies, so a killed run never
    leaves a lock that blocks the next one; the pid inside is only for the message.
    Under DDP only global rank 0 takes it (the other ranks write nothing there).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunInUseError(f"{run_dir} is in use by another training (pid {holder}); wait for it to "
                                f"finish or choose another out_dir=") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock


def save_run_config(run_dir: Path, cfg) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def save_run_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], stage: str) -> None:
    save_weights(Path(run_dir) / WEIGHTS, state_dict, stage)


def load_run(location: str | Path, config_cls, stage: str):
    """Return (run folder, config, weights) of a finished or in-progress run; one-line errors.
    location: a path or a shipped run's name (common.pretrained.find_run)."""
    run_dir = find_run(location, stage)
    if not is_run(run_dir):
        raise CheckpointError(missing_run_message(location, stage))
    try:
        cfg = config_from_file(config_cls, run_dir / CONFIG)
    except ConfigError as err:
        message = str(err)
        raise CheckpointError(message if str(run_dir / CONFIG) in message else f"{run_dir / CONFIG}: {message}") from None
    return run_dir, cfg, load_weights(run_dir / WEIGHTS, stage)
