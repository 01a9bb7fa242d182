"""The decoder phase's cost: one epoch with decoder_loss=mse against one with gan, in one run.

    python bench/decoder_phase.py [TOKENIZER_RUN] [--rounds 2]

Copies a finished tokenizer run (default runs/tokenizer) and adds one decoder epoch
to each copy with the users' command, alternating the two losses so that both see
the same machine. Prints the phase's seconds of training steps (`train_s` of its
own metrics.jsonl) for each, and the ratio (the target: gan <= 2x mse).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench" / "decoder_phase"


def phase_seconds(base: Path, loss: str, round_: int) -> float:
    run = OUT / f"{loss}-{round_}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run, ignore=shutil.ignore_patterns("decoder", ".lock"))
    subprocess.run([sys.executable, "tokenizer/train.py", f"out_dir={run}", "decoder_epochs=1",
                    f"decoder_loss={loss}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "disabled"})
    return json.loads((run / "decoder" / "metrics.jsonl").read_text().splitlines()[-1])["train_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizer", nargs="?", default="runs/tokenizer", help="a finished tokenizer run")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    base = Path(args.tokenizer)
    if not (base / "checkpoints").is_dir():
        raise SystemExit(f"{base}: no tokenizer run with checkpoints; run `accelerate launch tokenizer/train.py`")
    seconds = {"mse": [], "gan": []}
    for round_ in range(args.rounds):
        for loss in ("mse", "gan") if round_ % 2 == 0 else ("gan", "mse"):
            seconds[loss].append(phase_seconds(base, loss, round_))
            print(f"round {round_}: {loss} {seconds[loss][-1]:.1f} s", flush=True)
    mse, gan = statistics.median(seconds["mse"]), statistics.median(seconds["gan"])
    print(f"one decoder epoch, median of {args.rounds}: mse {mse:.1f} s, gan {gan:.1f} s, "
          f"ratio {gan / mse:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
