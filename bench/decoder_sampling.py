"""Decoders that sample, judged by the evaluator's two-sample test against the shipped
deterministic decoder, side by side, the tokenizer's codes frozen.

    python bench/decoder_sampling.py noise [--steps 1875] [--gan-weight 0.3] [--blur 2] [--r1 0.1]
    python bench/decoder_sampling.py flow [--steps 2000] [--width 32] [--sample-steps 3 6] [--start 0.5]

noise: the shipped decoder with noise added after each of its layers below the output
(a learned scale per channel, starting at 0: it starts as the shipped decoder), trained
against a fresh patch + whole-picture discriminator with the squared error measured on
pictures blurred by --blur (average pooling): the coarse shape stays tied to the code, the
detail the code leaves open is the adversary's to judge and the noise's to draw.

flow: the refiner the tokenizer ships (tokenizer/refiner.py: a flow from noise to a picture,
conditioned on the tokenizer's reconstruction, a fixed function of the code grid: the prior is
untouched), trained here alone with its own schedule; --start 0.5 begins sampling half-way,
from the reconstruction blended with noise. Trained on the training set's (reconstruction,
picture) pairs; --load judges a trained one again.

Prints, for the test set's code grids (or a prior's, --tokens samples.npz): PSNR, the seconds
per 10k decoded and the two-sample test against real training pictures (--seeds seeds; with
--baseline the shipped decoder too); writes OUT/results.json, OUT/model.safetensors and
OUT/draws.png (each row: a test picture, its reconstruction, four draws from its code grid).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.checkpoint import load_weights, save_weights  # noqa: E402
from common.plots import save_png  # noqa: E402
from sampling.judge import real_digit_sets, reconstructions, two_sample_test  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402
from common.images import quantized, to_float  # noqa: E402
from tokenizer.data import data_root, encode_images, ensure_dataset, load_split  # noqa: E402
from tokenizer.refiner import Refiner, flow_loss, refine  # noqa: E402


def draw(model: Refiner, recon: torch.Tensor, steps: int, gen: torch.Generator, start: float,
         batch: int = 1000) -> torch.Tensor:
    """The refiner's pictures for reconstructions in [0, 1], at the levels a saved picture has."""
    out = [refine(model, r * 2 - 1, steps, start, gen) for r in recon.split(batch)]
    return quantized((torch.cat(out) + 1) / 2)


def psnr(a, b) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


class Noise(nn.Module):
    """Adds a fresh standard-normal map, scaled by a learned weight per channel (0 at first)."""
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.generator: torch.Generator | None = None   # set to draw repeatable noise

    def forward(self, x):
        noise = torch.randn(x.shape[0], 1, *x.shape[2:], generator=self.generator).to(x)
        return x + self.weight * noise


def noisy_decoder(decoder: nn.Module) -> nn.Sequential:
    """The decoder's layers with Noise after each ReLU (every resolution below the output)."""
    layers = []
    for layer in decoder.net:
        layers.append(layer)
        if isinstance(layer, nn.ReLU):
            channels = next(m for m in reversed(layers[:-1]) if hasattr(m, "weight")).weight.shape[0]
            layers.append(Noise(channels if not isinstance(layers[-2], nn.ConvTranspose2d) else layers[-2].weight.shape[1]))
    return nn.Sequential(*layers)


def train_noise(tok, train_x, codes, args) -> tuple[nn.Module, float]:
    from tokenizer.discriminator import (PatchDiscriminator, adversarial_weight, hinge_discriminator_loss,
                                         hinge_generator_loss, r1_penalty)
    decoder = noisy_decoder(copy.deepcopy(tok.decoder)).train()
    disc = PatchDiscriminator(train_x.shape[1], train_x.shape[-1], 32, True)
    ema = torch.optim.swa_utils.AveragedModel(decoder, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.999))
    opt = torch.optim.Adam(decoder.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    blur = (lambda x: F.avg_pool2d(x, args.blur)) if args.blur > 1 else (lambda x: x)
    started = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(train_x), (args.batch,))
        real = train_x[idx] * 2 - 1
        with torch.no_grad():
            z = tok.code_vectors(codes[idx])
        fake = decoder(z)
        recon = F.mse_loss(blur(fake), blur(real))
        adversarial = hinge_generator_loss(disc(fake))
        loss = recon + adversarial_weight(step, args.gan_weight, 200) * adversarial
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(decoder)
        real.requires_grad_(args.r1 > 0)
        heads = disc(torch.cat([real, fake.detach()]))
        real_logits, fake_logits = [h.chunk(2)[0] for h in heads], [h.chunk(2)[1] for h in heads]
        d_loss = hinge_discriminator_loss(real_logits, fake_logits)
        if args.r1 > 0:
            d_loss = d_loss + args.r1 / 2 * r1_penalty(real_logits, real)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        if step % 250 == 0 or step == args.steps - 1:
            scales = [float(m.weight.detach().abs().mean()) for m in decoder if isinstance(m, Noise)]
            print(f"step {step} recon {recon.item():.4f} adv {adversarial.item():.3f} disc {d_loss.item():.3f} "
                  f"noise scales {' '.join(f'{v:.3f}' for v in scales)} {time.perf_counter() - started:.0f} s", flush=True)
    return ema.module.eval(), time.perf_counter() - started


