"""Where a run folder is, from what a user typed; the runs shipped in pretrained/.

A location is a run folder's path, or the name of a shipped run: `mnist` is
pretrained/mnist/prior for a prior and pretrained/mnist/tokenizer for a tokenizer,
`mnist/prior-default` that folder. `pretrained/...` paths work from any folder, so
a shipped prior's `tokenizer: pretrained/mnist/tokenizer` does too. A path that
exists always wins; nothing is looked up anywhere else. Torch-free: the entry
scripts resolve runs before they import torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

CONFIG, WEIGHTS = "config.yaml", "model.safetensors"   # what makes a folder a run (common.runs writes them)
REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "pretrained"
SHIPPED_DEFAULT = "mnist"            # the shipped set named first, and served by the page without runs/prior
SAMPLER_SETTINGS = "sampling.yaml"   # a prior's recommended settings, beside its config.yaml
SAMPLING_DEFAULTS = REPO / "configs" / "sampling.yaml"   # for a prior without one
# generate.py's flags (dest names) that configs/sampling.yaml and a run's sampling.yaml may set
SAMPLER_KEYS = {"n", "seed", "temperature", "top_k", "top_p", "label", "cfg", "cfg_schedule", "batch_size",
                "keep_likeliest"}


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def find_run(location: str | Path, stage: str) -> Path:
    """The run folder `location` names (module doc); the path as given when none matches,
    so that the caller's own error names what the user typed."""
    path = Path(location)
    if is_run(path) or path.is_absolute() or ".." in path.parts:   # a name never climbs out of pretrained/
        return path
    if path.parts[:1] == ("pretrained",):
        candidates = [REPO / path]
    else:
        candidates = [PRETRAINED / path / stage, PRETRAINED / path]
    return next((c for c in candidates if is_run(c)), path)


def shown_path(path: str | Path) -> str:
    """A run folder as the user can retype it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def shipped_names(stage: str) -> list[str]:
    """Short names of the shipped runs of one stage, e.g. ['mnist', 'mnist/prior-default']."""
    names = []
    configs = sorted(PRETRAINED.glob(f"*/*/{CONFIG}"), key=lambda c: (c.parent.parent.name != SHIPPED_DEFAULT, c))
    for config in configs:
        folder = config.parent
        if not folder.name.startswith(stage) or not is_run(folder):
            continue
        names.append(folder.parent.name if folder.name == stage else f"{folder.parent.name}/{folder.name}")
    return names


def missing_run_message(location: str | Path, stage: str) -> str:
    """One line naming both ways forward: train the stage, or use a shipped run."""
    message = (f"{location}: no trained {stage} there (need {CONFIG} and {WEIGHTS}); "
               f"train one with `accelerate launch {stage}/train.py`")
    names = shipped_names(stage)
    if names:
        flag = "--prior" if stage == "prior" else "--tokenizer"
        message += f", or use a shipped run: {flag} {names[0]}" + (
            f" (also: {', '.join(names[1:])})" if len(names) > 1 else "")
    return message


def read_sampler_settings(path: Path) -> dict:
    """A sampling.yaml as a dict of generate.py settings; {} when there is none; unknown keys refused."""
    from common.config import read_yaml_mapping
    if not path.is_file():
        return {}
    data = read_yaml_mapping(path)
    if "digit" in data and "label" not in data:   # label's name in runs saved before it had one for any class
        data["label"] = data.pop("digit")
    unknown = set(data) - SAMPLER_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(SAMPLER_KEYS)}")
    return data


def read_card(path: Path) -> dict:
    """A model card's YAML front matter (between its first two '---' lines); {} when there is none."""
    import yaml
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        return {}
    return yaml.safe_load(text[4:text.index("\n---\n", 3)]) or {}


def recommended_settings(run_dir: Path) -> dict:
    """What generate.py uses without flags: configs/sampling.yaml, then the run's own sampling.yaml."""
    return {**read_sampler_settings(SAMPLING_DEFAULTS), **read_sampler_settings(Path(run_dir) / SAMPLER_SETTINGS)}


def parse_label(text: str):
    """The class (MNIST: digit) setting: 'none' -> None, 'null' -> "null", 'all' -> "all" (every class,
    in order), '3' -> 3, '1,4,7' -> [1, 4, 7]. Whether a class exists is for the prior to say."""
    word = str(text).strip().lower()
    if word == "none":
        return None
    if word == "null":   # sampling.NULL_LABEL, spelled out: parsing flags must not import torch
        return "null"
    if word == "all":
        return "all"
    try:
        classes = [int(t) for t in word.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a class number (MNIST: a digit 0-9), a list like 1,4,7, "
                                         "'all', 'none' or 'null'") from None
    if not classes or any(d < 0 for d in classes):
        raise argparse.ArgumentTypeError(f"{text!r}: class numbers start at 0")
    return classes[0] if len(classes) == 1 else classes
