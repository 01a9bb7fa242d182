"""Design sweep judged by the samples: tokenizer and prior variants x guidance.

    python bench/quality_sweep.py variants=default,augment scales=0.5,1.0 [schedules=constant,linear]
                                  [keeps=1.0,0.8] [n=10000]
    python bench/quality_sweep.py list          # the variants and their overrides

Each variant is a tokenizer (the default config plus overrides) and a prior over
it (the default config plus overrides); for each guidance scale, schedule and
filtering share (`--keep-likeliest`), n unconditional samples (`--digit none`:
each draws its digit) judged by sampling/evaluate.py (two judges, ratio to real
training digits). The decoder_* keys leave the codes alone, so variants that
differ only in them share one prior (trained over the tokenizer without them).
Every step is the user's own command. Runs go to runs/bench/quality/; a training
command resumes (or returns at once) when its run is already there; judged cells
are kept in results.jsonl and skipped on a rerun. One table and the
Frechet-vs-confident frontier plot (docs/quality_frontier.png) come last.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench" / "quality"
BIN = Path(sys.executable).parent
LARGE = ["--config", "configs/prior-large.yaml"]
# Tokenizer variants start from the recipe they were measured against (K=512, no decoder
# phase: the earlier default), so their names keep meaning what they measured.
BASE_TOKENIZER = ["codebook_size=512", "decoder_epochs=0", "decoder_loss=mse"]
# The large-* variants start from that config as it was when they were measured: no augmentation.
PLAIN_LARGE = [*LARGE, "augment=false", "augment_token=false", "augment_share=0.5"]
# name: (tokenizer overrides, prior overrides); tokenizers are shared by their overrides.
VARIANTS = {
    "default": ([], []),
    "tokenizer-1-epoch": (["epochs=1", "batch_size=32"], []),
    "k32": (["codebook_size=32"], []),
    "k128": (["codebook_size=128"], []),
    "fsq-8555": (["quantizer=fsq", "fsq_levels=[8,5,5,5]"], []),
    "fsq-8555-res": (["quantizer=fsq", "fsq_levels=[8,5,5,5]", "res_blocks=2"], []),
    "augment": ([], ["augment=true"]),
    # token_dropout=0.1 and augment_mode=shift lost here and left the code (docs/EXPERIMENTS.md)
    "rowcol": ([], ["rowcol_pos=true"]),
    "large": ([], PLAIN_LARGE),
    "large-augment": ([], [*PLAIN_LARGE, "augment=true"]),
    "augment-token": ([], ["augment=true", "augment_token=true"]),
    "large-augment-token": ([], [*PLAIN_LARGE, "augment=true", "augment_token=true"]),
    "large-augment-token-quarter": ([], [*PLAIN_LARGE, "augment=true", "augment_token=true", "augment_share=0.25"]),
    "decoder-10": (["decoder_epochs=10"], []),
    "quality": (["decoder_epochs=10"], LARGE),                 # the earlier quality point
    "decoder-3": (["decoder_epochs=3"], []),
    "gan-1": (["decoder_epochs=1", "decoder_loss=gan"], []),
    "gan-1-w0.03": (["decoder_epochs=1", "decoder_loss=gan", "decoder_gan_weight=0.03"], []),
    "gan-3": (["decoder_epochs=3", "decoder_loss=gan"], []),
    "k64": (["codebook_size=64"], []),
    "k64-gan-1": (["codebook_size=64", "decoder_epochs=1", "decoder_loss=gan"], []),
    "k64-gan-3": (["codebook_size=64", "decoder_epochs=3", "decoder_loss=gan"], []),
    "quality-gan-3": (["codebook_size=64", "decoder_epochs=3", "decoder_loss=gan"], LARGE),
    "quality-gan": (["codebook_size=64", "decoder_epochs=1", "decoder_loss=gan"], LARGE),   # the quality point
}


def slug(overrides: list[str]) -> str:
    """A folder name for a list of overrides: codebook_size=64 -> codebook_size64, --config a/b.yaml -> b."""
    words = [Path(o).stem if o.endswith(".yaml") else o.lstrip("-") for o in overrides if o != "--config"]
    return "-".join(w.replace("=", "").replace(",", "") for w in words).replace("[", "").replace("]", "")


def timed(*command) -> float:
    start = time.perf_counter()
    subprocess.run([str(c) for c in command], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def last_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@functools.cache
def trained(variant: str) -> tuple[Path, Path]:
    """(tokenizer run, prior run) of a variant, trained by the users' commands when missing."""
    tok_overrides, prior_overrides = VARIANTS[variant]
    code_overrides = [o for o in tok_overrides if not o.startswith("decoder_")]   # what decides the codes
    tokenizer = OUT / ("tokenizer-" + (slug(tok_overrides) or "default"))
    codes = OUT / ("tokenizer-" + (slug(code_overrides) or "default"))
    prior = OUT / f"prior-{slug(code_overrides) or 'default'}--{slug(prior_overrides) or 'default'}"
    for run, overrides in {codes: code_overrides, tokenizer: tok_overrides}.items():
        timed(BIN / "accelerate", "launch", "tokenizer/train.py", f"out_dir={run}", *BASE_TOKENIZER, *overrides)
    # The resolved path, so a tokenizer folder linked here from another bench is the same run.
    timed(BIN / "accelerate", "launch", "prior/train.py", *prior_overrides, f"out_dir={prior}",
          f"tokenizer={codes.resolve().relative_to(REPO)}")
    return tokenizer, prior


