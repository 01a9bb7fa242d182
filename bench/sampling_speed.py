"""Sampling throughput with and without the KV cache, measured side by side.

    python bench/sampling_speed.py [--prior runs/prior] [--sizes 1,64,1024,10000] [--no-cache-max 1024]

Generation only (models already loaded), unconditional, temperature 1. Recomputing
the prefix is skipped above --no-cache-max samples (it is the slow reference).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from prior.model import NULL_CLASS
from sampling import load_models


def timed(gpt, n: int, use_cache: bool, device: str) -> float:
    labels = torch.full((n,), NULL_CLASS, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    gpt.generate(labels, generator=gen, use_cache=use_cache)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prior", default="runs/prior")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="1,64,1024,10000")
    p.add_argument("--no-cache-max", type=int, default=1024)
    args = p.parse_args()
    gpt = load_models(args.prior, None, args.device).gpt
    timed(gpt, 8, True, args.device)  # warm-up
    print(f"{'n':>6} {'cache s':>9} {'cache img/s':>12} {'no-cache s':>11} {'speed-up':>9}")
    for n in [int(s) for s in args.sizes.split(",")]:
        cached = timed(gpt, n, True, args.device)
        plain = timed(gpt, n, False, args.device) if n <= args.no_cache_max else float("nan")
        print(f"{n:>6} {cached:>9.3f} {n / cached:>12.0f} {plain:>11.3f} {plain / cached:>9.2f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
