"""What the refiner costs at sampling time and what it draws: generate() with and without it,
side by side, and several draws of one code grid.

    python bench/draw_cost.py [--prior mnist/prior-default] [--sizes 64,10000] [--repeats 3] [--draws OUT.png]
    python bench/draw_cost.py --prior mnist --page      # the page's Sample (16 and 64) only

Models loaded once; for each size, alternating, `refine=0` (the decoder's average picture)
and the tokenizer's own refiner steps, the fastest of --repeats each (the page's Sample
is generate() on loaded models; --page times the page's own Sample, sampling/demo.py, for the
16 it opens with and 64, its refiner taken out and put back in turn). Then the whole command `generate.py --n N` as a user
runs it, from a fresh process, for the largest size. --draws: a picture whose rows are each a
test picture of the tokenizer's data set, the decoder's reconstruction and four draws of the
refiner from the same code grid; and the PSNR of the draws of the whole test set (seed 0).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="mnist/prior-default", help="a run folder or a shipped run's name")
    p.add_argument("--sizes", default="64,10000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--draws", type=Path, help="write draws of test pictures' code grids here (.png)")
    p.add_argument("--page", action="store_true", help="time the page's Sample only")
    args = p.parse_args()
    if args.page:
        return time_page(args.prior, args.repeats)
    from sampling import generate, load_models
    models = load_models(args.prior)
    steps = models.tokenizer.shape.refiner_steps if models.tokenizer.refiner is not None else 0
    print(f"prior {args.prior}: the tokenizer's refiner "
          f"{'takes ' + str(steps) + ' steps' if steps else 'is absent: both rows decode alone'}")
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        best = {0: float("inf"), None: float("inf")}
        for _ in range(args.repeats):
            for refine in best:
                started = time.perf_counter()
                generate(n=n, models=models, refine=refine, seed=0)
                best[refine] = min(best[refine], time.perf_counter() - started)
        print(f"n={n}: decoder alone {best[0]:.2f} s, with the refiner {best[None]:.2f} s "
              f"({best[None] / best[0]:.2f}x)", flush=True)
    with tempfile.TemporaryDirectory() as out:
        for refine in ("0", None):
            command = [sys.executable, "sampling/generate.py", "--prior", args.prior, "--n", str(max(sizes)),
                       "--out", out, "--overwrite"] + (["--refine", refine] if refine else [])
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, capture_output=True)
            print(f"`generate.py --n {max(sizes)}{' --refine ' + refine if refine else ''}`: "
                  f"{time.perf_counter() - started:.1f} s wall", flush=True)
    if args.draws:
        show_draws(models, args.draws)


def time_page(prior: str, repeats: int) -> None:
    from sampling.demo import Demo
    demo = Demo(prior=prior)
    tok = demo.models.tokenizer
    refiner = tok.refiner
    for n in (16, 64):
        best = {}
        for _ in range(repeats):
            for name, module in (("decoder", None), ("refiner", refiner)):
                tok.refiner = module
                started = time.perf_counter()
                demo.sample(None, n, seed=1)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
        print(f"the page's Sample, n={n}: decoder alone {best['decoder'] * 1000:.0f} ms, with the refiner "
              f"{best['refiner'] * 1000:.0f} ms ({best['refiner'] / best['decoder']:.2f}x)", flush=True)


def show_draws(models, out: Path) -> None:
    import torch
    from common.images import psnr, to_float
    from common.plots import save_png
    from sampling.judge import reconstructions
    from tokenizer.data import data_root, load_split
    tok = models.tokenizer
    test = to_float(load_split(data_root(), models.dataset, train=False)[0])
    for refine in (0, None):
        drawn = reconstructions(tok, test, refine=refine)
        print(f"test set, {'decoder alone' if refine == 0 else 'refiner'}: PSNR {psnr((drawn - test).pow(2).mean()):.2f} dB")
    few = test[:8]
    codes = tok.encode(few)
    rows = [few, tok.decode(codes)] + [tok.draw(codes, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    save_png(out, torch.stack(rows, 1).flatten(0, 1), nrow=len(rows))
    print(f"wrote {out}: each row a test picture, the decoder's, four draws of its code grid")


if __name__ == "__main__":
    main()
