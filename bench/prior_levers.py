"""The prior's levers, one at a time on today's recipe, then together, at fixed CPU time.

    python bench/prior_levers.py [--budget default|quality] [--variants today ema ...] [--seeds 0]

Each variant trains `prior/train.py --config configs/prior.yaml` (default budget) or
`configs/prior-large.yaml` (quality budget) with its own keys, over one tokenizer
(--tokenizer, the shipped one by default: bits/token only compare on one codebook),
in runs/prior-levers/BUDGET-CONFIGHASH/NAME-sSEED, and prints the test bits/token, the training
seconds (steps only, `train_s`) and the change against `--reference` (`today`: the
config as it stands), measured in the same run of this script. A `*-half` variant gets half the
epochs: the seconds it needs to reach a figure.
Results go to runs/prior-levers/BUDGET-CONFIGHASH/results.jsonl as they come (rerun:
skipped; a changed config starts a new folder, since every variant is relative to it).

    python bench/prior_levers.py --step-times [--variants ...]

times a training step of each variant side by side in one process (interleaved rounds,
the median), on random codes: the per-step cost, free of the noise of whole runs, so the
runs themselves may share the cores (VQGEN_THREADS=1, two at a time). Run it alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common.config import ConfigError, apply_overrides

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"default": "configs/prior.yaml", "quality": "configs/prior-large.yaml"}
VARIANTS = {   # name -> keys on top of the budget's config
    "today": {},   # the budget's config as it stands
    # zero_init, tie_embeddings and label_smoothing lost here and left the code (docs/EXPERIMENTS.md)
    # the recipe before the speedrun adopted Muon, rotary positions, wsd, lr 4e-3 and 112 wide
    "before28": {"n_embd": 128, "rope": "none", "optimizer": "adamw", "lr_schedule": "cosine", "lr": 0.002},
    "ema": {"weight_average": 0.995},
    "wsd": {"lr_schedule": "wsd"},
    "qknorm": {"qk_norm": True},
    "qknorm-lr4": {"qk_norm": True, "lr": 0.004},
    "rope1d": {"rope": "1d"},
    "rope2d": {"rope": "2d"},
    "relu2": {"activation": "relu2"},
    "swiglu": {"activation": "swiglu"},
    "rms": {"norm": "rms"},
    "zloss": {"z_loss": 1e-4},
    "muon": {"optimizer": "muon"},
    "lr3": {"lr": 0.003},
    "lr4": {"lr": 0.004},
    "wu30": {"warmup_steps": 30},
    "batch64": {"batch_size": 64, "lr": 0.0014},
    "deep": {"n_layer": 3, "n_embd": 96},
    "w112": {"n_embd": 112},
    "wide": {"n_layer": 1, "n_embd": 192},
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def run_variant(budget: str, out: Path, keys: dict, seed: int, tokenizer: str, codes: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    if codes.is_dir():   # the tokenizer's code grids, encoded once for every variant
        shutil.copytree(codes, out / "codes")
    args = ["--config", CONFIGS[budget], f"tokenizer={tokenizer}", f"out_dir={out}", f"seed={seed}",
            "resume=never", *(f"{k}={v}" for k, v in keys.items())]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run([sys.executable, str(REPO / "prior/train.py"), *args], cwd=REPO, check=True,
                       stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
    if not codes.is_dir():
        shutil.copytree(out / "codes", codes, dirs_exist_ok=True)   # another queue may have got there first
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"bits": last["test_nll_bits_per_token"], "train_s": last["train_s"], "steps": last["step"]}


def budget_config(budget: str):
    """The budget's PriorConfig, as prior/train.py would read it."""
    from prior.config import PriorConfig
    return apply_overrides(PriorConfig(), yaml.safe_load((REPO / CONFIGS[budget]).read_text()), CONFIGS[budget])


