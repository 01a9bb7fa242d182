"""How long the two-sample test must learn: schedules compared on one set it can tell apart.

    OMP_NUM_THREADS=1 python bench/c2st_schedules.py [NAME ...] [--seed 0]

The shipped tokenizer's reconstructions of the 10k test digits against 10k random training
digits (the evaluator's reference). For each named schedule (default: all) prints the held-out
accuracy, the epochs run, the epoch of the best validation loss and the seconds taken. A
schedule whose best epoch is its last had not finished learning.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEDULES = {
    "cosine-1e-3-8": dict(lr=1e-3, warmup=0.0, max_epochs=8, patience=2, batch_size=128),
    "onecycle-3e-3-8": dict(lr=3e-3, warmup=0.3, max_epochs=8, patience=8, batch_size=128),
    "onecycle-1e-2-8-b256": dict(lr=1e-2, warmup=0.3, max_epochs=8, patience=8, batch_size=256),
    "onecycle-3e-3-16-b256": dict(lr=3e-3, warmup=0.3, max_epochs=16, patience=2, batch_size=256),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"schedules to run, of {', '.join(SCHEDULES)} (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    unknown = [name for name in args.names if name not in SCHEDULES]
    if unknown:
        p.error(f"unknown schedule {unknown[0]!r}; known: {', '.join(SCHEDULES)}")
    from sampling.judge import real_digit_sets, reconstructions, two_sample_accuracy
    from tokenizer import load_tokenizer
    from common.images import to_float
    from tokenizer.data import data_root, ensure_dataset, load_split
    root = data_root()
    ensure_dataset(root, "mnist")
    train_x, _ = load_split(root, "mnist", True)
    test_x, _ = load_split(root, "mnist", False)
    reference = to_float(train_x[real_digit_sets(len(train_x), 10000)[1]])
    recon = reconstructions(load_tokenizer("mnist"), to_float(test_x))
    for name in args.names or SCHEDULES:
        report, started = {}, time.perf_counter()
        accuracy = two_sample_accuracy(recon, reference, seed=args.seed, report=report, **SCHEDULES[name])
        print(f"{name:24s} accuracy {accuracy:.4f}  epochs {report['epochs']:2d}  best epoch {report['best_epoch']:2d}  "
              f"validation loss {report['val_loss']:.4f}  {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
