"""Checkpoint I/O that never unpickles and never leaves a half-written file.

Weights go to safetensors with a `stage` tag in the metadata, so a file from the
other stage is refused by name. Nested state (optimizer, counters) is split into
tensors (safetensors) and everything else (JSON). Writes go to a temporary name
and are renamed into place, so a reader sees the old file or the new one, never
a torn one; a checkpoint *directory* is complete exactly when its name has no
`.tmp` prefix.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from common.errors import VQGenError


class CheckpointError(VQGenError):
    """An unreadable, wrong-stage or mismatched checkpoint; printed as one line."""


CHECKPOINT_RE = re.compile(r"^step_(\d{9})$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_name(path: Path) -> Path:
    """A hidden name beside path for a file in the making: unique to this process and call."""
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")


def open_new(path: Path, mode: str = "wb"):
    """Open a file that must not exist yet (O_EXCL), never through a symlink (O_NOFOLLOW): a name
    planted in a shared folder cannot redirect the write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    return os.fdopen(fd, mode)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open_new(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: safetensors itself has no checksum,
    so a flipped bit in the data would otherwise load as silently wrong weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class CheckpointWriteError(CheckpointError):
    """Writing failed (disk full, permissions); what was there before is untouched."""

    def __init__(self, path: Path, reason: str):
        self.reason = reason
        super().__init__(f"{path}: could not write ({reason}); nothing older was touched: "
                         "free disk space or fix permissions, then run the same command to resume")


def _write_error(path: Path, err: Exception) -> CheckpointWriteError:
    """Name `path` as what could not be written; keep the underlying reason."""
    if isinstance(err, CheckpointWriteError):
        return CheckpointWriteError(path, err.reason)
    return CheckpointWriteError(path, getattr(err, "strerror", None) or str(err).splitlines()[0])


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(path: Path, tensors: dict[str, torch.Tensor], stage: str) -> None:
    """Write a safetensors file atomically; `stage` and the digest are checked on load."""
    path = Path(path)
    tmp = temporary_name(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"stage": stage, "format": "vqgen-1", "sha256": tensors_digest(tensors)}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_current_umask())   # safetensors creates files 0600; share like open() does
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # safetensors reports a failed write as its own error
        raise _write_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_weights(path: Path, stage: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by save_weights for `stage`; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:   # one open: metadata and tensors
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]}); "
                              "it may be truncated or corrupted: retrain or restore it") from None
    found = metadata.get("stage")
    if found != stage:
        raise CheckpointError(f"{path}: holds a {found or 'foreign'} checkpoint, expected a {stage} one")
    if "sha256" in metadata and metadata["sha256"] != tensors_digest(tensors):
        raise CheckpointError(f"{path}: its tensors fail their sha256 check (the file is corrupted); "
                              "retrain or restore it")
    return tensors


# -- nested state <-> (tensors, json) -------------------------------------------------

def flatten_state(obj: Any, prefix: str = "", tensors: dict | None = None):
    """Split nested dict/list state into {path: tensor} and a JSON-able skeleton."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}, tensors
    if isinstance(obj, dict):
        # JSON keys are strings; remember int keys (optimizer state is keyed by int).
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}", tensors)[0]] for k, v in obj.items()]}, tensors
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors)[0] for i, v in enumerate(obj)]}, tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


MAX_DEPTH = 32   # flatten_state of an optimizer's state nests 5 deep; more means a tampered file


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor], depth: int = 0) -> Any:
    """The inverse of flatten_state; a skeleton it could not have written raises ValueError."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} deep")
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            name = skeleton["__tensor__"]
            if not isinstance(name, str) or name not in tensors:
                raise ValueError(f"names a tensor that is not in the file: {str(name)[:40]!r}")
            return tensors[name]
        if "__dict__" in skeleton and isinstance(skeleton["__dict__"], list):
            pairs = skeleton["__dict__"]
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) for p in pairs):
                raise ValueError("a mapping that is not a list of [key, value] pairs")
            return {k: unflatten_state(v, tensors, depth + 1) for k, v in pairs}
        if "__list__" in skeleton and isinstance(skeleton["__list__"], list):
            return [unflatten_state(v, tensors, depth + 1) for v in skeleton["__list__"]]
        raise ValueError(f"an unknown entry {str(list(skeleton))[:40]}")
    if isinstance(skeleton, list):
        raise ValueError("a bare list")
    return skeleton


# -- resume checkpoints (directories) -------------------------------------------------

def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temporary (half-written) ones are ignored."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def save_checkpoint(checkpoint_root: Path, step: int, parts: dict[str, Any], stage: str, keep: int) -> Path:
    """Write `parts` (name -> nested state) as checkpoints/step_N, atomically.

    The directory is filled under a temporary name, synced, then renamed; older
    checkpoints beyond `keep` are removed only after the new one is in place.
    """
    root = Path(checkpoint_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(root, err) from None
    final = root / f"step_{step:09d}"
    for leftover in root.glob(".tmp-*"):  # from a run killed mid-save; never listed
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / f".tmp-step_{step:09d}-{os.getpid()}"
    try:
        tmp.mkdir()
        skeletons = {}
        for name, state in parts.items():
            skeleton, tensors = flatten_state(state)
            skeletons[name] = skeleton
            save_weights(tmp / f"{name}.safetensors", tensors, stage)
        atomic_write_text(tmp / "state.json", json.dumps({"stage": stage, "step": step, "parts": skeletons}))
        _fsync_dir(tmp)
        replaced = None
        if final.exists():  # same step saved twice (e.g. a signal right after an evaluation)
            replaced = _unlist(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (OSError, CheckpointWriteError)):  # name the checkpoint, not its temp file
            raise _write_error(final, err) from None
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(_unlist(old), ignore_errors=True)
    return final


def _unlist(path: Path) -> Path:
    """Rename a checkpoint to a hidden temporary name before deleting it: a kill
    mid-delete leaves a leftover, never a listed checkpoint with files missing."""
    doomed = path.with_name(f".tmp-old-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    return doomed


def load_checkpoint(path: Path, stage: str) -> dict[str, Any]:
    """Read a directory written by save_checkpoint; returns {'step', part names...}."""
    path = Path(path)
    meta_file = path / "state.json"
    try:
        meta = json.loads(meta_file.read_text())
        found, step, parts = meta.get("stage"), int(meta["step"]), dict(meta["parts"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({reason}); "
                              "delete this checkpoint to resume from an older one") from None
    if found != stage:
        raise CheckpointError(f"{path}: holds a {found or 'foreign'} checkpoint, expected a {stage} one")
    out = {"step": step}
    for name, skeleton in parts.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise CheckpointError(f"{meta_file}: names a part {str(name)[:40]!r} it could not have written")
        tensors = load_weights(path / f"{name}.safetensors", stage)
        try:
            out[name] = unflatten_state(skeleton, tensors)
        except ValueError as err:
            raise CheckpointError(f"{meta_file}: tampered or corrupted: its {name} part {err}; "
                                  "delete this checkpoint to resume from an older one") from None
    return out
