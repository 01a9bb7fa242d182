"""Stage-one targets: default run time and quality, 4x-longer stability, K sweep.

    python bench/tokenizer_targets.py default          # the README's command, timed from the shell
    python bench/tokenizer_targets.py long             # 4x the default epochs: must not collapse
    python bench/tokenizer_targets.py sweep [epochs=1] # K in 16..1024, plot -> runs/bench/k_sweep.png

Each run goes to runs/bench/<name>; prints one table row per run.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench"
KS = [16, 32, 64, 128, 256, 512, 1024]


def train(name: str, *overrides: str) -> dict:
    """The user's command, `accelerate launch tokenizer/train.py`, timed from outside."""
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    start = time.perf_counter()
    subprocess.run([accelerate, "launch", "tokenizer/train.py", f"out_dir={out}", *overrides], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    result = {"name": name, "wall_s": round(wall, 1), "test_psnr": round(last["test_psnr"], 2),
              "codebook_usage": round(last["codebook_usage"], 4), "perplexity": round(last["perplexity"], 1),
              "collapsed_any": any(r.get("collapsed") for r in rows), "recon_std": round(last["recon_std"], 3)}
    print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return result


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "default"
    extra = argv[1:]
    if what == "default":
        r = train("default", *extra)
        print(f"target: psnr >= 25.5 -> {r['test_psnr'] >= 25.5}; usage >= 0.99 -> {r['codebook_usage'] >= 0.99}; "
              f"wall <= 180 s -> {r['wall_s'] <= 180}")
    elif what == "long":
        from tokenizer.config import TokenizerConfig
        from common.config import load_config
        epochs = load_config(TokenizerConfig, [], REPO / "configs" / "tokenizer.yaml").epochs
        train("long_4x", f"epochs={4 * epochs}", *extra)
    elif what == "sweep":
        results = [train(f"k{k}", f"codebook_size={k}", *extra) for k in KS]
        from common.plots import save_curves
        save_curves(OUT / "k_sweep_psnr.png", {"test_psnr (dB)": (KS, [r["test_psnr"] for r in results])},
                    xlabel="codebook size K", title="tokenizer PSNR vs K")
        save_curves(OUT / "k_sweep_usage.png", {"codebook_usage": (KS, [r["codebook_usage"] for r in results])},
                    xlabel="codebook size K", title="codebook usage vs K")
    else:
        raise SystemExit(f"unknown benchmark {what!r}: default, long or sweep")


if __name__ == "__main__":
    main(sys.argv[1:])
