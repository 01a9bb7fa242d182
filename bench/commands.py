"""The three user commands, timed from the shell, from empty run folders.

    python bench/commands.py                 # wall time of each command, split, total
    python bench/commands.py --profile       # plus where each training's wall time goes (cProfile)
    python bench/commands.py prior n_layer=4 # key=value overrides go to the prior

Runs, in a fresh folder under runs/bench/commands/ (your runs/ stay untouched):
`accelerate launch tokenizer/train.py`, `accelerate launch prior/train.py`,
`python sampling/generate.py --n 64` (three times), and `python -c "import torch"`
(three times) as the floor every command pays. Targets: the three
commands <= 300 s together; generate.py within 0.5 s of `import torch` (medians).
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench" / "commands"
BIN = Path(sys.executable).parent
# Functions whose cumulative time makes the split of a training command's wall time.
PHASES = {
    "load data": ["load_split", "ensure_dataset"],
    "encode code grids": ["load_code_grids"],
    "evaluation": ["evaluate_tokenizer", "test_nll_bits"],
    "plots + sample grid": ["report"],
    "checkpoints + weights": ["save_checkpoint", "save_run_weights"],
    "augmentation": ["augmented_codes"],
}


def timed(args: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                               env={**os.environ, "WANDB_MODE": "disabled"})
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed (exit {code}); see {log}")
    return seconds


def last_metrics(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]


def profile_split(stats_file: Path, wall: float, train_s: float) -> dict[str, float]:
    """Seconds per phase from a cProfile dump (cumulative time of the named functions)."""
    stats = pstats.Stats(str(stats_file)).stats
    cumulative: dict[str, float] = {}
    for (_, _, name), (_, _, _, cum, _) in stats.items():
        cumulative[name] = max(cumulative.get(name, 0.0), cum)
    split = {phase: sum(cumulative.get(n, 0.0) for n in names) for phase, names in PHASES.items()}
    # Evaluation and plots run inside the loop's pauses; steps are the rest of train_s.
    split["training steps"] = train_s - split["augmentation"]
    split["start-up (imports, models, rest)"] = wall - sum(split.values())
    return split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="run the trainings under cProfile and print the split")
    p.add_argument("stage_overrides", nargs="*", help="[tokenizer|prior] key=value ... (applied to that stage)")
    args = p.parse_args()
    overrides = {"tokenizer": [], "prior": []}
    stage = "prior"
    for word in args.stage_overrides:
        if word in overrides:
            stage = word
        else:
            overrides[stage].append(word)

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    tok, prior, samples = OUT / "tokenizer", OUT / "prior", OUT / "samples"
    imports = [timed([sys.executable, "-c", "import torch"], OUT / "import.log") for _ in range(3)]
    walls = {}
    runner = ([sys.executable, "-m", "cProfile", "-o"] if args.profile else [str(BIN / "accelerate"), "launch"])

    def train(name: str, script: str, extra: list[str]) -> float:
        launch = runner + [str(OUT / f"{name}.prof")] if args.profile else runner
        return timed([*launch, script, *extra, *overrides[name]], OUT / f"{name}.log")

    walls["tokenizer/train.py"] = train("tokenizer", "tokenizer/train.py", [f"out_dir={tok}"])
    walls["prior/train.py"] = train("prior", "prior/train.py", [f"out_dir={prior}", f"tokenizer={tok}"])
    gens = [timed([sys.executable, "sampling/generate.py", "--n", "64", "--prior", str(prior), "--out", str(samples)],
                  OUT / "generate.log") for _ in range(3)]
    walls["sampling/generate.py --n 64"] = statistics.median(gens)

    tm, pm = last_metrics(tok), last_metrics(prior)
    print(f"{'command':32s} {'wall s':>8s} {'in steps s':>11s}  result")
    print(f"{'tokenizer/train.py':32s} {walls['tokenizer/train.py']:8.1f} {tm['train_s']:11.1f}  "
          f"test_psnr {tm['test_psnr']:.2f} dB, usage {tm['codebook_usage']:.0%}")
    print(f"{'prior/train.py':32s} {walls['prior/train.py']:8.1f} {pm['train_s']:11.1f}  "
          f"{pm['test_nll_bits_per_token']:.4f} bits/token")
    print(f"{'sampling/generate.py --n 64':32s} {walls['sampling/generate.py --n 64']:8.1f} {'':11s}  "
          f"median of {', '.join(f'{g:.2f}' for g in gens)}")
    total = sum(walls.values())
    print(f"{'total':32s} {total:8.1f}  (target 300 s{', met' if total <= 300 else ', missed'})")
    floor = statistics.median(imports)
    print(f"python -c 'import torch': median {floor:.2f} s ({', '.join(f'{t:.2f}' for t in imports)}); "
          f"generate.py is {walls['sampling/generate.py --n 64'] - floor:+.2f} s above it (target <= 0.5 s)")
    if args.profile:
        print("\nwhere the training commands' wall time goes (cProfile, cumulative):")
        for name, run, metrics in (("tokenizer", tok, tm), ("prior", prior, pm)):
            wall = walls[f"{name}/train.py"]
            split = profile_split(OUT / f"{name}.prof", wall, metrics["train_s"])
            cells = ", ".join(f"{k} {v:.1f} s ({v / wall:.0%})" for k, v in split.items() if v > 0.05)
            print(f"  {name} ({wall:.1f} s): {cells}")


if __name__ == "__main__":
    main()
