"""Rebuild the shipped runs in pretrained/ with the project's own commands (CPU, fp32).

    python pretrained/build.py                   # train, prune, measure, write cards + SHA256SUMS (~90 min, 2 cores)
    python pretrained/build.py --skip-training   # keep the weights; re-measure, rewrite cards + SHA256SUMS
    python pretrained/build.py --set mnist --only tokenizer   # retrain one run, keep the others, re-measure
    python pretrained/build.py --set mnist --only priors      # retrain the priors over the shipped tokenizer

Each run is trained in place by `accelerate launch --cpu` (the same commands give the
same weights on CPU), then pruned to what using it needs: config.yaml,
model.safetensors, metrics.jsonl (no checkpoints/, cached codes, decoder or refiner phase).
A prior also gets sampling.yaml, its recommended sampler settings, which
generate.py and the demo page use unless a flag says otherwise. Each set's card
(README.md) holds the commands, times and figures, measured here and written with
its numbers in YAML front matter, which tests/test_pretrained.py checks against a
fresh measurement.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common.checkpoint import atomic_write_text
from common.pretrained import CONFIG, SAMPLER_SETTINGS, WEIGHTS, read_card

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "pretrained"
KEEP = {CONFIG, WEIGHTS, "metrics.jsonl", SAMPLER_SETTINGS}

# What ships. Runs train in this order (a prior needs its tokenizer); `train` is what
# follows the entry script, `sampling` a prior's recommended settings (flags of generate.py).
SETS = {
    "mnist": {
        "dataset": "mnist",
        "licence": "MNIST: Creative Commons Attribution-Share Alike 3.0 (Y. LeCun, C. Cortes, C. Burges)",
        "weights_licence": "cc-by-sa-3.0",
        "runs": {
            "tokenizer": {"stage": "tokenizer", "train": [],
                          "about": "the default tokenizer (tokenizer/config.py): K=64, two adversarial decoder epochs, two of the refiner"},
            "prior": {"stage": "prior", "train": ["--config", "configs/prior-large.yaml",
                                                   "tokenizer=pretrained/mnist/tokenizer"],
                      "sampling": {"label": "none", "cfg": 0.2, "temperature": 1.0, "keep_likeliest": 1.0},
                      "about": "the quality prior (configs/prior-large.yaml): 4 layers x 112, 8 epochs, augmented, Muon"},
            "prior-default": {"stage": "prior", "train": ["tokenizer=pretrained/mnist/tokenizer"],
                              "sampling": {"label": "all", "cfg": 0.35, "temperature": 1.0, "keep_likeliest": 1.0},
                              "about": "the default prior (prior/config.py): what `make demo` trains (2 layers x 112, Muon)"},
        },
    },
    "fashion": {
        "dataset": "fashion",
        "licence": "Fashion-MNIST: MIT (Zalando SE)",
        "weights_licence": "mit",
        "runs": {
            "tokenizer": {"stage": "tokenizer", "train": ["--config", "configs/tokenizer-fashion.yaml"],
                          "about": "the default tokenizer on Fashion (configs/tokenizer-fashion.yaml): K=64, two adversarial decoder epochs, no refiner"},
            "prior": {"stage": "prior", "train": ["--config", "configs/prior-fashion.yaml",
                                                   "tokenizer=pretrained/fashion/tokenizer"],
                      "sampling": {"label": "all", "cfg": 0.35, "temperature": 1.0, "keep_likeliest": 1.0},
                      "about": "the Fashion prior (configs/prior-fashion.yaml): the default recipe at 4 layers x 8 epochs"},
        },
    },
}


def run_dir(set_name: str, run: str) -> Path:
    return HERE / set_name / run


def train_command(set_name: str, run: str, spec: dict) -> list[str]:
    """The user's command for this run, with its out_dir in pretrained/ and resume off."""
    return ["accelerate", "launch", "--cpu", "--num_processes", "1", "--mixed_precision", "no",
            f"{spec['stage']}/train.py", *spec["train"], f"out_dir=pretrained/{set_name}/{run}", "resume=never"]


def run_command(command: list[str]) -> None:
    """Run a user's command from the repository root, with this venv's tools."""
    print("+ " + " ".join(command), flush=True)
    tool = Path(sys.executable).parent / command[0]
    subprocess.run([str(tool) if tool.exists() else command[0], *command[1:]], cwd=REPO, check=True)


def train(set_name: str, run: str, spec: dict) -> None:
    target = run_dir(set_name, run)
    if target.exists():
        shutil.rmtree(target)   # a rebuild starts from nothing: no stale checkpoint resumes
    run_command(train_command(set_name, run, spec))
    prune(target)


def code_weights(set_name: str) -> dict:
    """The shipped tokenizer's tensors that choose its codes: all but the decoder's and the refiner's."""
    path = run_dir(set_name, "tokenizer") / WEIGHTS
    if not path.is_file():
        return {}
    from safetensors.torch import load_file
    return {k: v for k, v in load_file(path).items() if not k.startswith(("decoder.", "refiner."))}