def step_times(names: list[str], budget: str, rounds: int = 5, steps: int = 6) -> dict[str, float]:
    """Median milliseconds per optimizer step (forward, backward, clip, step) of each variant."""
    import torch
    from prior.train import make_task
    base = budget_config(budget)
    grids = {"train_codes": torch.randint(64, (4096, 49)), "train_labels": torch.randint(10, (4096,)),
             "test_codes": torch.randint(64, (10, 49)), "test_labels": torch.randint(10, (10,))}
    trainers = {}
    for name in names:
        keys = {k: v for k, v in keys_of(name, budget).items() if k != "epochs"}
        cfg = apply_overrides(base, {**keys, "num_codes": 64, "augment": False, "augment_token": False}, name)
        task = make_task(cfg, None, grids)
        trainers[name] = (cfg, task, task.make_optimizer(task.model.train()))
    times = {name: [] for name in names}
    for _ in range(rounds):   # interleaved, so a slow spell of the machine hits every variant
        for name, (cfg, task, optimizer) in trainers.items():
            for i in range(steps + 1):
                start = time.perf_counter()
                batch = torch.randint(4096, (cfg.batch_size,))
                loss, _ = task.loss_fn(task.model, (grids["train_codes"][batch], grids["train_labels"][batch]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if i:   # the first step of a round warms the caches
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def keys_of(name: str, budget: str) -> dict:
    """A name joins variants with '+'; a '-half' suffix halves the budget's epochs."""
    half = name.endswith("-half")
    keys = {}
    for part in name.removesuffix("-half").split("+"):
        if part not in VARIANTS:
            raise ConfigError(f"unknown variant {part!r} in {name!r}; known: {', '.join(VARIANTS)}")
        keys.update(VARIANTS[part])
    if half:
        keys["epochs"] = {"default": 1, "quality": 4}[budget]
    return keys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=list(CONFIGS), default="default")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help="names from VARIANTS; join with + to combine, add -half for half the epochs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--tokenizer", default="pretrained/mnist/tokenizer")
    p.add_argument("--out", default="runs/prior-levers")
    p.add_argument("--reference", default="today", help="the variant the others are compared with")
    p.add_argument("--step-times", action="store_true", help="time one training step of each variant instead")
    args = p.parse_args()
    base = budget_config(args.budget)
    for name in args.variants:   # a typo in a name or a key fails before any training
        apply_overrides(base, keys_of(name, args.budget), name)
    if args.step_times:
        ms = step_times(args.variants, args.budget)
        reference = ms.get(args.reference)
        print(f"{cpu_name()}, {args.budget} budget: ms per training step (median, interleaved)")
        for name, value in ms.items():
            print(f"{name:24s} {value:7.1f} ms" + (f"  {value / reference:.2f}x {args.reference}" if reference else ""))
        return
    config_hash = hashlib.sha256((REPO / CONFIGS[args.budget]).read_bytes()).hexdigest()[:8]
    out = Path(args.out) / f"{args.budget}-{config_hash}"
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {(r["variant"], r["seed"]): r for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.is_file() else {}
    print(f"{cpu_name()}, {args.budget} budget ({CONFIGS[args.budget]}), tokenizer {args.tokenizer}")
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) not in done:
                result = run_variant(args.budget, out / f"{name}-s{seed}", keys_of(name, args.budget), seed,
                                     args.tokenizer, Path(args.out) / "codes")
                done[(name, seed)] = {"variant": name, "seed": seed, "cpu": cpu_name(), **result}
                with open(results_file, "a") as f:
                    f.write(json.dumps(done[(name, seed)]) + "\n")
            r = done[(name, seed)]
            print(f"{name:24s} seed {seed}: {r['bits']:.4f} bits/token in {r['train_s']:.0f} s", flush=True)
    base = [done[(args.reference, s)] for s in args.seeds if (args.reference, s) in done]
    base_bits = statistics.mean(r["bits"] for r in base) if base else None
    base_s = statistics.mean(r["train_s"] for r in base) if base else None
    print(f"\n{'variant':24s} {'bits/token':>10s} {'vs ref':>9s} {'train s':>8s} {'vs ref':>9s}")
    for name in args.variants:
        rows = [done[(name, s)] for s in args.seeds if (name, s) in done]
        bits, seconds = statistics.mean(r["bits"] for r in rows), statistics.mean(r["train_s"] for r in rows)
        rel = (f"{bits - base_bits:+9.4f} {seconds:8.0f} {seconds / base_s:8.2f}x" if base
               else f"{'':9s} {seconds:8.0f}")
        print(f"{name:24s} {bits:10.4f} {rel}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:   # a bad variant name or key: one line, nothing trained
        sys.exit(f"prior_levers.py: {err}")
