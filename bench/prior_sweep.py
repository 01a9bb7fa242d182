"""Stage-two design sweep: codebook size K x prior size, judged by the samples.

    python bench/prior_sweep.py [ks=32,128,512] [priors=2:2,4:1] [n=10000]

For each K, the default tokenizer with codebook_size=K; over it, for each prior
`LAYERS:EPOCHS`, the default prior with that depth and length; then n samples from
the sampler's defaults (configs/sampling.yaml) judged by sampling/evaluate.py.
2:2 and 4:1 cost about the same CPU time, so they ask "deeper or longer?".
Every step is the user's own command. Runs go to runs/bench/sweep/; finished cells
are kept in results.jsonl and skipped on a rerun; a table and plots come last.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench" / "sweep"
BIN = Path(sys.executable).parent


def timed(*command: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(c) for c in command], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def last_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def tokenizer_run(k: int) -> tuple[Path, dict]:
    run = OUT / f"tokenizer-k{k}"
    info = run / "bench.json"
    if not info.is_file():
        wall = timed(BIN / "accelerate", "launch", "tokenizer/train.py", f"out_dir={run}", f"codebook_size={k}",
                     "resume=never")
        row = last_metrics(run)
        info.write_text(json.dumps({"tokenizer_wall_s": round(wall, 1), "test_psnr": round(row["test_psnr"], 2),
                                    "perplexity": round(row["perplexity"], 1)}))
    return run, json.loads(info.read_text())


def cell(k: int, layers: int, epochs: int, n: int) -> dict:
    tokenizer, tok_info = tokenizer_run(k)
    prior = OUT / f"prior-k{k}-l{layers}-e{epochs}"
    wall = timed(BIN / "accelerate", "launch", "prior/train.py", f"out_dir={prior}", f"tokenizer={tokenizer}",
                 f"n_layer={layers}", f"epochs={epochs}", "resume=never")
    row = last_metrics(prior)
    samples = prior / "samples"
    gen_s = timed(BIN / "python", "sampling/generate.py", "--n", n, "--prior", prior, "--out", samples, "--overwrite")
    timed(BIN / "python", "sampling/evaluate.py", samples / "samples.npz", "--tokenizer", tokenizer,
          "--json", prior / "judged.json")
    judged = json.loads((prior / "judged.json").read_text())
    s = judged["samples"]
    return {"K": k, "layers": layers, "epochs": epochs, **tok_info,
            "prior_wall_s": round(wall, 1), "prior_train_s": row["train_s"],
            "bits_per_token": round(row["test_nll_bits_per_token"], 3),
            "bits_per_image": round(row["test_nll_bits_per_image"], 1),
            "generate_wall_s": round(gen_s, 1), "frechet": round(s["frechet"], 2),
            "recon_frechet": round(judged["tokenizer recon"]["frechet"], 2),
            "frechet_ratio": round(judged["frechet_ratio"], 2), "confident": round(s["confident"], 4),
            "class_kl": round(s["class_kl"], 4), "cond_acc": round(s.get("cond_acc", float("nan")), 4),
            "precision": round(s["precision"], 3), "recall": round(s["recall"], 3)}


def parse(argv: list[str]) -> dict:
    opts = {"ks": "32,128,512", "priors": "2:2,4:1", "n": "10000"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in opts or not value:
            raise SystemExit(f"unknown argument {arg!r}: use ks=32,128,512 priors=2:2,4:1 n=10000")
        opts[key] = value
    return {"ks": [int(k) for k in opts["ks"].split(",")],
            "priors": [tuple(int(x) for x in p.split(":")) for p in opts["priors"].split(",")], "n": int(opts["n"])}


def main(argv: list[str]) -> None:
    opts = parse(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.jsonl"
    done = [json.loads(l) for l in results_file.read_text().splitlines()] if results_file.is_file() else []
    for k in opts["ks"]:
        for layers, epochs in opts["priors"]:
            if any((r["K"], r["layers"], r["epochs"]) == (k, layers, epochs) for r in done):
                continue
            result = cell(k, layers, epochs, opts["n"])
            print(json.dumps(result), flush=True)
            with results_file.open("a") as f:
                f.write(json.dumps(result) + "\n")
            done.append(result)
    keys = ["K", "layers", "epochs", "test_psnr", "bits_per_token", "bits_per_image", "prior_train_s",
            "frechet", "recon_frechet", "frechet_ratio", "confident", "class_kl", "cond_acc", "precision", "recall"]
    print(" | ".join(keys))
    for r in sorted(done, key=lambda r: (r["K"], r["layers"], r["epochs"])):
        print(" | ".join(str(r[key]) for key in keys))
    from common.plots import save_curves
    priors = sorted({(r["layers"], r["epochs"]) for r in done})
    by_prior = {p: sorted((r for r in done if (r["layers"], r["epochs"]) == p), key=lambda r: r["K"]) for p in priors}
    frechet = {f"samples, {l} layers x {e} epochs": ([r["K"] for r in rows], [r["frechet"] for r in rows])
               for (l, e), rows in by_prior.items()}
    first = next(iter(by_prior.values()))
    frechet["tokenizer reconstructions"] = ([r["K"] for r in first], [r["recon_frechet"] for r in first])
    save_curves(OUT / "sweep_frechet.png", frechet, xlabel="codebook size K",
                title="Frechet distance to the test set (lower is better)")
    confident = {f"{l} layers x {e} epochs": ([r["K"] for r in rows], [r["confident"] for r in rows])
                 for (l, e), rows in by_prior.items()}
    save_curves(OUT / "sweep_confident.png", confident, xlabel="codebook size K",
                title="share of samples classified with confidence >= 0.9")


if __name__ == "__main__":
    main(sys.argv[1:])