def retrain_tokenizer_only(set_name: str, spec: dict) -> None:
    """A new tokenizer under the shipped priors: allowed only when it gives them the very same
    codes (a decoder or refiner change, retrained on the CPU type that trained the priors), since a
    prior is trained on codes alone and its command would then give the same weights again."""
    import torch
    before = code_weights(set_name)
    train(set_name, "tokenizer", spec["runs"]["tokenizer"])
    after = code_weights(set_name)
    if not before or before.keys() != after.keys() or not all(torch.equal(before[k], after[k]) for k in before):
        raise SystemExit(f"the new {set_name} tokenizer gives other codes than the one its priors were trained "
                         f"on: retrain them too (drop --only)")
    print(f"{set_name}: the new tokenizer's encoder and codebook are the old ones, tensor for tensor; "
          "its priors stand", flush=True)


def prune(target: Path) -> None:
    """Keep only what using the run needs."""
    for path in target.iterdir():
        if path.name in KEEP:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def last_metrics(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def machine() -> str:
    """This machine in a few words, e.g. '2-core AMD EPYC, fp32, torch 2.14.1'."""
    from importlib.metadata import version
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    model = names[0] if names else platform.processor() or "unknown CPU"
    return f"{os.cpu_count()}-core {model}, fp32, torch {version('torch')}"


def measure_prior(set_name: str, run: str, spec: dict) -> dict:
    """The seed-0 grid (shipped) and the evaluator's table over 10k samples (not shipped)."""
    folder = f"pretrained/{set_name}/{run}"
    sampling = spec["sampling"]
    atomic_write_text(HERE / set_name / run / SAMPLER_SETTINGS,
                      f"# Recommended settings of generate.py and the demo page for this prior (flags override).\n"
                      + yaml.safe_dump(sampling, sort_keys=False))
    run_command(["python", "sampling/generate.py", "--prior", folder, "--n", "64", "--seed", "0",
                 "--out", f"{folder}/seed0", "--overwrite"])
    with tempfile.TemporaryDirectory() as tmp:
        run_command(["python", "sampling/generate.py", "--prior", folder, "--n", "10000", "--seed", "0",
                     "--out", tmp, "--overwrite"])
        run_command(["python", "sampling/evaluate.py", f"{tmp}/samples.npz", "--tokenizer",
                     f"pretrained/{set_name}/tokenizer", "--json", f"{tmp}/eval.json"])
        return json.loads(Path(tmp, "eval.json").read_text())


def seed0_nll_bits(folder: Path) -> float:
    """The prior's teacher-forced NLL of its shipped seed-0 tokens, in bits per token: a figure
    another CPU reproduces to rounding, where a resampled grid may part at a flipped token."""
    import numpy as np
    import torch
    from prior import load_prior
    from prior.train import test_nll_bits
    with np.load(folder / "seed0" / "samples.npz") as shipped:
        tokens, labels = torch.from_numpy(shipped["tokens"]).long(), torch.from_numpy(shipped["labels"]).long()
    return test_nll_bits(load_prior(folder)[0], tokens.flatten(1), labels)


def rounded(value):
    """A figure for the card's front matter: 6 decimals (each seed's, for a list)."""
    return [rounded(v) for v in value] if isinstance(value, list) else round(value, 6)


def write_card(set_name: str, spec: dict, trained_here: bool) -> None:
    """README.md: the commands, times and figures; the numbers also as YAML front matter.
    Its machine line names this machine when it trained the runs, else stays the card's own."""
    card_path = HERE / set_name / "README.md"
    old = read_card(card_path)
    runs = {}
    for run, run_spec in spec["runs"].items():
        metrics = last_metrics(run_dir(set_name, run))
        entry = {"command": " ".join(train_command(set_name, run, run_spec)), "time_s": metrics["time_s"]}
        if run_spec["stage"] == "tokenizer":
            entry.update({k: metrics[k] for k in ("test_psnr", "codebook_usage", "perplexity")})
        else:
            entry["test_nll_bits_per_token"] = metrics["test_nll_bits_per_token"]
            entry["sampling"] = run_spec["sampling"]
            table = measure_prior(set_name, run, run_spec)
            entry["seed0_nll_bits_per_token"] = seed0_nll_bits(run_dir(set_name, run))
            entry["samples_10k_seed0"] = {name: {k: rounded(v) for k, v in row.items()} for name, row in table.items()}
        runs[run] = entry
    trained_on = machine() if trained_here or not old.get("machine") else old["machine"]
    front = {"license": spec["weights_licence"], "datasets": [spec["dataset"]], "library_name": "vqgen",
             "machine": trained_on, "runs": runs}
    atomic_write_text(card_path, "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + card_body(set_name, spec, runs, trained_on))


def card_body(set_name: str, spec: dict, runs: dict, trained_on: str) -> str:
    tok = runs["tokenizer"]
    lines = [f"# vqgen shipped runs: {set_name}", "",
             f"Trained by `python pretrained/build.py` on {trained_on}; every figure below was measured "
             "by it. The front matter above holds the same numbers, which `tests/test_pretrained.py` "
             "re-measures. Training times are the wall-clock `time_s` of each run's metrics.jsonl; other "
             "work may have shared the cores, so read them as upper bounds.", "",
             "```bash",
             f"python sampling/generate.py --n 64 --prior {set_name}          # the recommended prior, its settings",
             f"python sampling/generate.py --n 64 --prior {set_name}/prior-default" if "prior-default" in runs else None,
             "```", "",
             "## Runs", "",
             "| run | what | command | training time | figures |", "|---|---|---|---|---|",
             f"| `tokenizer` | {spec['runs']['tokenizer']['about']} | `{tok['command']}` | {tok['time_s']:.0f} s | "
             f"test PSNR {tok['test_psnr']:.2f} dB, codebook usage {tok['codebook_usage']:.0%} |"]
    for run, entry in runs.items():
        if run == "tokenizer":
            continue
        lines.append(f"| `{run}` | {spec['runs'][run]['about']} | `{entry['command']}` | {entry['time_s']:.0f} s | "
                     f"{entry['test_nll_bits_per_token']:.4f} bits/token on the test set |")
    lines += ["", "## Samples at the recommended settings", "",
              "`sampling.yaml` in each prior's folder holds the settings generate.py and the demo page use "
              "for it unless a flag says otherwise. 10,000 samples, seed 0, judged by "
              f"`python sampling/evaluate.py S/samples.npz --tokenizer pretrained/{set_name}/tokenizer` "
              "(x real: the distance over that of 10k real training images, the floor no sampler beats; "
              "worst judge: the larger of the two; two-sample test: the held-out accuracy of a fresh classifier "
              "trained until its validation loss stops improving to tell the set from other real training "
              "images, mean of 3 seeds +- half their range, 50% when it cannot; the real rows are its floors, "
              "real test images that of the reconstructions):", ""]
    for run, entry in runs.items():
        if run == "tokenizer":
            continue
        settings = ", ".join(f"{k} {v}" for k, v in entry["sampling"].items())
        lines += [f"**`{run}`** ({settings}); seed-0 grid of 64: `{run}/seed0/grid.png`", "",
                  f"![{run}, seed 0]({run}/seed0/grid.png)", "",
                  "| | FD a | x real | FD b | x real (b) | worst judge | two-sample test | confident | cond_acc |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, row in entry["samples_10k_seed0"].items():
            cond = f"{row['cond_acc']:.1%}" if "cond_acc" in row else "-"
            c2st = f"{row['c2st']:.1%} +- {row['c2st_spread']:.1%}" if "c2st_spread" in row else f"{row['c2st']:.1%}"
            if "frechet" not in row:   # the reconstructions' floor: a two-sample figure only
                lines.append(f"| {name} | - | - | - | - | - | {c2st} | - | - |")
                continue
            lines.append(f"| {name} | {row['frechet']:.2f} | {row['x_real']:.2f}x | {row['frechet_b']:.2f} | "
                         f"{row['x_real_b']:.2f}x | {row['x_real_worst']:.2f}x | {c2st} | "
                         f"{row['confident']:.1%} | {cond} |")
        lines.append("")
    lines += ["## Licence", "",
              f"The weights are released under `{spec['weights_licence']}`, the terms of the data they learnt "
              f"from ({spec['licence']}).", "",
              "## Rebuild", "",
              "`python pretrained/build.py` retrains every shipped run with the commands above, from nothing, "
              "on CPU: the same commands give the same weights there, tensor for tensor. "
              "`python pretrained/build.py --skip-training` keeps the weights and re-measures.", ""]
    return "\n".join(line for line in lines if line is not None)


def write_sums() -> None:
    """SHA256SUMS over every shipped file but the cards (`cd pretrained && sha256sum -c SHA256SUMS`)."""
    files = sorted(p for p in HERE.rglob("*") if p.is_file() and p.parent != HERE and p.name != "README.md")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(HERE).as_posix()}" for p in files]
    atomic_write_text(HERE / "SHA256SUMS", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-training", action="store_true", help="keep the weights; re-measure and rewrite cards")
    p.add_argument("--skip-cards", action="store_true", help="train and prune only")
    p.add_argument("--set", action="append", choices=sorted(SETS), help="only this set (repeatable; default: all)")
    p.add_argument("--only", choices=["tokenizer", "priors"], default=None,
                   help="retrain only the tokenizer (which must give its priors the same codes), "
                        "or only the priors (over the shipped tokenizer)")
    args = p.parse_args(argv)
    for set_name, spec in SETS.items():
        if args.set and set_name not in args.set:
            continue
        if args.only == "tokenizer" and not args.skip_training:
            retrain_tokenizer_only(set_name, spec)
        elif not args.skip_training:
            for run, run_spec in spec["runs"].items():
                if args.only != "priors" or run_spec["stage"] == "prior":
                    train(set_name, run, run_spec)
        if not args.skip_cards:
            write_card(set_name, spec, trained_here=not args.skip_training)
    if not args.skip_cards:
        write_sums()


if __name__ == "__main__":
    main()