def cell(variant: str, scale: float, schedule: str, keep: float, n: int) -> dict:
    tokenizer, prior = trained(variant)
    tok, pri = last_metrics(tokenizer), last_metrics(prior)
    samples = prior / f"samples-{variant}-{scale}-{schedule}-{keep}"
    seconds = timed(BIN / "python", "sampling/generate.py", "--n", n, "--prior", prior, "--tokenizer", tokenizer,
                    "--out", samples, "--overwrite", "--digit", "none", "--cfg", scale, "--cfg-schedule", schedule,
                    "--keep-likeliest", keep)
    timed(BIN / "python", "sampling/evaluate.py", samples / "samples.npz", "--tokenizer", tokenizer,
          "--json", samples / "judged.json")
    judged = json.loads((samples / "judged.json").read_text())
    s = judged["samples"]
    return {"variant": variant, "cfg": scale, "schedule": schedule, "keep": keep, "generate_s": round(seconds, 1),
            "test_psnr": round(tok["test_psnr"], 2), "perplexity": round(tok["perplexity"], 1),
            "tokenizer_train_s": tok["train_s"], "prior_train_s": pri["train_s"],
            "bits_per_token": round(pri["test_nll_bits_per_token"], 3),
            "bits_per_image": round(pri["test_nll_bits_per_image"], 1),
            "frechet": round(s["frechet"], 2), "x_real": round(s["x_real"], 2),
            "frechet_b": round(s["frechet_b"], 2), "x_real_b": round(s["x_real_b"], 2),
            "recon_frechet": round(judged["tokenizer recon"]["frechet"], 2), "confident": round(s["confident"], 4),
            "class_kl": round(s["class_kl"], 4), "cond_acc": round(s["cond_acc"], 4),
            "precision": round(s["precision"], 3), "recall": round(s["recall"], 3)}


def parse(argv: list[str]) -> dict:
    opts = {"variants": "default", "scales": "0.5,1.0", "schedules": "constant", "keeps": "1.0", "n": "10000"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in opts or not value:
            raise SystemExit(f"unknown argument {arg!r}: use variants=a,b scales=0.5,1.0 "
                             f"schedules=constant,linear keeps=1.0,0.8 n=10000 (or `list`)")
        opts[key] = value
    variants = opts["variants"].split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return {"variants": variants, "scales": [float(s) for s in opts["scales"].split(",")],
            "schedules": opts["schedules"].split(","), "keeps": [float(k) for k in opts["keeps"].split(",")],
            "n": int(opts["n"])}


def main(argv: list[str]) -> None:
    if argv == ["list"]:
        for name, (tok, prior) in VARIANTS.items():
            print(f"{name:14s} tokenizer: {' '.join(tok) or '(default)'}; prior: {' '.join(prior) or '(default)'}")
        return
    opts = parse(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.jsonl"
    done = [json.loads(l) for l in results_file.read_text().splitlines()] if results_file.is_file() else []
    cells = [(v, c, s, k) for v in opts["variants"] for s in opts["schedules"] for c in opts["scales"]
             for k in opts["keeps"]]
    for variant, scale, schedule, keep in cells:
        if any(key(r) == (variant, scale, schedule, keep) for r in done):
            continue
        result = cell(variant, scale, schedule, keep, opts["n"])
        print(json.dumps(result), flush=True)
        with results_file.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
    columns = ["variant", "cfg", "schedule", "keep", "test_psnr", "perplexity", "bits_per_token", "prior_train_s",
               "frechet", "x_real", "frechet_b", "x_real_b", "recon_frechet", "confident", "class_kl", "cond_acc",
               "precision", "recall", "generate_s"]
    print("| " + " | ".join(columns) + " |")
    for r in sorted(done, key=lambda r: (list(VARIANTS).index(r["variant"]), r["schedule"], key(r)[3], r["cfg"])):
        print("| " + " | ".join(str(r.get(c, "-")) for c in columns) + " |")
    from common.plots import save_curves
    curves = {}
    for r in sorted(done, key=lambda r: r["cfg"]):
        variant, _, schedule, keep = key(r)
        name = variant + ("" if schedule == "constant" else f", {schedule}") + ("" if keep == 1 else f", keep {keep}")
        xs, ys = curves.setdefault(name, ([], []))
        xs.append(100 * r["confident"])
        ys.append(r["frechet"])
    save_curves(REPO / "docs" / "quality_frontier.png", curves, xlabel="confident (%), guidance rising along each line",
                ylabel="Frechet distance (judge a)", legend_outside=True,
                title="samples: distance (lower is better) vs confident")


def key(result: dict) -> tuple:
    """A judged cell's identity; cells judged before filtering existed kept every sample."""
    return result["variant"], result["cfg"], result["schedule"], result.get("keep", 1.0)


if __name__ == "__main__":
    main(sys.argv[1:])
