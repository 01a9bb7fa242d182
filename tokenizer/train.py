"""Train the VQ-VAE tokenizer (stage one).

    accelerate launch tokenizer/train.py [--config FILE] [key=value ...]
    python tokenizer/train.py epochs=12 codebook_size=256

Defaults: tokenizer.config.TokenizerConfig, overridden by configs/tokenizer.yaml,
overridden by key=value. Writes runs/tokenizer/{config.yaml, model.safetensors,
metrics.jsonl, checkpoints/, *.png}. Run it again to resume an interrupted run.

With decoder_epochs > 0 a second phase follows in runs/tokenizer/decoder/ (a run
folder of its own): encoder and codebook frozen, the decoder alone keeps learning
on the codes they give. The codes a prior learns do not change; the images it is
judged by get sharper. Its result becomes runs/tokenizer/model.safetensors, and its
last evaluation the last line of runs/tokenizer/metrics.jsonl.

With refiner_epochs > 0 a third phase follows in runs/tokenizer/refiner/: the refiner
(tokenizer/refiner.py) learns to draw, from the decoder's frozen reconstructions, the
pictures they stand for; its weights join the tokenizer's, and draw() uses them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common.checkpoint import atomic_write_text
from common.config import ConfigError, load_config
from common.distributed import processes, together
from common.errors import run_main
from common.images import batch_for_pixels, in_batches, psnr, to_float
from common.plots import save_bars, save_curves, save_image_grid
from common.runs import append_metrics, run_lock, save_run_weights
from common.tracking import make_accelerator
from common.training import SideModel, Task, evaluation_subset, find_resume_point, fit, run_steps, warmup_for
from tokenizer.config import TokenizerConfig
from tokenizer.data import (DATA_INFO, check_dataset, data_root, encode_images, epoch_samples_for, is_own_dataset,
                            load_dataset, recorded_info)
from tokenizer.discriminator import (PatchDiscriminator, adversarial_weight, hinge_discriminator_loss,
                                     hinge_generator_loss, r1_penalty)
from tokenizer.model import VQVAE
from tokenizer.refiner import Refiner, flow_loss

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tokenizer.yaml"
BLANK_STD = 0.02         # reconstructions whose pixels barely vary across images: collapsed
USAGE_DROP = 0.5         # usage falling below half of its best so far: collapsing
OVERFIT_DB = 1.0         # training minus held-out PSNR past which the run warns that it memorises
OVERFIT_FLOW = 1.2       # held-out over training flow loss past which the refiner's phase warns the same
REFINER_WEIGHT_AVERAGE = 0.998   # the refiner's weight average (what it is scored by and ships): its first,
# untrained weights keep ~2% of it after two MNIST epochs (0.999 kept 15%)
REFINER_WARMUP = 100     # steps of the refiner's rising learning rate (it starts from nothing)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W] or [B,C,H,W] -> float [B,C,H,W] in [-1, 1] (the model's inside range)."""
    return to_float(images_uint8).mul_(2).sub_(1)


def loss_fn(model, batch):
    out = model(to_model_range(batch[0]))
    return out.loss, {"recon": out.recon_loss, "codebook": out.codebook_loss,
                      "commitment": out.commitment_loss}


@torch.no_grad()
def evaluate_tokenizer(model: VQVAE, images_uint8: torch.Tensor, batch_size: int = 0) -> dict:
    """test_mse/test_psnr on [0,1] pixels, codebook_usage, perplexity, and the code histogram."""
    batch_size = batch_size or batch_for_pixels(images_uint8, 500)
    device = next(model.parameters()).device
    K = model.num_codes
    counts = torch.zeros(K, dtype=torch.long)
    sq_err, n_pixels, recon_std = 0.0, 0, []
    for start in range(0, len(images_uint8), batch_size):
        x = to_float(images_uint8[start:start + batch_size]).to(device)
        indices = model.encode(x)
        x_hat = model.decode(indices)
        sq_err += (x_hat - x).pow(2).sum().item()
        n_pixels += x.numel()
        counts += torch.bincount(indices.flatten().cpu(), minlength=K)
        recon_std.append(x_hat.std(0).mean().item())
    mse = sq_err / n_pixels
    p = counts.float() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"test_mse": mse, "test_psnr": psnr(mse),
            "codebook_usage": (counts > 0).float().mean().item(), "perplexity": math.exp(entropy),
            "recon_std": sum(recon_std) / len(recon_std), "counts": counts}


