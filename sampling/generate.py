"""Sample new images: the prior draws code grids, the tokenizer draws their pictures.

    python sampling/generate.py --n 64
    python sampling/generate.py --n 64 --prior mnist          # the shipped runs (pretrained/), no training
    python sampling/generate.py --n 80 --label 0,1,2,3,4,5,6,7,8,9 --cfg 1.0
    python sampling/generate.py --n 16 --complete samples/samples.npz --keep-rows 3

Writes OUT/grid.png and OUT/samples.npz (images uint8 [N,H,W] grey or [N,H,W,3] colour,
tokens int16 [N,h,w], labels int64 [N] when conditioned; MNIST: [N,28,28] and [N,7,7]).
Same --seed, same images.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from common.errors import OneLineArgumentParser, run_main
from common.pretrained import (SAMPLER_SETTINGS, SAMPLING_DEFAULTS, find_run, is_run, missing_run_message,
                               parse_label, read_sampler_settings, shown_path)

OUR_FILES = {"grid.png", "samples.npz"}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="Sample images from a trained prior + tokenizer.")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (< 1: safer digits)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest codes")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the likeliest codes covering p")
    p.add_argument("--label", "--digit", dest="label", type=parse_label, default=None,
                   help="a class number (MNIST: a digit), a list like 1,4,7, 'all', 'none' (unconditional: a random "
                        "class each, as often as the training set holds it) or 'null' (the prior's no-label token); "
                        "--digit is the same flag")
    p.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale (with --label)")
    # prior.model.CFG_SCHEDULES, spelled out: parsing flags must not import torch
    p.add_argument("--cfg-schedule", choices=["constant", "linear"], default="constant",
                   help="guidance along the sequence: the same scale everywhere, or rising from 0 to 2x cfg")
    p.add_argument("--keep-likeliest", type=float, default=1.0, metavar="SHARE",
                   help="draw n / SHARE samples and keep each class's likeliest SHARE of them, "
                        "scored by the prior (1: no filtering)")
    p.add_argument("--refine", type=int, default=None, metavar="STEPS",
                   help="the refiner's steps, which draw the detail a code grid leaves open (default: the "
                        "tokenizer's refiner_steps; 0: the decoder's average picture)")
    p.add_argument("--out", default="samples", help="folder for grid.png and samples.npz")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=2048, help="samples generated at once")
    p.add_argument("--prior", default="runs/prior",
                   help="run folder of a trained prior, or a shipped run's name: mnist, mnist/prior-default, fashion "
                        "(its sampling.yaml sets the defaults below the flags)")
    p.add_argument("--tokenizer", default=None, help="default: the one the prior was trained on")
    p.add_argument("--complete", default=None, metavar="IMAGE_OR_NPZ",
                   help="complete real images: a PNG of the tokenizer's size (MNIST: 28x28) or an .npz with 'images'")
    p.add_argument("--keep-rows", type=int, default=3, help="code rows (MNIST: of 7) kept with --complete")
    p.add_argument("--overwrite", action="store_true", help="write into a --out that holds other files")
    # argparse passes string defaults through each flag's type, so `label: all` parses as --label all
    p.set_defaults(**read_sampler_settings(SAMPLING_DEFAULTS))
    return p


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The settings the command line sets itself; the others may come from the prior's sampling.yaml."""
    unset = object()
    probe = parser.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    return {dest for dest, value in vars(probe).items() if value is not unset}


def apply_run_settings(parser, args, given: set[str], settings: dict, source: Path) -> list[str]:
    """Set the prior's recommended settings on args wherever no flag was given; returns their names."""
    actions = {a.dest: a for a in parser._actions}
    taken = []
    for key, value in settings.items():
        if key in given:
            continue
        convert = actions[key].type
        try:
            setattr(args, key, convert(str(value)) if convert and value is not None else value)
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise ValueError(f"{source}: {key}: {value!r} is not a valid value ({err})") from None
        taken.append(key)
    return taken


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    # .tmp-<ours>-*: a write of ours that died before its rename; never read, safe to ignore
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUR_FILES and not any(
        p.name == f".tmp-{ours}" or p.name.startswith(f".tmp-{ours}-") for ours in OUR_FILES)) if out.is_dir() else []
    if foreign and not overwrite:
        raise ValueError(f"--out {out} already holds files this tool did not write ({', '.join(foreign[:3])}); "
                         "choose another --out or pass --overwrite")


