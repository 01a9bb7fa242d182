"""Judge samples against MNIST (or Fashion-MNIST) with the project's own classifier.

    python sampling/evaluate.py samples/samples.npz [--tokenizer runs/tokenizer]

Prints Frechet distance (classifier features, vs the 10k test images),
`confident`, `class_kl`, precision/recall and, when the file has labels,
`cond_acc`; beside them the same figures for 10k real training images (the
floor) and the tokenizer's test reconstructions (what a perfect prior reaches).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common.errors import OneLineArgumentParser, run_main


def tokenizer_dataset(run: Path) -> str:
    """The dataset a tokenizer run was trained on (mnist when there is no run)."""
    from common.config import read_yaml_mapping
    config = run / "config.yaml"
    return read_yaml_mapping(config).get("dataset", "mnist") if config.is_file() else "mnist"


def main(argv: list[str] | None = None) -> dict:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samples", help="an .npz written by sampling/generate.py")
    p.add_argument("--tokenizer", default="runs/tokenizer", help="for the reconstruction reference")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.add_argument("--dataset", choices=["mnist", "fashion"], default=None,
                   help="what the samples imitate (default: the --tokenizer run's dataset, else mnist)")
    args = p.parse_args(argv)
    path = Path(args.samples)
    if not path.is_file():
        raise ValueError(f"{path}: file not found; write one with `python sampling/generate.py --n 10000`")

    import numpy as np
    import torch
    from sampling.judge import judge, load_classifier, classify
    from tokenizer.data import data_root, load_split, to_float

    with np.load(path, allow_pickle=False) as data:
        if "images" not in data:
            raise ValueError(f"{path}: no 'images' array")
        images = torch.from_numpy(data["images"])
        labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or images.dtype != torch.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 [N,28,28], got {images.dtype} {tuple(images.shape)}")

    dataset = args.dataset or tokenizer_dataset(Path(args.tokenizer))
    root = data_root()
    model = load_classifier(root, dataset)
    test_x, _ = load_split(root, dataset, train=False)
    test = to_float(test_x)
    _, test_feats = classify(model, test)
    n = len(images)
    rows = {"samples": judge(model, to_float(images), test_feats, labels)}
    train_x, train_y = load_split(root, dataset, train=True)
    rows["real train (floor)"] = judge(model, to_float(train_x[:min(n, 10000)]), test_feats,
                                       train_y[:min(n, 10000)] if labels is not None else None)
    if (Path(args.tokenizer) / "model.safetensors").is_file():
        from tokenizer import load_tokenizer
        tok = load_tokenizer(args.tokenizer)
        recon = torch.cat([tok.decode(tok.encode(test[i:i + 2000])) for i in range(0, len(test), 2000)])
        recon = (recon * 255).round() / 255   # the same uint8 rounding the samples went through
        rows["tokenizer recon"] = judge(model, recon[:min(n, 10000)], test_feats)
    keys = ["n", "frechet", "confident", "class_kl", "precision", "recall", "cond_acc"]
    print(f"{'':22s}" + "".join(f"{k:>11s}" for k in keys))
    for name, r in rows.items():
        cells = [f"{r[k]:>11d}" if k == "n" else f"{r[k]:>11.4g}" if k in r else f"{'-':>11s}" for k in keys]
        print(f"{name:22s}" + "".join(cells))
    if "tokenizer recon" in rows:
        ratio = rows["samples"]["frechet"] / max(rows["tokenizer recon"]["frechet"], 1e-9)
        print(f"frechet ratio samples / tokenizer recon: {ratio:.2f}")
        rows["frechet_ratio"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError,))