def make_task(cfg: TokenizerConfig, train_images: torch.Tensor, test_images: torch.Tensor) -> Task:
    return JointTask(cfg, train_images, test_images).task()


def decoder_task(joint: Task, train_codes: torch.Tensor, train_images: torch.Tensor, test_images: torch.Tensor,
                 cfg: TokenizerConfig) -> Task:
    return DecoderTask(joint, train_codes, train_images, test_images, cfg).task()


class JointTask:
    """The first phase's part of the loop: encoder, codebook and decoder together; its
    evaluation also watches for a collapsing codebook."""

    def __init__(self, cfg: TokenizerConfig, train_images: torch.Tensor, test_images: torch.Tensor):
        torch.manual_seed(cfg.seed)
        # the refiner, when there is one, is the third phase's: not trained (nor drawn at random) here
        self.model = VQVAE(dataclasses.replace(cfg.shape(), refiner_width=0), seed=cfg.seed)
        self.cfg, self.train_images, self.test_images = cfg, train_images, test_images
        self.best_usage, self.best_recon_std = 0.0, 0.0
        self.last_counts = None   # the code histogram of the last evaluation, for report()

    def task(self) -> Task:
        return Task(stage="tokenizer", model=self.model, train_tensors=(self.train_images,), loss_fn=loss_fn,
                    evaluate=self.evaluate, report=self.report, score="test_mse", overfit_warning=self.overfit_warning)

    def evaluate(self, m, limit: int | None) -> dict:
        result = evaluate_tokenizer(m, self.test_images[evaluation_subset(len(self.test_images), limit)])
        self.last_counts = result.pop("counts")
        seen = self.train_images[evaluation_subset(len(self.train_images), limit or self.cfg.eval_samples)]
        result["train_psnr"] = evaluate_tokenizer(m, seen)["test_psnr"]   # measured the same way
        # Collapse is a fall from a healthy state: reconstructions turning (near) constant,
        # or usage dropping sharply. An untrained net's blank output is not a collapse.
        collapsed = ((result["recon_std"] < BLANK_STD and self.best_recon_std >= 2 * BLANK_STD)
                     or result["codebook_usage"] < USAGE_DROP * self.best_usage)
        self.best_usage = max(self.best_usage, result["codebook_usage"])
        self.best_recon_std = max(self.best_recon_std, result["recon_std"])
        if collapsed:
            print(f"WARNING: codebook collapse detected (usage {result['codebook_usage']:.1%}, "
                  f"reconstruction std {result['recon_std']:.4f}); try ema=true or a lower lr=", file=sys.stderr)
        result["collapsed"] = collapsed
        return result

    def report(self, out_dir: Path, m, history: list[dict], metrics: list[dict]) -> None:
        device = next(m.parameters()).device
        x = to_float(self.test_images[:32]).to(device)
        pairs = torch.stack([x, m.decode(m.encode(x))], 1).flatten(0, 1)  # original, recon, ...
        save_image_grid(out_dir / "reconstructions.png", pairs, nrow=8,
                        title="test originals (odd columns) and reconstructions")
        counts = self.last_counts
        save_bars(out_dir / "codebook_usage.png", counts.sort(descending=True).values, "code (sorted by use)",
                  "test-set count", f"{int((counts > 0).sum())}/{len(counts)} codes used")
        if history:
            steps = [h["step"] for h in history]
            curves = {k: (steps, [h[k] for h in history]) for k in history[0] if k.startswith("train_")}
            save_curves(out_dir / "loss.png", curves, log_y=True, title="training losses")

    @staticmethod
    def overfit_warning(result: dict) -> str | None:
        gap = result["train_psnr"] - result["test_psnr"]
        if gap > OVERFIT_DB:
            return (f"training and held-out reconstructions part at step {result['step']}: {result['train_psnr']:.2f} "
                    f"dB on training images, {result['test_psnr']:.2f} dB held out (gap {gap:.2f} > {OVERFIT_DB} dB); "
                    f"the best held-out weights ship")
        return None


