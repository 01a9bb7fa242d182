"""Training speed: time to quality, throughput and peak memory, against a reference.

    python bench/training_speed.py tokenizer [--budget 600]   # ours vs the reference loop, one run
    python bench/training_speed.py prior [key=value ...]       # tokens/s and time to a test NLL

Clocks count training steps only (`train_s` in metrics.jsonl): evaluation, plots
and checkpoints are excluded for both sides, and both are evaluated on the full
10k test set. Each side runs in its own process, so peak RSS is its own.

The reference loop is the stage-one design as the issue states it, written here
for comparison only: torchvision's PIL dataset through a DataLoader (batch 64,
shuffled, ToTensor + Normalize), encoder 1->64->64->64, a plain K=512 codebook
with the codebook and commitment losses (beta 0.25), tanh decoder, Adam 1e-3.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench"
PSNR_TARGETS = (21.0, 24.0)
NLL_TARGETS = (4.0, 3.6, 3.4)


def run_measured(args: list[str], log: Path) -> float:
    """Run a child process; return its peak RSS in MiB."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_MODE": "disabled"})
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed; see {log}")
    return usage.ru_maxrss / 1024


def read_rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def time_to(rows: list[dict], key: str, target: float, higher_is_better: bool) -> float | None:
    for r in rows:
        if (r[key] >= target) if higher_is_better else (r[key] <= target):
            return r["train_s"]
    return None


def fmt(seconds: float | None, budget: float) -> str:
    return f"{seconds:.1f}" if seconds is not None else f"> {budget:.0f}"


# -- the reference loop (child process) ---------------------------------------------------

