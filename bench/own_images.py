"""Your own images, measured: preparing a folder, starting from its cache, and MNIST as a folder
of PNGs trained side by side with dataset=mnist.

    python bench/own_images.py [--out runs/own-images] [--train]

1. Exports MNIST's 70k digits as PNGs in OUT/mnist-png/{train,test}/<digit>/ (once), and its
   first 10k training digits as a flat folder OUT/mnist-10k/.
2. Times preparing OUT/mnist-10k (decode, check, cache) and a second, cached start.
3. With --train: the default tokenizer and prior on dataset=mnist and on dataset=OUT/mnist-png,
   one after the other (the same images, the same split, in another order), and prints both
   runs' PSNR, bits/token and training seconds. About 12 minutes on 2 cores. --seed N trains
   both with another seed (runs named ...-seedN), to see the spread order and seed alone give.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent


def export(out: Path) -> tuple[Path, Path]:
    from PIL import Image
    from tokenizer.data import data_root, ensure_dataset, load_split
    root = data_root()
    ensure_dataset(root, "mnist")
    full, flat = out / "mnist-png", out / "mnist-10k"
    if not (out / "mnist-png.done").is_file():
        for part, train in (("train", True), ("test", False)):
            images, labels = load_split(root, "mnist", train=train)
            for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
                folder = full / part / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{i:05d}.png")
        (out / "mnist-png.done").write_text("")
    if not (out / "mnist-10k.done").is_file():
        flat.mkdir(parents=True, exist_ok=True)
        images, _ = load_split(root, "mnist", train=True, subset=10_000)
        for i, image in enumerate(images.numpy()):
            Image.fromarray(image).save(flat / f"{i:05d}.png")
        (out / "mnist-10k.done").write_text("")
    return full, flat


def last_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def train(out: Path, name: str, dataset: str, seed: int = 0) -> dict:
    suffix = f"-seed{seed}" if seed else ""
    tok, prior = out / f"{name}-tok{suffix}", out / f"{name}-prior{suffix}"
    for args in (["tokenizer/train.py", f"dataset={dataset}", f"out_dir={tok}", f"seed={seed}"],
                 ["prior/train.py", f"tokenizer={tok}", f"out_dir={prior}", f"seed={seed}"]):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        print(f"  {name}: {args[0]} {time.perf_counter() - started:.0f} s", flush=True)
    t, p = last_metrics(tok), last_metrics(prior)
    return {"psnr": t["test_psnr"], "bits": p["test_nll_bits_per_token"], "tok_s": t["train_s"],
            "prior_s": p["train_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/own-images")
    p.add_argument("--train", action="store_true", help="also train both stages on mnist and on the PNG folder")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs (another data order and initialisation)")
    args = p.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    full, flat = export(out)
    print(f"exported MNIST as PNGs in {time.perf_counter() - started:.0f} s (once)")

    from tokenizer.own_images import prepare
    cache = out / "data"
    import shutil
    shutil.rmtree(cache / "prepared", ignore_errors=True)
    started = time.perf_counter()
    prepare(flat, 0, cache)
    first = time.perf_counter() - started
    started = time.perf_counter()
    prepare(flat, 0, cache, quiet=True)
    again = time.perf_counter() - started
    command = [sys.executable, "-c", f"import time; from tokenizer.data import load_dataset; t = time.perf_counter(); "
               f"load_dataset({str(flat)!r}, __import__('pathlib').Path({str(cache)!r}), quiet=True); "
               f"print(time.perf_counter() - t)"]
    fresh = float(subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout)
    print(f"10k PNGs of 28x28: prepared in {first:.1f} s; cached start {again:.3f} s in this process, "
          f"{fresh:.2f} s in a fresh process after its imports")
    if args.train:
        results = {name: train(out, name, dataset, args.seed) for name, dataset in (("mnist", "mnist"), ("png", str(full)))}
        a, b = results["mnist"], results["png"]
        print(f"dataset=mnist: PSNR {a['psnr']:.2f} dB, {a['bits']:.4f} bits/token, training {a['tok_s']:.0f} + "
              f"{a['prior_s']:.0f} s")
        print(f"dataset=PNG folder: PSNR {b['psnr']:.2f} dB, {b['bits']:.4f} bits/token, training {b['tok_s']:.0f} + "
              f"{b['prior_s']:.0f} s")
        print(f"difference: PSNR {b['psnr'] - a['psnr']:+.2f} dB, bits/token {b['bits'] - a['bits']:+.4f}, "
              f"time per image seen x{(b['tok_s'] + b['prior_s']) / (a['tok_s'] + a['prior_s']):.2f}")


if __name__ == "__main__":
    main()