class DecoderTask:
    """The second phase's part of the loop: the decoder alone, on the codes of the trained
    (now frozen) encoder and codebook; with decoder_loss=gan, a patch discriminator trains
    beside it (the loop's side model)."""

    def __init__(self, joint: Task, train_codes: torch.Tensor, train_images: torch.Tensor, test_images: torch.Tensor,
                 cfg: TokenizerConfig):
        self.joint, self.vqvae, self.train_images, self.cfg = joint, joint.model, train_images, cfg
        self.codes = train_codes   # the very codes a prior will read
        # the held-out PSNR the phase starts from, on the subset every evaluation measures (the
        # joint phase's weights are in the model here, also when the phase resumes)
        self.budget = max(cfg.decoder_psnr_budget, 0.0) if cfg.decoder_loss == "gan" else 0.0
        self.start_psnr = None
        if self.budget:
            held_out = test_images[evaluation_subset(len(test_images), cfg.eval_samples)]
            self.start_psnr = evaluate_tokenizer(self.vqvae, held_out)["test_psnr"]

    def task(self) -> Task:
        cfg, side = self.cfg, None
        if cfg.decoder_loss == "gan":
            with torch.random.fork_rng():   # the same discriminator however the run got here (resume, straight)
                torch.manual_seed(cfg.seed + 1)
                disc = PatchDiscriminator(cfg.channels, cfg.image_size, cfg.decoder_disc_channels,
                                          cfg.decoder_disc_whole_image)
                disc = disc.to(memory_format=torch.channels_last)
            side = SideModel(disc, self.disc_loss, lambda d: torch.optim.Adam(d.parameters(), lr=cfg.decoder_disc_lr,
                                                                              betas=(0.5, 0.9)))
        return Task(stage="tokenizer", model=self.vqvae.decoder, train_tensors=(self.codes, self.train_images),
                    loss_fn=self.gan_loss if side else self.mse_loss, side=side,
                    evaluate=self.evaluate,   # of the weight average: what ships
                    report=lambda out_dir, decoder, history, metrics: self.joint.report(out_dir, self.vqvae, history,
                                                                                        metrics),
                    export=lambda decoder: self.vqvae.state_dict(),
                    load_export=lambda decoder, weights: self.vqvae.load_state_dict(weights),
                    # within a budget: the starting weights are a candidate too, and a tie (within it) goes to the
                    # later, more adversarially trained weights
                    score="over_budget_db" if self.budget else None, evaluate_first=bool(self.budget))

    def evaluate(self, decoder, limit: int | None) -> dict:
        """The joint phase's figures, and within a PSNR budget how far the phase has spent it: the
        adversarial term buys sharpness with PSNR, and PSNR alone would ship the blurred decoder."""
        result = self.joint.evaluate(self.vqvae, limit)
        if self.budget:
            result["adversarial_cost_db"] = self.start_psnr - result["test_psnr"]
            result["over_budget_db"] = max(0.0, result["adversarial_cost_db"] - self.budget)
        return result

    def reconstruct(self, decoder, indices):
        with torch.no_grad():   # the codebook is frozen: no graph into it (a parameter without ema)
            z = self.vqvae.code_vectors(indices)
        return decoder(z)

    def mse_loss(self, decoder, batch):
        indices, images = batch
        recon = F.mse_loss(self.reconstruct(decoder, indices), to_model_range(images))
        return recon, {"recon": recon}

    def gan_loss(self, decoder, batch, disc, step):
        indices, images = batch
        fake = self.reconstruct(decoder, indices)
        recon = F.mse_loss(fake, to_model_range(images))
        adversarial = hinge_generator_loss(disc(fake))
        weight = adversarial_weight(step, self.cfg.decoder_gan_weight, warmup_for(self.cfg.decoder_gan_warmup,
                                                                                  processes()))
        return recon + weight * adversarial, {"recon": recon, "adversarial": adversarial.detach()}, fake.detach()

    def disc_loss(self, disc, batch, fake):
        r1 = self.cfg.decoder_r1
        real = to_model_range(batch[1]).requires_grad_(r1 > 0)
        heads = disc(torch.cat([real, fake]))   # real and fake in one pass
        real_logits, fake_logits = [h.chunk(2)[0] for h in heads], [h.chunk(2)[1] for h in heads]
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        logs = {"disc": loss.detach(), "disc_real_acc": (real_logits[0] > 0).float().mean(),
                "disc_fake_acc": (fake_logits[0] < 0).float().mean()}
        if r1 > 0:
            penalty = r1_penalty(real_logits, real)
            loss = loss + r1 / 2 * penalty
            logs["r1"] = penalty.detach()
        return loss, logs


