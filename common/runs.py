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

from common.checkpoint import CheckpointError, CheckpointWriteError, atomic_write_text, load_weights, save_weights
from common.config import ConfigError, config_from_file, config_to_dict
from common.distributed import together
from common.pretrained import CONFIG, WEIGHTS, find_run, is_run, missing_run_message

LOCK = ".lock"


class RunInUseError(CheckpointError):
    """Another live training holds this run folder; printed as one line."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on run_dir while the block runs: one writer per run folder.

    flock(2) is released by the kernel when its holder dies, so a killed run never
    leaves a lock that blocks the next one; the pid inside is only for the message.
    Under DDP only global rank 0 takes it (the other ranks write nothing there), and
    whether it could is agreed by every process (start the process group first), so
    a refused lock is one line on each, not one line and a hang.
    """
    fd = together(lambda: _take_lock(Path(run_dir)))
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)   # releases the lock


def _take_lock(run_dir: Path) -> int | None:
    if int(os.environ.get("RANK", "0")) != 0:   # launched, but the process group is not up yet
        return None
    prepare_out_dir(run_dir)
    try:   # O_NOFOLLOW: a planted .lock symlink is refused, never followed to overwrite its target
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        reason = "it is a symlink; delete it" if (run_dir / LOCK).is_symlink() else err.strerror or str(err)
        raise CheckpointError(f"{run_dir / LOCK}: cannot take the run's lock ({reason})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunInUseError(f"{run_dir} is in use by another training (pid {holder}); wait for it to "
                            f"finish or choose another out_dir=") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def prepare_out_dir(run_dir: Path) -> None:
    """Create a run folder, or say in one line why it cannot be one (a file is in the way, no
    permission, a read-only disk) before any work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"out_dir={run_dir} is a file, not a folder; choose another out_dir=")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"out_dir={run_dir}: cannot create it ({err.strerror or err}); "
                              "choose another out_dir=") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise CheckpointError(f"out_dir={run_dir}: not writable by this user; choose another out_dir=")


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """model.load_state_dict(weights), or one line that names the file and keeps torch's reason
    (which it puts on the lines after its first)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = " ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip()) or str(err)
        raise CheckpointError(f"{path}: weights do not match its config.yaml ({reason[:400]}); "
                              "retrain the run or restore the file") from None


def append_metrics(path: Path, row: dict) -> None:
    """One JSON line at the end of metrics.jsonl; a full disk is one line, like a failed checkpoint."""
    import json
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
    except OSError as err:
        raise CheckpointWriteError(Path(path), err.strerror or str(err)) from None


def read_metrics(path: Path) -> list[dict]:
    return parse_metrics(Path(path).read_text()) if Path(path).is_file() else []


def parse_metrics(text: str) -> list[dict]:
    """Rows of metrics.jsonl; a last line torn by a kill mid-append is dropped."""
    import json
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def read_last_metrics(path: Path) -> dict:
    rows = read_metrics(path)
    return rows[-1] if rows else {}


def truncate_metrics(path: Path, step: int) -> None:
    """Drop evaluations logged after the checkpoint we resume from (they will be redone)."""
    import json
    path = Path(path)
    if not path.is_file():
        return
    old = path.read_text()
    new = "".join(json.dumps(r) + "\n" for r in parse_metrics(old) if r.get("step", 0) <= step)
    if new != old:  # later rows, or a line torn by a kill
        atomic_write_text(path, new)


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
