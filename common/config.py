"""Typed configs: one dataclass per stage holds every default; YAML files only
override it, and `key=value` arguments override the YAML.

Every value is type-checked against its field, and an unknown key is an error
that names the close matches, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import VQGenError


class ConfigError(VQGenError, ValueError):
    """A bad config key or value; entry scripts print it as one line and exit 2."""


@dataclass
class TrainConfig:
    """Keys every training entry understands."""
    out_dir: str = "runs/run"          # the run folder: config, weights, checkpoints, metrics, plots
    data_root: str = ""              # "" -> $VQGEN_DATA or data/
    dataset: str = "mnist"           # mnist, fashion (Debian package dataset-fashion-mnist), or PATH: a folder
                                     # of images (class subfolders = labels) or an .npz with images [N,H,W(,C)]
    seed: int = 0                    # weights, data order and sampling all follow it
    epochs: int = 1                  # epochs of epoch_samples each (the schedule spans them all)
    epoch_samples: int = 0           # samples an epoch counts; 0 = the training set's size for mnist and fashion; for
                                     # dataset=PATH the tokenizer sees the pixels of 60000 28x28 pictures, the prior
                                     # 60000 grids or at most 10 passes over the set
    max_steps: int = 0               # > 0: stop after this many optimizer steps (smoke runs)
    train_subset: int = 0            # > 0: use only the first N training images
    batch_size: int = 128            # per process; DDP multiplies it by the world size
    lr: float = 1e-3                 # peak learning rate, after warmup; then lr_schedule's decay
    warmup_steps: int = 100          # linear warmup from 0 to lr, in steps of one process (N processes: /N steps)
    min_lr_ratio: float = 0.05       # the decay ends at lr * min_lr_ratio
    lr_schedule: Literal["cosine", "wsd"] = "cosine"   # after warmup: cosine decay, or warmup-stable-decay
                                     # (constant, then a linear decay over the last cooldown_share of steps)
    cooldown_share: float = 0.2      # wsd: share of the run spent decaying
    weight_decay: float = 0.0        # decoupled weight decay (matrices only in the prior)
    grad_clip: float = 1.0           # max global grad norm; 0 disables clipping
    weight_average: float = 0.0      # > 0: decay of an exponential moving average of the weights, which is
                                     # what gets evaluated and saved for use (0 = the weights as trained)
    resume: str = "auto"             # auto | never | PATH to a checkpoint dir
    tracker: Literal["none", "wandb"] = "none"   # wandb: offline unless WANDB_MODE says otherwise
    eval_every: int = 0              # steps between held-out evaluations; 0 = about ten a run, -1 = at the end only
    eval_samples: int = 1000         # held-out (and training) items each evaluation measures; the final one, all held out
    patience: int = 3                # stop after this many evaluations without a better held-out loss (0 = never)
    save_every: int = 0              # steps between checkpoints; 0 = once per epoch (and always at the end)
    keep_checkpoints: int = 2        # newest checkpoints kept in out_dir/checkpoints

    def validate(self) -> None:
        _require(self.epochs >= 1, "epochs", "must be >= 1")
        _require(self.epoch_samples >= 0, "epoch_samples", "must be >= 0 (0 = from the data set)")
        _require(self.max_steps >= 0, "max_steps", "must be >= 0 (0 = no limit)")
        _require(self.train_subset >= 0, "train_subset", "must be >= 0 (0 = all)")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        _require(0 < self.cooldown_share <= 1, "cooldown_share", "must be in (0, 1]")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        _require(0 <= self.weight_average < 1, "weight_average", "must be in [0, 1) (0 = off; 0.999 is typical)")
        _require(self.eval_every >= -1, "eval_every", "must be >= 1 steps, 0 (about ten a run) or -1 (at the end only)")
        _require(self.eval_samples >= 1, "eval_samples", "must be >= 1")
        _require(self.patience >= 0, "patience", "must be >= 0 (0 = never stop early)")
        _require(self.save_every >= 0, "save_every", "must be >= 0 (0 = every epoch)")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        _require(self.out_dir != "", "out_dir", "must not be empty")
        if self.resume not in ("auto", "never") and not Path(self.resume).is_dir():
            raise ConfigError(f"resume={self.resume!r}: expected auto, never or an existing checkpoint directory")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` as the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list like [8, 5, 5, 5]")
        (item,) = typing.get_args(annotation)
        return [_check_type(key, v, item) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{key}={value!r}: expected {annotation.__name__}")


def apply_overrides(cfg, overrides: dict[str, Any], source: str):
    """Return a copy of `cfg` with `overrides` applied; unknown keys name close matches."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in fields(cfg)]
    retired, why = getattr(cfg, "RETIRED", {}), getattr(cfg, "RETIRED_WHY", {})
    renamed = getattr(cfg, "RENAMED", {})
    updates = {}
    for key, value in overrides.items():
        if key in renamed:   # a key's earlier name, as saved runs and old configs still write it
            if renamed[key] in overrides:
                raise ConfigError(f"{key} and {renamed[key]} in {source} are one setting ({key} is its old name); "
                                  f"keep {renamed[key]}")
            key = renamed[key]
        if key in retired:
            if value != retired[key]:
                reason = why.get(key, "this switch was removed after it lost its measurement (docs/EXPERIMENTS.md)")
                raise ConfigError(f"{key}={value!r} in {source}: {reason}; drop the key")
            continue
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        updates[key] = _check_type(key, value, hints[key])
    return dataclasses.replace(cfg, **updates)