class RefinerTask:
    """The third phase's part of the loop: the refiner alone, learning the flow from the frozen
    decoder's reconstructions to the pictures; scored by its held-out flow loss at fixed noise and
    times."""

    EVAL_SEED = 0   # the noise and times every evaluation measures at: the same draw each time

    def __init__(self, joint: Task, train_codes: torch.Tensor, train_images: torch.Tensor, test_images: torch.Tensor,
                 cfg: TokenizerConfig):
        self.vqvae, self.cfg = joint.model, cfg
        self.train_images, self.test_images = train_images, test_images
        self.train_recons = self.reconstruct(train_codes, train_images)
        self.test_recons = self.reconstruct(encode_images(self.vqvae, test_images), test_images)
        torch.manual_seed(cfg.seed)
        self.refiner = Refiner(cfg.channels, cfg.refiner_width).to(memory_format=torch.channels_last)

    def reconstruct(self, codes: torch.Tensor, images_uint8: torch.Tensor) -> torch.Tensor:
        """The decoder's pictures of the images' codes, at the levels a saved picture has (uint8)."""
        decode = lambda batch: (self.vqvae.decode(batch) * 255).round().to(torch.uint8).cpu()  # noqa: E731
        return in_batches(decode, codes, batch_for_pixels(images_uint8, 500))

    def task(self) -> Task:
        return Task(stage="tokenizer", model=self.refiner, train_tensors=(self.train_recons, self.train_images),
                    loss_fn=self.loss, evaluate=self.evaluate, score="refiner_test_loss",
                    overfit_warning=self.overfit_warning, export=self.export, load_export=self.load_export)

    def loss(self, refiner, batch):
        recons, images = batch
        loss = flow_loss(refiner, to_model_range(recons), to_model_range(images))
        return loss, {"flow": loss}

    @torch.no_grad()
    def flow_loss_on(self, refiner, recons: torch.Tensor, images: torch.Tensor) -> float:
        device = next(refiner.parameters()).device
        total, step = 0.0, batch_for_pixels(images, 500)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.EVAL_SEED)
            for r, x in zip(recons.split(step), images.split(step)):
                total += self.loss(refiner, (r.to(device), x.to(device)))[0].item() * len(x)
        return total / len(images)

    def evaluate(self, refiner, limit: int | None) -> dict:
        held_out = evaluation_subset(len(self.test_images), limit)
        seen = evaluation_subset(len(self.train_images), limit or self.cfg.eval_samples)
        return {"refiner_test_loss": self.flow_loss_on(refiner, self.test_recons[held_out], self.test_images[held_out]),
                "refiner_train_loss": self.flow_loss_on(refiner, self.train_recons[seen], self.train_images[seen])}

    @staticmethod
    def overfit_warning(result: dict) -> str | None:
        train, test = result["refiner_train_loss"], result["refiner_test_loss"]
        if test > OVERFIT_FLOW * train:
            return (f"the refiner's training and held-out flow loss part at step {result['step']}: {train:.4f} on "
                    f"training pictures, {test:.4f} held out (over {OVERFIT_FLOW}x); the best held-out weights ship")
        return None

    def export(self, refiner) -> dict[str, torch.Tensor]:
        """The tokenizer's weights with the refiner's among them (what load_tokenizer reads)."""
        return {**self.vqvae.state_dict(), **{f"refiner.{k}": v for k, v in refiner.state_dict().items()}}

    @staticmethod
    def load_export(refiner, weights: dict[str, torch.Tensor]) -> None:
        refiner.load_state_dict({k.removeprefix("refiner."): v for k, v in weights.items() if k.startswith("refiner.")})


