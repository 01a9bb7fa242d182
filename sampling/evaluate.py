"""Judge samples against MNIST (or Fashion-MNIST) with the project's own classifier.

    python sampling/evaluate.py samples/samples.npz [--tokenizer runs/tokenizer]

Prints Frechet distance (classifier features, vs the 10k test images) and its
ratio to that of real training digits (`x_real`, the floor no sampler can beat),
under two independently trained judges (a and b, sampling/judge.py), then
`confident`, `class_kl`, precision/recall and, when the file has labels,
`cond_acc` (judge a), and `c2st`: the held-out accuracy of a fresh classifier
trained until its validation loss stops improving to tell the set from other real
training digits (0.5: it cannot), the mean of 3 seeds with `c2st_spread`. Beside
them the same figures for 10k real training images (their c2st is the test's
floor) and the tokenizer's test reconstructions. A reconstruction is paired with
its own test digit, so a good decoder takes its distance below the real digits';
the two-sample test pairs nothing, so it sees the decoder's pixels as they are.
The last line quotes the least favourable judge: the figure a headline may use.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common.errors import OneLineArgumentParser, run_main


def tokenizer_dataset(run: Path) -> str:
    """The dataset a tokenizer run (a folder or a shipped run's name) was trained on (mnist when
    there is no run)."""
    from common.config import read_yaml_mapping
    from common.pretrained import find_run
    config = find_run(run, "tokenizer") / "config.yaml"
    return read_yaml_mapping(config).get("dataset", "mnist") if config.is_file() else "mnist"


def check_writable(path: Path, flag: str) -> None:
    """Say before minutes of work that the result could not be written."""
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path}: cannot write there (no such folder, a folder, or no permission)")


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samples", help="an .npz written by sampling/generate.py")
    p.add_argument("--tokenizer", default="runs/tokenizer",
                   help="run folder or shipped run's name (mnist, fashion): the reconstruction row and the data set")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.add_argument("--c2st-seed", type=int, default=0, help="first seed of the two-sample test's split and classifier")
    p.add_argument("--c2st-seeds", type=int, default=3, help="seeds the two-sample test is averaged over")
    p.add_argument("--dataset", choices=["mnist", "fashion"], default=None,
                   help="what the samples imitate (default: the --tokenizer run's dataset, else mnist)")
    return p


def read_samples(path: Path):
    """(uint8 [N,C,H,W] images, long [N] labels or None) from a samples .npz, or one line."""
    import torch
    from sampling import read_npz
    data = read_npz(path, str(path))
    images = torch.from_numpy(data["images"])
    labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
    if images.dtype != torch.uint8 or images.dim() not in (3, 4) or (images.dim() == 4 and images.shape[3] != 3):
        raise ValueError(f"{path}: 'images' must be uint8 [N,H,W] or [N,H,W,3], got {images.dtype} {tuple(images.shape)}")
    if images.dim() == 4:
        images = images.permute(0, 3, 1, 2)   # colour: [N,3,H,W], as the models take it
    if len(images) < 10:
        raise ValueError(f"{path}: {len(images)} images; judging needs at least 10 (10000 for the README's figures)")
    return images, labels


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    path = Path(args.samples)
    if not path.is_file():
        raise ValueError(f"{path}: file not found; write one with `python sampling/generate.py --n 10000`")
    if args.json:
        check_writable(Path(args.json), "--json")
    images, labels = read_samples(path)
    from common.pretrained import find_run, is_run
    tokenizer_run = find_run(args.tokenizer, "tokenizer")
    if args.tokenizer != "runs/tokenizer" and not is_run(tokenizer_run):   # named, so it must exist
        from common.pretrained import missing_run_message
        raise ValueError(missing_run_message(f"--tokenizer {args.tokenizer}", "tokenizer"))
    from tokenizer.data import data_root, is_own_dataset
    dataset = args.dataset or tokenizer_dataset(tokenizer_run)
    judge = judge_own_set if is_own_dataset(dataset) else judge_builtin_set
    rows = judge(path, images, labels, dataset, tokenizer_run, data_root(), args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def judge_builtin_set(path: Path, images, labels, dataset: str, tokenizer_run: Path, root: Path, args) -> dict:
    """MNIST and Fashion: both trained judges' distances, the two-sample test, and the same
    figures for real training images and the tokenizer's test reconstructions."""
    from common.pretrained import is_run
    from sampling.judge import (FLOOR, RECON_FLOOR, floor_two_sample_test, judge_dir, judged_by_classifiers,
                                real_digit_sets, reconstructions, two_sample_test)
    from common.images import to_float
    from tokenizer.data import ensure_dataset, load_split
    ensure_dataset(root, dataset)
    test_x, _ = load_split(root, dataset, train=False)
    train_x, train_y = load_split(root, dataset, train=True)
    n = min(len(images), 10000)
    floor_set, reference_set = real_digit_sets(len(train_x), n)
    c2st_reference = to_float(train_x[reference_set])
    sets = {"samples": (to_float(images), labels),
            FLOOR: (to_float(train_x[floor_set]), train_y[floor_set] if labels is not None else None)}
    test = to_float(test_x)
    if is_run(tokenizer_run):
        from tokenizer import load_tokenizer
        sets["tokenizer recon"] = (reconstructions(load_tokenizer(tokenizer_run), test)[:n], None)
    rows = judged_by_classifiers(sets, test, root, dataset)
    c2st_sets = {name: x for name, (x, _) in sets.items()}
    if "tokenizer recon" in sets:
        c2st_sets[RECON_FLOOR] = test[:n]
        rows[RECON_FLOOR] = {"n": min(n, len(test))}
    floors = judge_dir(dataset, "a") / "c2st_floors.json"   # beside the judge a it belongs with
    for name, x in c2st_sets.items():
        if name in (FLOOR, RECON_FLOOR):   # the same real sets every time: measured once, then kept
            rows[name].update(floor_two_sample_test(name, x, c2st_reference, floors, seed=args.c2st_seed,
                                                    seeds=args.c2st_seeds))
        else:
            rows[name].update(two_sample_test(x, c2st_reference, seed=args.c2st_seed, seeds=args.c2st_seeds))
    print(f"two-sample test: mean of {args.c2st_seeds} seeds, each trained until its validation loss stopped "
          f"improving; c2st_spread is half the range of the seeds; the real sets' rows are measured once and "
          f"kept in {floors}")
    keys = ["n", "frechet", "x_real", "frechet_b", "x_real_b", "c2st", "c2st_spread", "confident", "class_kl",
            "precision", "recall", "cond_acc"]
    print(f"{'':24s}" + "".join(f"{k:>12s}" for k in keys))
    for name, r in rows.items():
        cells = [f"{r[k]:>12d}" if k == "n" else f"{r[k]:>12.4g}" if k in r else f"{'-':>12s}" for k in keys]
        print(f"{name:24s}" + "".join(cells))
    ours = rows["samples"]
    print(f"samples / real training digits: {ours['x_real']:.2f}x (judge a), {ours['x_real_b']:.2f}x (judge b); "
          f"worst judge {ours['x_real_worst']:.2f}x; two-sample test {ours['c2st']:.1%} +- {ours['c2st_spread']:.1%} "
          f"(real digits: {rows['real train (floor)']['c2st']:.1%}; 50% = indistinguishable)")
    return rows