def reference_tokenizer(out: Path, budget: float, eval_every: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from tokenizer.data import data_root, ensure_dataset, load_split
    from tokenizer.train import evaluate_tokenizer

    class ReferenceVQVAE(nn.Module):
        def __init__(self, K: int = 512, D: int = 64, beta: float = 0.25):
            super().__init__()
            self.num_codes, self.beta = K, beta
            self.encoder = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),
                                         nn.Conv2d(64, D, 3, 1, 1))
            self.codebook = nn.Embedding(K, D)
            self.codebook.weight.data.uniform_(-1 / K, 1 / K)
            self.decoder = nn.Sequential(nn.Conv2d(D, 64, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(64, 64, 4, 2, 1),
                                         nn.ReLU(), nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())

        def quantize(self, z):
            flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            idx = torch.cdist(flat, self.codebook.weight).argmin(1)
            return flat, idx, self.codebook(idx)

        def forward(self, x):
            z = self.encoder(x)
            flat, _, codes = self.quantize(z)
            loss_vq = F.mse_loss(codes, flat.detach()) + self.beta * F.mse_loss(flat, codes.detach())
            q = (flat + (codes - flat).detach()).reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
            return F.mse_loss(self.decoder(q), x) + loss_vq

        def encode(self, x01):
            z = self.encoder(x01 * 2 - 1)
            return self.quantize(z)[1].reshape(z.shape[0], z.shape[2], z.shape[3])

        def decode(self, idx):
            q = self.codebook(idx).permute(0, 3, 1, 2)
            return (self.decoder(q) + 1) / 2

    root = data_root()
    ensure_dataset(root, "mnist")
    test_images, _ = load_split(root, "mnist", train=False)
    data = datasets.MNIST(str(root), train=True, download=False,
                          transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    loader = DataLoader(data, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    model = ReferenceVQVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step, train_s = 0, 0.0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as log:
        while True:
            start = time.perf_counter()  # the loader's per-epoch start-up counts as training time
            for x, _ in loader:
                loss = model(x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % eval_every == 0:
                    train_s += time.perf_counter() - start
                    model.eval()
                    with torch.no_grad():
                        m = evaluate_tokenizer(model, test_images)
                    model.train()
                    row = {"step": step, "train_s": round(train_s, 2), "test_psnr": m["test_psnr"],
                           "codebook_usage": m["codebook_usage"]}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    print(row, flush=True)
                    if m["test_psnr"] >= max(PSNR_TARGETS) or train_s >= budget:
                        return
                    start = time.perf_counter()
            train_s += time.perf_counter() - start


# -- the benchmarks -------------------------------------------------------------------------

def bench_tokenizer(budget: float) -> None:
    ours_dir = OUT / "speed-tokenizer-ours"
    shutil.rmtree(ours_dir, ignore_errors=True)
    ours_rss = run_measured(["tokenizer/train.py", f"out_dir={ours_dir}", "eval_every=25", "max_steps=1000"],
                            OUT / "speed-tokenizer-ours.log")
    ours = read_rows(ours_dir / "metrics.jsonl")
    ref_file = OUT / "speed-tokenizer-reference.jsonl"
    ref_rss = run_measured([__file__, "--reference-tokenizer", str(ref_file), str(budget), "200"],
                           OUT / "speed-tokenizer-reference.log")
    ref = read_rows(ref_file)
    from tokenizer.config import TokenizerConfig
    batch = TokenizerConfig().batch_size
    rows = [("ours (defaults)", ours, batch, ours_rss), ("reference loop", ref, 64, ref_rss)]
    print(f"\n| loop | images/s | s to {PSNR_TARGETS[0]:.0f} dB | s to {PSNR_TARGETS[1]:.0f} dB | "
          f"last PSNR (step) | peak RSS MiB |\n|---|---|---|---|---|---|")
    times = {}
    for name, r, b, rss in rows:
        last = r[-1]
        times[name] = [time_to(r, "test_psnr", t, True) for t in PSNR_TARGETS]
        print(f"| {name} | {last['step'] * b / last['train_s']:.0f} | {fmt(times[name][0], budget)} | "
              f"{fmt(times[name][1], budget)} | {last['test_psnr']:.2f} ({last['step']}) | {rss:.0f} |")
    for i, target in enumerate(PSNR_TARGETS):
        mine, theirs = times["ours (defaults)"][i], times["reference loop"][i]
        if mine is None:
            print(f"time-to-{target:.0f}-dB ratio: ours did not reach it")
        elif theirs is None:
            print(f"time-to-{target:.0f}-dB ratio: > {budget / mine:.1f}x (reference not there in {budget:.0f} s)")
        else:
            print(f"time-to-{target:.0f}-dB ratio: {theirs / mine:.1f}x shorter")


def bench_prior(overrides: list[str]) -> None:
    out = OUT / "speed-prior"
    shutil.rmtree(out, ignore_errors=True)
    rss = run_measured(["prior/train.py", f"out_dir={out}", "eval_every=100", *overrides], OUT / "speed-prior.log")
    rows = read_rows(out / "metrics.jsonl")
    from common.config import config_from_file
    from prior.config import PriorConfig
    tokens_per_step = config_from_file(PriorConfig, out / "config.yaml").batch_size * 49
    last = rows[-1]
    print(f"\n| tokens/s | " + " | ".join(f"s to {t} bits/token" for t in NLL_TARGETS)
          + " | last bits/token (step) | peak RSS MiB |\n|" + "---|" * (3 + len(NLL_TARGETS)))
    cells = [fmt(time_to(rows, "test_nll_bits_per_token", t, False), last["train_s"]) for t in NLL_TARGETS]
    print(f"| {last['step'] * tokens_per_step / last['train_s']:.0f} | " + " | ".join(cells)
          + f" | {last['test_nll_bits_per_token']:.3f} ({last['step']}) | {rss:.0f} |")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--reference-tokenizer"]:
        return reference_tokenizer(Path(argv[1]), float(argv[2]), int(argv[3]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["tokenizer", "prior"])
    p.add_argument("--budget", type=float, default=600, help="reference loop's training-time cap, seconds")
    p.add_argument("overrides", nargs="*", help="key=value for the prior run")
    args = p.parse_args(argv)
    bench_tokenizer(args.budget) if args.what == "tokenizer" else bench_prior(args.overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