def phase_config(cfg: TokenizerConfig, phase: str, steps_before: int) -> TokenizerConfig | None:
    """A later phase's config ("decoder" or "refiner", each in a run folder of its own inside the
    run's), or None when there is none to run. max_steps counts the steps of every phase."""
    epochs = {"decoder": cfg.decoder_epochs, "refiner": cfg.refiner_epochs}[phase]
    if epochs == 0 or (cfg.max_steps and cfg.max_steps <= steps_before):
        return None
    # each folder a tokenizer run of its own: the decoder's without a refiner, the refiner's with one
    own = (dict(lr=cfg.decoder_lr, weight_average=cfg.decoder_weight_average, seed=cfg.seed + cfg.decoder_seed,
                warmup_steps=0, refiner_epochs=0) if phase == "decoder"
           else dict(lr=cfg.refiner_lr, weight_average=REFINER_WEIGHT_AVERAGE, warmup_steps=REFINER_WARMUP))
    return dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir) / phase), epochs=epochs, decoder_epochs=0, **own,
                               max_steps=cfg.max_steps - steps_before if cfg.max_steps else 0)


RESIZE_ABOVE = 28   # auto: resize-convolutions for pictures larger than this many pixels a side


def upsample_for(image_size: int, configured: str) -> str:
    """auto: resize-convolutions above RESIZE_ABOVE pixels, where transposed ones left a grid and
    drew less sharply; transposed up to it, where they measured as sharp in less time
    (docs/EXPERIMENTS.md, "A decoder without a grid")."""
    if configured != "auto":
        return configured
    return "resize" if image_size > RESIZE_ABOVE else "transposed"


FINE_GRID_UP_TO = 28   # a user's set up to this many pixels a side: one halving, codes at half its side


def downsamples_for(dataset: str, configured: int, image_size: int) -> int:
    """The halvings from picture to codes: where none are configured (0), one for a user's set
    of pictures up to FINE_GRID_UP_TO pixels a side (14x14 codes at 28 px): over 7x7 codes the
    decoder's own reconstructions of Fashion 9k were told from real pictures 97-98% of the time,
    and so were samples; over 14x14, 81% and 87% (docs/EXPERIMENTS.md). Otherwise the configured
    value, 0 resolved by the model from the size (two halvings up to 32 pixels, three above):
    the built-in sets' shipped runs rest on it."""
    if configured or not is_own_dataset(dataset) or image_size > FINE_GRID_UP_TO:
        return configured
    return 1


REFINER_EPOCHS = 2