def judge_own_set(path: Path, images, labels, dataset: str, tokenizer_run: Path, root: Path, args) -> dict:
    """A user's set has no trained judges (they are MNIST and Fashion classifiers): the
    two-sample test alone, against the set's own training images, with its floor (training
    images against other training images) and the tokenizer's test reconstructions."""
    import torch
    from common.pretrained import is_run
    from sampling.judge import RECON_FLOOR, reconstructions, two_sample_test
    from common.images import to_float
    from tokenizer.data import DataError, load_run_dataset, run_data_info
    recorded = run_data_info(tokenizer_run, dataset)
    if images.shape[-1] != recorded["image_size"]:
        raise DataError(f"{path}: {images.shape[-1]}x{images.shape[-1]} samples, but {tokenizer_run} was trained "
                        f"at {recorded['image_size']}x{recorded['image_size']}; pass the --tokenizer they came from")
    data = load_run_dataset(dataset, recorded, root, tokenizer_run, prepare_missing=False)
    n = min(len(images), len(data.train) // 2)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(args.c2st_seed))
    reference, floor = to_float(data.train[order[:n]]), to_float(data.train[order[n:2 * n]])
    sets = {"samples": to_float(images[:n]), "real train (floor)": floor}
    if is_run(tokenizer_run):
        from tokenizer import load_tokenizer
        sets["tokenizer recon"] = reconstructions(load_tokenizer(tokenizer_run), to_float(data.test))[:n]
    if "tokenizer recon" in sets:
        sets[RECON_FLOOR] = to_float(data.test[:n])
    rows = {name: {"n": len(x), **two_sample_test(x, reference, seed=args.c2st_seed, seeds=args.c2st_seeds)}
            for name, x in sets.items()}
    for name, r in rows.items():
        print(f"{name:24s} n={r['n']:6d}  c2st={r['c2st']:.4f} +- {r['c2st_spread']:.4f}")
    print(f"two-sample test {rows['samples']['c2st']:.1%} (real images: {rows['real train (floor)']['c2st']:.1%}; "
          f"50% = indistinguishable); the Frechet judges exist for mnist and fashion only")
    return rows


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError, OSError))