def load_images(path: Path, shape: tuple[int, int, int]):
    """Images to complete, as float [N,C,H,W] in [0,1] for a tokenizer of that (C,H,W) image shape
    (MNIST: white ink on black, 28x28)."""
    import numpy as np
    import torch
    from common.images import to_float
    if not path.is_file():
        raise ValueError(f"--complete {path}: file not found")
    if path.suffix == ".npz":
        from sampling import read_npz
        images = torch.from_numpy(read_npz(path, f"--complete {path}")["images"])
    else:
        from PIL import Image
        from sampling.digit_image import check_picture
        check_picture(path, f"--complete {path}")   # from its header: refuses a decompression bomb
        images = torch.from_numpy(np.array(Image.open(path).convert("L" if shape[0] == 1 else "RGB")))[None]
    if images.dim() == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)   # [N,H,W,C], as samples.npz holds colour -> [N,C,H,W]
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        want = "x".join(map(str, shape[1:])) + (" colour" if shape[0] == 3 else " grey")
        raise ValueError(f"--complete {path}: the tokenizer takes {want} images, got shape {tuple(images.shape)}")
    images = to_float(images) if images.dtype == torch.uint8 else images.float()
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"--complete {path}: pixels must be uint8 or floats in [0,1]")
    return images


def save_npz(path: Path, **arrays) -> None:
    import numpy as np
    from common.checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    from sampling import check_sampling_args

    def check_settings():
        check_sampling_args(args.n, args.temperature, args.top_k, args.top_p, args.label, args.batch_size,
                            args.cfg_schedule, args.keep_likeliest, args.seed, args.cfg, args.refine)

    check_settings()   # a bad flag is named first, whether or not the prior exists
    prior_dir = find_run(args.prior, "prior")
    if not is_run(prior_dir):
        raise ValueError(missing_run_message(f"--prior {args.prior}", "prior"))
    settings_file = prior_dir / SAMPLER_SETTINGS
    from_run = apply_run_settings(parser, args, given, read_sampler_settings(settings_file), settings_file)
    if from_run:
        check_settings()   # and a bad value in the run's sampling.yaml
    label_given = "label" in given
    if args.keep_rows < 0:
        raise ValueError(f"--keep-rows {args.keep_rows}: must be 0 or more")
    out = Path(args.out)
    check_out_dir(out, args.overwrite)

    import torch
    from common.images import to_uint8
    from common.plots import save_png
    from sampling import NULL_LABEL, generate, load_models

    models = load_models(prior_dir, args.tokenizer, args.device)
    if not label_given and (args.complete or not models.prior_cfg.class_conditional):
        # The configured default (a class per column) needs labels. A completion's
        # kept rows already decide the class, so it samples without one unless asked.
        args.label, args.cfg = NULL_LABEL, 0.0
    grid = models.tokenizer.grid
    if args.keep_rows > grid:
        raise ValueError(f"--keep-rows {args.keep_rows}: must be 0-{grid} (the code grid has {grid} rows)")
    keep, originals = None, None
    if args.complete:
        originals = load_images(Path(args.complete), models.tokenizer.image_shape)
        grids = models.tokenizer.encode(originals.to(args.device)).cpu()
        keep = grids[torch.arange(args.n) % len(grids), :args.keep_rows]
    started = time.perf_counter()
    result = generate(n=args.n, label=args.label, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, cfg=args.cfg, seed=args.seed, device=args.device,
                      batch_size=args.batch_size, keep=keep, models=models, cfg_schedule=args.cfg_schedule,
                      keep_likeliest=args.keep_likeliest, refine=args.refine)
    seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    images = result["images"]
    arrays = {"images": to_uint8(images).numpy(),   # grey [N,H,W], colour [N,H,W,3]
              "tokens": result["tokens"].to(torch.int16).numpy()}
    if result["labels"] is not None:
        arrays["labels"] = result["labels"].numpy()
    save_npz(out / "samples.npz", **arrays)
    shown = images[:256]
    if originals is not None:   # first row: the real images being completed
        shown = torch.cat([originals[:8].cpu(), images[:248]])
    classes = models.prior_cfg.num_classes
    columns = classes if args.label == "all" else len(args.label) if isinstance(args.label, list) else 0
    nrow = columns if 2 <= columns <= 16 else 8   # a class per column
    if originals is None and len(shown) > nrow:   # whole rows only: a ragged last row breaks the columns
        shown = shown[:len(shown) - len(shown) % nrow]
    save_png(out / "grid.png", shown, nrow=nrow)
    label_text = "none" if args.label is None else args.label
    print(f"wrote {args.n} samples to {out}/samples.npz and {out}/grid.png "
          f"(generation {seconds:.2f} s, {args.n / seconds:.0f} images/s)\n"
          f"  prior {shown_path(models.prior_dir)}, tokenizer {shown_path(models.tokenizer_dir)}; label {label_text}, "
          f"cfg {args.cfg}, temperature {args.temperature}, keep_likeliest {args.keep_likeliest}, seed {args.seed}"
          + (f"\n  {', '.join(from_run)} from {shown_path(settings_file)} (the prior's recommended settings; "
             "flags override them)" if from_run else ""))
    return result


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError, OSError))