def refiner_epochs_for(configured: int, downsamples: int) -> int:
    """-1: REFINER_EPOCHS, but none over codes at half the pictures' side (one halving), which
    leave little for it to draw: there the refiner's samples of Fashion 9k were told from real
    pictures 90.9% of the time, the decoder's own 86.6% (docs/EXPERIMENTS.md)."""
    if configured != -1:
        return configured
    return 0 if downsamples == 1 else REFINER_EPOCHS


BUILTIN_GAN_WEIGHT, OWN_SET_GAN_WEIGHT = 0.1, 0.02
PSNR_BUDGET_DB = 0.5


def gan_weight_for(dataset: str, configured: float) -> float:
    """-1: MNIST's adversarial weight on the built-in sets (their shipped runs rest on it), and a
    fifth of it on a user's set: within the PSNR budget its reconstructions were the hardest to
    tell from real pictures on Fashion 9k and the emoji at 32 px (docs/EXPERIMENTS.md)."""
    if configured != -1:
        return configured
    return OWN_SET_GAN_WEIGHT if is_own_dataset(dataset) else BUILTIN_GAN_WEIGHT


def psnr_budget_for(dataset: str, configured: float) -> float:
    """-1: a user's set's adversarial phase may cost PSNR_BUDGET_DB of held-out PSNR (unchecked, at
    0.03 it cost 0.7-0.8 dB on Fashion 9k and the emoji at 32 px by its end); the built-in sets'
    shipped runs have no limit (MNIST's phase costs 0.6 dB)."""
    if configured != -1:
        return configured
    return PSNR_BUDGET_DB if is_own_dataset(dataset) else 0.0