@torch.no_grad()
def decode_noisy(decoder, tok, codes, seed: int, batch: int = 1000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    for m in decoder:
        if isinstance(m, Noise):
            m.generator = gen
    out = torch.cat([decoder(tok.code_vectors(codes[i:i + batch])) for i in range(0, len(codes), batch)])
    return (((out + 1) / 2).clamp(0, 1) * 255).round() / 255


def train_flow(train_x, train_r, args) -> tuple[nn.Module, float]:
    model = Refiner(train_x.shape[1], args.width).to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    print(f"refiner: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    started = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(train_x), (args.batch,))
        loss = flow_loss(model, train_r[idx] * 2 - 1, train_x[idx] * 2 - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(model)
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.perf_counter() - started:.0f} s", flush=True)
    return ema.module.eval(), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("candidate", choices=["noise", "flow"])
    p.add_argument("--tokenizer", default="pretrained/mnist/tokenizer")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, default=1875)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--disc-lr", type=float, default=2e-4)
    p.add_argument("--gan-weight", type=float, default=0.3)
    p.add_argument("--blur", type=int, default=2)
    p.add_argument("--r1", type=float, default=0.0)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--tokens", type=Path, help="samples.npz of generate.py: refine the prior's code grids")
    p.add_argument("--load", type=Path, help="flow: a model.safetensors of an earlier run, instead of training")
    p.add_argument("--start", type=float, default=0.5, help="flow: where on the path sampling starts, from the "
                                                                "reconstruction blended with noise")
    p.add_argument("--ema", type=float, default=0.999, help="flow: the weight average's decay")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--baseline", action="store_true", help="also judge the shipped decoder")
    p.add_argument("--out", type=Path, default=Path("runs/decoder-sampling"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    root = data_root()
    ensure_dataset(root, args.dataset)
    tok = load_tokenizer(args.tokenizer)
    train_x = to_float(load_split(root, args.dataset, train=True)[0])
    test_x = to_float(load_split(root, args.dataset, train=False)[0])[:args.n]
    reference = train_x[real_digit_sets(len(train_x), len(test_x))[1]]
    test_codes = encode_images(tok, (test_x * 255).round().to(torch.uint8))
    test_r = reconstructions(tok, test_x, refine=0)
    if args.tokens:   # a prior's samples (generate.py's samples.npz): judge their code grids, not the test set's
        import numpy as np
        with np.load(args.tokens) as saved:
            test_codes = torch.from_numpy(saved["tokens"].astype(np.int64))[:args.n]
        test_r = quantized(tok.decode(test_codes))
        test_x = test_r   # no picture to compare with: PSNR reads against the plain decoding
    rows = {}
    if args.baseline:
        rows["decoder"] = {"psnr": psnr(test_r, test_x), **two_sample_test(test_r, reference, seeds=args.seeds)}
        print(f"decoder: {rows['decoder']}", flush=True)
    if args.candidate == "noise":
        codes = encode_images(tok, (train_x * 255).round().to(torch.uint8))
        model, train_seconds = train_noise(tok, train_x, codes, args)
        started = time.perf_counter()
        drawn = decode_noisy(model, tok, test_codes, seed=0)
        seconds = time.perf_counter() - started
        rows["noise decoder"] = {"psnr": psnr(drawn, test_x), "seconds_per_10k": seconds * 10000 / len(drawn),
                                 **two_sample_test(drawn, reference, seeds=args.seeds)}
        print(f"noise decoder: {rows['noise decoder']}", flush=True)
        few = test_codes[:8]
        shown = [test_x[:8], test_r[:8]] + [decode_noisy(model, tok, few, seed=k) for k in range(4)]
    else:
        if args.load:   # a refiner trained before: judge other ways of sampling it
            model, train_seconds = Refiner(train_x.shape[1], args.width), 0.0
            model.load_state_dict(load_weights(args.load, "flow"))
            model.eval()
        else:
            model, train_seconds = train_flow(train_x, reconstructions(tok, train_x, refine=0), args)
        for steps in args.sample_steps:
            started = time.perf_counter()
            drawn = draw(model, test_r, steps, torch.Generator().manual_seed(steps), args.start)
            seconds = time.perf_counter() - started
            rows[f"refiner {steps} steps"] = {"psnr": psnr(drawn, test_x), "seconds_per_10k": seconds * 10000 / len(drawn),
                                              **two_sample_test(drawn, reference, seeds=args.seeds)}
            print(f"refiner {steps} steps: {rows[f'refiner {steps} steps']}", flush=True)
        gen = torch.Generator().manual_seed(1)
        shown = [test_x[:8], test_r[:8]] + [draw(model, test_r[:8], max(args.sample_steps), gen, args.start)
                                             for _ in range(4)]
    save_weights(args.out / "model.safetensors", model.state_dict(), args.candidate)
    save_png(args.out / "draws.png", torch.stack(shown, 1).flatten(0, 1), nrow=len(shown))
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "train_seconds": train_seconds, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: {m: v[m] for m in ("psnr", "c2st", "c2st_spread") if m in v} for k, v in rows.items()}))
    print(f"training {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
