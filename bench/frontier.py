"""The frontier, not a point: each judge's distance against the samples' confidence, over
guidance, temperature, nucleus, guidance schedule and keeping the likeliest, for one prior.

    python bench/frontier.py --prior mnist --digit none --cfg 0,0.1,0.2,0.35 [--temperature 1.0,0.9]
        [--top-p 1,0.95] [--cfg-schedule constant,linear] [--keep-likeliest 1,0.8]
    python bench/frontier.py --prior mnist/prior-default --digit all --cfg 0,0.2,0.35,0.5 --json runs/frontier.json
    python bench/frontier.py --prior mnist/prior-default --digit all --cfg 0.35,0.4,0.45,0.5 --refine 0

For each setting: n samples (seed 0) judged by sampling/evaluate.py's two classifier judges
(a and b; each distance a multiple of that of 10k real training digits, "x real") and their
confidence (the share judge a calls with >= 90%). Guidance buys confidence with diversity,
so a single setting hides the trade; the last lines read the frontier at the confidence of
real digits (the same 10k training digits' own, measured here): each judge's distance there,
linear between the two settings either side. The two-sample test costs minutes a set and
is left to `sampling/evaluate.py` at the setting chosen from this table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def at_confidence(points: list[dict], target: float, key: str) -> float | None:
    """points[key] at confidence `target`, linear between the two points either side of it
    along the frontier (points in rising confidence); None when no two points bracket it."""
    points = sorted(points, key=lambda r: r["confident"])
    for low, high in zip(points, points[1:]):
        if low["confident"] <= target <= high["confident"]:
            span = high["confident"] - low["confident"]
            share = (target - low["confident"]) / span if span else 0.0
            return low[key] + share * (high[key] - low[key])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="mnist", help="run folder or shipped run's name")
    p.add_argument("--digit", choices=["none", "all"], default="none",
                   help="none: each sample draws its class; all: a balanced set, a class per sample in turn")
    p.add_argument("--cfg", type=floats, default=[0.0, 0.1, 0.2, 0.35, 0.5], help="guidance scales, comma-separated")
    p.add_argument("--temperature", type=floats, default=[1.0], help="temperatures, comma-separated")
    p.add_argument("--top-p", type=floats, default=[1.0], help="nucleus shares, comma-separated (1: all codes)")
    p.add_argument("--cfg-schedule", default="constant",
                   help="guidance schedules along the sequence, comma-separated: constant, linear")
    p.add_argument("--keep-likeliest", type=floats, default=[1.0],
                   help="shares of each class's likeliest samples kept, comma-separated (1: all)")
    p.add_argument("--refine", type=int, default=None, metavar="STEPS",
                   help="the refiner's steps (default: the tokenizer's; 0: the decoder's own pictures)")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--json", default=None, help="also write every point here")
    args = p.parse_args()

    import torch
    from sampling import ALL_CLASSES, generate, load_models
    from sampling.judge import FLOOR, judged_by_classifiers, real_digit_sets
    from common.images import psnr, quantized, to_float
    from tokenizer.data import data_root, ensure_dataset, is_own_dataset, load_split

    models = load_models(args.prior)
    if is_own_dataset(models.dataset):
        raise SystemExit(f"{args.prior}: the judges are MNIST and Fashion classifiers; this prior learnt {models.dataset}")
    root = data_root()
    ensure_dataset(root, models.dataset)
    train_x, train_y = load_split(root, models.dataset, train=True)
    test = to_float(load_split(root, models.dataset, train=False)[0])
    floor, _ = real_digit_sets(len(train_x), args.n)
    sets, settings = {FLOOR: (to_float(train_x[floor]), None)}, {}
    grid = itertools.product(args.cfg_schedule.split(","), args.keep_likeliest, args.top_p, args.temperature, args.cfg)
    for schedule, keep, top_p, temperature, scale in grid:
        setting = {"cfg": scale, "temperature": temperature, "top_p": top_p, "cfg_schedule": schedule,
                   "keep_likeliest": keep}
        name = ", ".join([f"cfg {scale:g}", f"T {temperature:g}"] + [f"p {top_p:g}"] * (top_p < 1)
                         + [schedule] * (schedule != "constant") + [f"keep {keep:g}"] * (keep < 1))
        start = time.perf_counter()
        out = generate(n=args.n, digit=None if args.digit == "none" else ALL_CLASSES, cfg=scale,
                       temperature=temperature, top_p=top_p if top_p < 1 else None, cfg_schedule=schedule,
                       keep_likeliest=keep, seed=0, models=models, refine=args.refine)
        settings[name] = {**setting, "generate_s": round(time.perf_counter() - start, 1)}
        sets[name] = (quantized(out["images"]), out["labels"])   # the levels a saved sample has
        print(f"{name}: {settings[name]['generate_s']} s", flush=True)
    rows = judged_by_classifiers(sets, test, root, models.dataset)
    print(f"\n{args.prior} (--digit {args.digit}, --refine {args.refine}), {args.n} samples a setting, seed 0")
    width = max(22, *(len(name) + 2 for name in rows))
    print(f"{'':{width}s}{'confident':>10s}{'x real a':>10s}{'x real b':>10s}{'worst':>8s}{'precision':>10s}{'recall':>8s}"
          f"{'cond_acc':>10s}")
    for name, r in rows.items():
        cond = f"{r['cond_acc']:>10.1%}" if "cond_acc" in r else f"{'-':>10s}"
        print(f"{name:{width}s}{r['confident']:>10.1%}{r['x_real']:>10.2f}{r['x_real_b']:>10.2f}{r['x_real_worst']:>8.2f}"
              f"{r['precision']:>10.3f}{r['recall']:>8.3f}{cond}")
    real = rows[FLOOR]["confident"]
    points = [rows[name] for name in settings]
    for key, label in (("x_real_worst", "worst judge"), ("x_real", "judge a"), ("x_real_b", "judge b")):
        value = at_confidence(points, real, key)
        print(f"{label} at the confidence of real digits ({real:.1%}): "
              + (f"{value:.2f}x" if value is not None else f"not bracketed (settings span "
                 f"{min(r['confident'] for r in points):.1%}-{max(r['confident'] for r in points):.1%})"))
    if args.json:
        Path(args.json).write_text(json.dumps({"prior": args.prior, "digit": args.digit, "n": args.n,
                                               "real_confident": real, "points": [{**settings[k], **rows[k]}
                                                                                  for k in settings],
                                               "floor": rows[FLOOR]}, indent=1))


if __name__ == "__main__":
    main()