def resolve_data(cfg: TokenizerConfig, info: dict) -> TokenizerConfig:
    """The settings the data decides (image_size, channels, the code grid and the refiner over it,
    epoch_samples, upsample, the adversarial weight and PSNR budget), or one line when the config
    asks for other ones."""
    if cfg.channels and cfg.channels != info["channels"]:
        raise ConfigError(f"channels={cfg.channels}, but dataset={cfg.dataset} is "
                          f"{'colour' if info['channels'] == 3 else 'grey'}; drop channels=")
    downsamples = downsamples_for(cfg.dataset, cfg.downsamples, info["image_size"])
    resolved = dataclasses.replace(cfg, image_size=info["image_size"], channels=info["channels"],
                                   downsamples=downsamples, refiner_epochs=refiner_epochs_for(cfg.refiner_epochs,
                                                                                              downsamples),
                                   epoch_samples=epoch_samples_for(cfg.dataset, cfg.epoch_samples, info["image_size"]),
                                   upsample=upsample_for(info["image_size"], cfg.upsample),
                                   decoder_gan_weight=gan_weight_for(cfg.dataset, cfg.decoder_gan_weight),
                                   decoder_psnr_budget=psnr_budget_for(cfg.dataset, cfg.decoder_psnr_budget))
    resolved.validate()   # image_size against downsamples
    return resolved


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(TokenizerConfig, sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG, usage=__doc__)
    check_dataset(cfg.dataset, data_root(cfg.data_root))   # a dataset= that cannot be one: one line, nothing written
    accelerator = make_accelerator(cfg.tracker)   # first: every step below is agreed by all processes
    with run_lock(cfg.out_dir):               # one writer per run folder
        root = data_root(cfg.data_root)
        # checked (and, for a user's set, decoded and cached) once per machine, before any training
        data = together(functools.partial(load_dataset, cfg.dataset, root, cfg.image_size, cfg.skip_bad_images,
                                          cfg.train_subset, quiet=not accelerator.is_local_main_process,
                                          max_pixels=cfg.max_image_pixels), on="local-first")
        cfg = resolve_data(cfg, data.info)
        find_resume_point(cfg, "tokenizer")   # refuse a mismatched run dir before any training
        if is_own_dataset(cfg.dataset):
            recorded = json.dumps(recorded_info(data), indent=1)
            together(lambda: atomic_write_text(Path(cfg.out_dir) / DATA_INFO, recorded))
        train_images, test_images = data.train, data.test
        joint_steps = run_steps(cfg, len(train_images), accelerator.num_processes)
        phase_two = phase_config(cfg, "decoder", joint_steps)
        decoder_steps = phase_steps(phase_two, len(train_images), accelerator)
        phase_three = phase_config(cfg, "refiner", joint_steps + decoder_steps)
        refiner_steps = phase_steps(phase_three, len(train_images), accelerator)
        task = make_task(cfg, train_images, test_images)
        refiner_part = (f"{refiner_steps} steps of the refiner (each about as long at the default width)"
                        if phase_three else "")
        decoder_part = f"{decoder_steps} steps of the decoder alone (each about as long, with the discriminator)"
        task.after = " and ".join(part for part in (decoder_part if phase_two else "", refiner_part) if part)
        metrics = fit(cfg, task, accelerator, last=phase_two is None and phase_three is None)
        # the codes the later phases read (the encoder and codebook are frozen from here): encoded once
        train_codes = encode_images(task.model, train_images) if phase_two or phase_three else None
        if phase_two is not None:
            accelerator.print(f"tokenizer: {cfg.decoder_epochs} epochs of the decoder alone, encoder and codebook "
                              f"frozen, in {phase_two.out_dir}")
            second = decoder_task(task, train_codes, train_images, test_images, phase_two)
            second.after = refiner_part
            decoder_metrics = fit(phase_two, second, accelerator, last=False)
            metrics = finish_phase(cfg, task.model.state_dict(), metrics, decoder_metrics, "decoder", joint_steps,
                                   cfg.epochs)
        if phase_three is not None:
            accelerator.print(f"tokenizer: {cfg.refiner_epochs} epochs of the refiner, which learns to draw what a code "
                              f"grid leaves open, in {phase_three.out_dir}")
            refiner = RefinerTask(task, train_codes, train_images, test_images, phase_three)
            refiner_metrics = fit(phase_three, refiner.task(), accelerator, last=False)
            metrics = finish_phase(cfg, refiner.export(refiner.refiner), metrics, refiner_metrics, "refiner",
                                   joint_steps + decoder_steps, cfg.epochs + cfg.decoder_epochs * bool(phase_two))
        if phase_two is not None or phase_three is not None:
            accelerator.end_training()
        return metrics


def phase_steps(phase: TokenizerConfig | None, n_train: int, accelerator) -> int:
    """Steps a later phase will run (0: none), checked against its run folder before any training."""
    if phase is None:
        return 0
    find_resume_point(phase, "tokenizer")
    steps = run_steps(phase, n_train, accelerator.num_processes)
    return min(steps, phase.max_steps or steps)


def finish_phase(cfg, weights: dict[str, torch.Tensor], before: dict, phase_metrics: dict, phase: str,
                 steps_before: int, epochs_before: int) -> dict:
    """A later phase's weights become the run's, and its last evaluation joins the run's own (the
    figures it does not measure kept from before), counted from the run's start; on the main
    process (the others return {}, as fit does)."""
    def on_main() -> dict:
        kept = {k: v for k, v in before.items() if not k.startswith("train_")}   # another phase's training losses
        merged = {**kept, **phase_metrics, "phase": phase, "step": steps_before + phase_metrics["step"],
                  "epoch": round(epochs_before + phase_metrics["epoch"], 3),
                  "best_step": steps_before + phase_metrics["best_step"],
                  **{k: round(before[k] + phase_metrics[k], 2) for k in ("time_s", "train_s")
                     if k in before and k in phase_metrics}}
        out = Path(cfg.out_dir)
        save_run_weights(out, weights, "tokenizer")
        append_metrics(out / "metrics.jsonl", merged)   # a resume of phase one truncates it away first
        return merged
    return together(on_main) or {}


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
