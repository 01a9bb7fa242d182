"""The decoder levers, each judged by the two-sample test on reconstructions.

    python bench/decoder_levers.py [--variants default w03 ...] [--seeds 0 1 2] [--base RUN]

Every variant starts from one phase-one tokenizer (the default recipe with
decoder_epochs=0, trained here once into runs/levers/base, or --base RUN), so all
share its encoder and codebook, hence its codes. Each variant copies the base to
runs/levers/NAME-sSEED and runs only the decoder phase there (decoder_seed=SEED: another
draw of the phase alone), then prints, for the test digits' reconstructions: the
two-sample accuracy against real training digits (sampling/judge.py, the evaluator's test
that learns to a stop, its seed = SEED; 50% = indistinguishable), the Frechet distance
under judges a and b, PSNR and the phase's training seconds. Mean and spread over the seeds
follow. Results go to runs/levers/results.jsonl as they come (rerun: skipped). One job at
a time: the phase's seconds are only comparable so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GAN = {"decoder_loss": "gan", "decoder_disc_whole_image": False,   # the first variants, on the defaults
       "decoder_weight_average": 0.0}                                  # of their day (--base runs/tok-base)
VARIANTS = {   # name -> the decoder phase's keys
    "gan1": {**GAN, "decoder_epochs": 1},                                # the default before them
    "gan3": {**GAN, "decoder_epochs": 3},
    "ema3": {**GAN, "decoder_epochs": 3, "decoder_weight_average": 0.999},
    "whole3": {**GAN, "decoder_epochs": 3, "decoder_disc_whole_image": True},
    "r1-3": {**GAN, "decoder_epochs": 3, "decoder_r1": 1.0, "decoder_gan_weight": 0.3},
    "whole-r1-3": {**GAN, "decoder_epochs": 3, "decoder_disc_whole_image": True, "decoder_r1": 1.0,
                   "decoder_gan_weight": 0.3},
    "whole-ema3": {**GAN, "decoder_epochs": 3, "decoder_disc_whole_image": True, "decoder_weight_average": 0.999},
    "whole2": {**GAN, "decoder_epochs": 2, "decoder_disc_whole_image": True},
    "whole-ema2": {**GAN, "decoder_epochs": 2, "decoder_disc_whole_image": True, "decoder_weight_average": 0.999},
    "whole-ema6": {**GAN, "decoder_epochs": 6, "decoder_disc_whole_image": True, "decoder_weight_average": 0.999},
    # the adopted recipe (2 epochs, whole-digit head, average 0.999), then levers on it
    "default": {},
    "disc64-lr1e3": {"decoder_disc_channels": 64, "decoder_disc_lr": 1e-3},
    "w03": {"decoder_gan_weight": 0.3},
    "disc64-lr1e3-w03": {"decoder_disc_channels": 64, "decoder_disc_lr": 1e-3, "decoder_gan_weight": 0.3},
}


def phase_one(out: Path) -> Path:
    """The default recipe's tokenizer without its decoder phase, trained once into out/base."""
    base = out / "base"
    if not (base / "checkpoints").is_dir():
        subprocess.run([sys.executable, str(REPO / "tokenizer/train.py"), f"out_dir={base}", "decoder_epochs=0"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return base


def run_variant(base: Path, out: Path, keys: dict, seed: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("decoder", "*.png"))
    args = [f"out_dir={out}", f"decoder_seed={seed}", *(f"{k}={v}" for k, v in keys.items())]
    subprocess.run([sys.executable, str(REPO / "tokenizer/train.py"), *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def measure(run: Path, seed: int) -> dict:
    import torch
    from sampling.judge import (classify, frechet_distance, load_classifier, real_digit_sets, reconstructions,
                                two_sample_accuracy)
    from tokenizer import load_tokenizer
    from common.images import psnr, quantized, to_float
    from tokenizer.data import data_root, load_split
    root = data_root()
    train_x, _ = load_split(root, "mnist", train=True)
    test = to_float(load_split(root, "mnist", train=False)[0])
    recon = reconstructions(load_tokenizer(run), test)
    report = {}
    result = {"c2st": two_sample_accuracy(recon, to_float(train_x[real_digit_sets(len(train_x), 10000)[1]]),
                                          seed=seed, report=report),
              "c2st_epochs": report["epochs"],
              "psnr": psnr((recon - test).pow(2).mean())}
    for kind in ("a", "b"):
        judge = load_classifier(root, kind=kind)
        result[f"frechet_{kind}"] = frechet_distance(classify(judge, recon)[1], classify(judge, test)[1])
    last = json.loads((run / "decoder" / "metrics.jsonl").read_text().splitlines()[-1])
    result["phase_train_s"] = last["train_s"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="a tokenizer run with decoder_epochs=0 (default: trained here once)")
    p.add_argument("--variants", nargs="+", default=["default", "w03"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/levers")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {(r["variant"], r["seed"]): r for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.is_file() else {}
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) not in done:
                run = out / f"{name}-s{seed}"
                base = Path(args.base) if args.base else phase_one(out)
                run_variant(base, run, VARIANTS[name], seed)
                done[(name, seed)] = {"variant": name, "seed": seed, **measure(run, seed)}
                with open(results_file, "a") as f:
                    f.write(json.dumps(done[(name, seed)]) + "\n")
            r = done[(name, seed)]
            print(f"{name:12s} seed {seed}: c2st {r['c2st']:.1%}  FD a {r['frechet_a']:.3f}  "
                  f"FD b {r['frechet_b']:.3f}  PSNR {r['psnr']:.2f} dB  phase {r['phase_train_s']:.0f} s", flush=True)
    print("\nvariant       c2st mean (spread)     FD a         FD b        PSNR")
    for name in args.variants:
        rows = [done[(name, s)] for s in args.seeds if (name, s) in done]
        cells = []
        for key, fmt in [("c2st", ".1%"), ("frechet_a", ".3f"), ("frechet_b", ".3f"), ("psnr", ".2f")]:
            values = [r[key] for r in rows]
            cells.append(f"{statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})")
        print(f"{name:12s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