def parse_value(text: str, annotation: Any = None) -> Any:
    """Parse a CLI value the way YAML would (`3` -> int, `1e-3` -> float, `true` -> bool), except
    for a key that holds a string (a path, a name), which takes the text as typed: `dataset=0123`
    is the folder 0123, not the octal number 83, and `out_dir=2024-10-01` no date."""
    if annotation is str or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                             and str in typing.get_args(annotation)):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; accept it as the float the user meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def field_docs(cls) -> dict[str, str]:
    """Each field's meaning: the comment on its line in the dataclass source (so help never drifts)."""
    docs = {}
    for klass in reversed(cls.__mro__):   # a subclass's comment wins over its base's
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^    (\w+)\s*:[^\n#]*#\s*(.+)$", source, re.M):
            docs[match.group(1)] = match.group(2).strip()
    return docs


def config_help(cls, default_file: str | Path | None, usage: str) -> str:
    """--help: usage, where defaults live, then every key with its type, default and meaning."""
    cfg = cls()
    if default_file and Path(default_file).is_file():
        cfg = apply_overrides(cfg, read_yaml_mapping(Path(default_file)), str(default_file))
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    rows = []
    for f in fields(cls):
        kind = hints[f.name]
        kind = ("|".join(map(str, typing.get_args(kind))) if typing.get_origin(kind) is Literal
                else getattr(kind, "__name__", str(kind)) if typing.get_origin(kind) is None else str(kind))
        rows.append((f.name, kind, repr(getattr(cfg, f.name)), docs.get(f.name, "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    source = f"{cls.__module__.replace('.', '/')}.py ({cls.__name__})"
    if default_file:
        source += f", overridden by {Path(default_file).relative_to(Path(default_file).parents[1])}"
    lines = [usage.strip(), "", f"Key defaults: {source}, then --config FILE, then key=value.", "",
             "keys (name, type, default, meaning):"]
    lines += [f"  {n:{widths[0]}}  {k:{widths[1]}}  {d:{widths[2]}}  {m}" for n, k, d, m in rows]
    return "\n".join(lines)


def load_config(cls, argv: list[str], default_file: str | Path | None = None, usage: str = ""):
    """Build `cls` from its defaults, then a YAML file, then `key=value` arguments.

    argv: `[--config FILE] [key=value ...]`, or `--help` (prints every key with its
    default and meaning, then exits 0). With no --config, `default_file` is read
    when it exists. Raises ConfigError (one line) on any problem.
    """
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, default_file, usage))
        raise SystemExit(0)
    config_file, pairs = None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config", "-c"):
            if not args:
                raise ConfigError("--config needs a YAML file path")
            config_file = args.pop(0)
        elif arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            pairs.append((key.strip(), value))
        else:
            raise ConfigError(f"cannot parse argument {arg!r}: use key=value or --config FILE (see --help)")

    cfg = cls()
    path = Path(config_file) if config_file else (Path(default_file) if default_file else None)
    if config_file and not path.is_file():
        raise ConfigError(f"config file {config_file} not found")
    if path is not None and path.is_file():
        cfg = apply_overrides(cfg, read_yaml_mapping(path), str(path))
    hints = typing.get_type_hints(cls)
    cfg = apply_overrides(cfg, {key: parse_value(value, hints.get(key)) for key, value in pairs}, "the command line")
    cfg.validate()
    return cfg


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; any problem is one ConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; a YAML config was expected") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply to be a config") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML ({getattr(err, 'problem', None) or 'parse error'}{where})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value")
    return data


def config_from_file(cls, path: Path):
    """Rebuild a saved config (config.yaml beside the weights); unknown keys and values a
    training would refuse are an error that names the file."""
    renamed = getattr(cls, "RENAMED", {})
    saved = read_yaml_mapping(path)
    if not any(k in saved for k in renamed.values()):   # a file of old names: read them under the new
        saved = {renamed.get(k, k): v for k, v in saved.items()}
    saved = {**getattr(cls, "ABSENT_IN_OLD_RUNS", {}), **saved}
    cfg = apply_overrides(cls(), saved, str(path))
    try:   # resume= may name a checkpoint long gone: it says nothing about the saved model
        dataclasses.replace(cfg, resume="auto").validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return cfg
