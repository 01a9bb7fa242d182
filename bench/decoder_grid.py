"""The decoder's upsampling on several sets: held-out PSNR after each phase, what the
adversarial phase costs, and how much of a grid the reconstructions carry.

    python bench/decoder_grid.py --set mnist --set fashion9k=/path/to/set.npz \
        --set icons32=/path/to/folder:image_size=32 [--upsample resize transposed] [--out runs/grid]

Each (set, upsample) pair trains the tokenizer with the defaults (both phases) into
OUT/SET-UPSAMPLE, one job at a time (its seconds are then comparable), and prints:
held-out PSNR after the joint phase and after the decoder phase, the difference (the
adversarial phase's cost), the grid ratio of the test reconstructions and the training
seconds. Grid ratio: the energy of the finest checkerboard (each 2x2 block's a-b-c+d)
over that of the finest horizontal and vertical stripes, the reconstructions' over the
real pictures': 1 is the pictures' own texture, above 1 a grid the decoder painted.
Results go to OUT/results.jsonl as they come (rerun: skipped).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def grid_ratio(images) -> float:
    """(B, C, H, W) float: the finest checkerboard's energy over the finest stripes' (see above)."""
    x = images[..., : images.shape[-2] // 2 * 2, : images.shape[-1] // 2 * 2].double()
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    checker = (a - b - c + d).pow(2).mean()
    stripes = ((a + b - c - d).pow(2).mean() + (a - b + c - d).pow(2).mean()) / 2
    return float(checker / stripes)


def train(run: Path, dataset: str, keys: list[str], upsample: str) -> None:
    args = [f"out_dir={run}", f"dataset={dataset}", f"upsample={upsample}", *keys]
    subprocess.run([sys.executable, str(REPO / "tokenizer/train.py"), *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def measure(run: Path) -> dict:
    import torch
    from tokenizer import load_tokenizer, tokenizer_data
    from common.images import to_float
    from tokenizer.data import data_root, load_run_dataset
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    joint = [r for r in rows if r.get("final") and r.get("phase") != "decoder"][-1]
    last = rows[-1]
    dataset, info = tokenizer_data(run)
    test = to_float(load_run_dataset(dataset, info, data_root(), run).test)
    model = load_tokenizer(run)
    with torch.no_grad():
        recon = torch.cat([model.decode(model.encode(test[i:i + 500])) for i in range(0, len(test), 500)])
    return {"psnr_joint": joint["test_psnr"], "psnr": last["test_psnr"],
            "gan_cost_db": joint["test_psnr"] - last["test_psnr"],
            "grid_ratio": grid_ratio(recon) / grid_ratio(test), "train_s": last["train_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", required=True,
                   help="NAME, or NAME=DATASET[:key=value:...] (keys go to the tokenizer)")
    p.add_argument("--upsample", nargs="+", default=["resize", "transposed"])
    p.add_argument("--out", default="runs/grid")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {(r["set"], r["upsample"]): r for r in map(json.loads, results_file.read_text().splitlines())} \
        if results_file.is_file() else {}
    for spec in args.set:
        name, _, rest = spec.partition("=")
        dataset, *keys = (rest or name).split(":")
        for upsample in args.upsample:
            if (name, upsample) not in done:
                run = out / f"{name}-{upsample}"
                train(run, dataset, keys, upsample)
                done[(name, upsample)] = {"set": name, "upsample": upsample, **measure(run)}
                with open(results_file, "a") as f:
                    f.write(json.dumps(done[(name, upsample)]) + "\n")
            r = done[(name, upsample)]
            print(f"{name:10s} {upsample:10s}  PSNR joint {r['psnr_joint']:.2f} dB  after the decoder phase "
                  f"{r['psnr']:.2f} dB (cost {r['gan_cost_db']:+.2f} dB)  grid ratio {r['grid_ratio']:.2f}  "
                  f"train {r['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
