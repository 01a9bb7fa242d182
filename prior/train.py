"""Train the Transformer prior over a frozen tokenizer's 7x7 codes (stage two).

    accelerate launch prior/train.py [--config FILE] [key=value ...]
    python prior/train.py tokenizer=runs/tokenizer class_conditional=false

Defaults: prior.config.PriorConfig, overridden by configs/prior.yaml, then key=value.
Writes runs/prior/{config.yaml, model.safetensors, metrics.jsonl, checkpoints/,
samples.png, loss.png}. Run it again to resume an interrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch

from common.config import ConfigError, load_config
from common.grid import sequence_to_grid
from common.plots import save_curves, save_image_grid
from common.tracking import make_accelerator
from common.errors import run_main
from common.distributed import together
from common.runs import run_lock
from common.training import Task, evaluation_subset, find_resume_point, fit
from prior.config import (DEFAULT_AUGMENT_SHARE, SMALL_SET, SMALL_SET_DROPOUT, TINY_SET_AUGMENT_SHARE,
                          TINY_SET_DROPOUT, PriorConfig)
from prior.data import augmented_codes, load_code_grids
from prior.model import GPT
from prior.muon import MuonWithAdamW
from tokenizer import load_tokenizer
from tokenizer.data import data_root, epoch_samples_for, is_own_dataset, load_run_dataset

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "prior.yaml"
OVERFIT_BITS = 0.3   # held-out minus training NLL, bits/token, past which the run warns that it memorises
OWN_PASSES = 10      # a user's set: at most this many passes over its code grids an epoch,
OWN_MIN_EPOCH = 30_000   # and at least this many grids (a tiny set: its regularisers in prior/config.py)


def resolve_num_codes(cfg: PriorConfig, num_codes: int) -> PriorConfig:
    """Take the vocabulary from the tokenizer, or refuse a mismatch in one line."""
    if cfg.num_codes == 0:
        return dataclasses.replace(cfg, num_codes=num_codes)
    if cfg.num_codes != num_codes:
        raise ConfigError(f"num_codes={cfg.num_codes} but the tokenizer in {cfg.tokenizer} has {num_codes} codes; "
                          f"drop num_codes= or point tokenizer= at a matching run")
    return cfg


@torch.no_grad()
def test_nll_bits(model: GPT, codes: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> float:
    """Mean negative log-likelihood of the test codes, in bits per token.

    Small batches keep the (B, T, K) logits in cache (docs/EXPERIMENTS.md)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(codes), batch_size):
        c, y = codes[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        logits, _ = model(c, y)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), c.flatten(),
                                                   reduction="sum").item()
        count += c.numel()
    return total / count / math.log(2)


def make_task(cfg: PriorConfig, tokenizer, grids: dict, train_images: torch.Tensor | None = None,
              class_names: list[str] | None = None) -> Task:
    """train_images (uint8, the images behind grids["train_codes"]) are needed with augment=true."""
    return PriorTask(cfg, tokenizer, grids, train_images, class_names).task()


class PriorTask:
    """The prior's part of the training loop: its loss, its held-out and training NLL, its
    plots, its optimiser and (augment) its fresh grids each pass over the set."""

    def __init__(self, cfg: PriorConfig, tokenizer, grids: dict, train_images: torch.Tensor | None,
                 class_names: list[str] | None):
        shape = cfg.shape()
        torch.manual_seed(cfg.seed)
        self.model = GPT(shape)
        self.cfg, self.tokenizer, self.train_images = cfg, tokenizer, train_images
        self.class_names = class_names or [str(c) for c in range(cfg.num_classes)]
        self.null_class, self.distorted, self.tokens = shape.null_class, shape.distorted, shape.seq_len
        self.train_codes, self.train_labels = grids["train_codes"].long(), grids["train_labels"]
        self.test_codes, self.test_labels = grids["test_codes"].long(), grids["test_labels"]

    def task(self) -> Task:
        return Task(stage="prior", model=self.model, train_tensors=(self.train_codes, self.train_labels),
                    loss_fn=self.loss, evaluate=self.evaluate, make_optimizer=self.make_optimizer, report=self.report,
                    pass_tensors=self.pass_tensors if self.cfg.augment else None, score="test_nll_bits_per_token",
                    overfit_warning=self.overfit_warning)

    def loss(self, m, batch):
        codes, labels = batch
        null = torch.where(labels >= self.distorted, self.null_class + self.distorted, self.null_class)  # stays distorted
        if self.cfg.class_conditional:   # label dropout teaches the same model the unconditional task
            drop = torch.rand(labels.shape, device=labels.device) < self.cfg.label_dropout
            labels = torch.where(drop, null, labels)
        else:
            labels = null
        logits, _ = m(codes, labels)
        logits = logits.flatten(0, 1).float()
        loss = torch.nn.functional.cross_entropy(logits, codes.flatten())
        if self.cfg.z_loss > 0:
            return loss + self.cfg.z_loss * logits.logsumexp(-1).square().mean(), {}
        return loss, {}

    def nll(self, m, codes, labels, limit: int | None, conditional: bool) -> float:
        """Bits per token on `limit` evenly spaced grids (None: all), with their labels or none."""
        rows = evaluation_subset(len(codes), limit)
        labels = labels[rows] if conditional else torch.full_like(labels[rows], self.null_class)
        return test_nll_bits(m, codes[rows], labels)

    def evaluate(self, m, limit: int | None) -> dict:
        """Held-out NLL (on `limit` grids; None: all), and the training set's measured the same
        way: eval mode (no dropout), the grids as encoded (no augmentation)."""
        cfg = self.cfg
        bits = self.nll(m, self.test_codes, self.test_labels, limit, cfg.class_conditional)
        result = {"test_nll_bits_per_token": bits, "test_nll_bits_per_image": bits * self.tokens,
                  "train_nll_bits_per_token": self.nll(m, self.train_codes, self.train_labels,
                                                       limit or cfg.eval_samples, cfg.class_conditional),
                  "uniform_bits_per_image": self.tokens * math.log2(cfg.num_codes)}
        if cfg.class_conditional:
            result["test_nll_bits_per_image_unconditional"] = \
                self.nll(m, self.test_codes, self.test_labels, limit, False) * self.tokens
        return result

    def overfit_warning(self, result: dict) -> str | None:
        gap = result["test_nll_bits_per_token"] - result["train_nll_bits_per_token"]
        if gap > OVERFIT_BITS:
            return (f"training and held-out loss part at step {result['step']}: {result['train_nll_bits_per_token']:.3f} "
                    f"bits/token on training grids, {result['test_nll_bits_per_token']:.3f} held out (gap {gap:.2f} > "
                    f"{OVERFIT_BITS}): it learns the training set by heart; the best held-out weights ship; more "
                    f"dropout= or more distortion (augment=true, augment_share=, augment_strength=) narrows the gap")
        return None

    def report(self, out_dir: Path, m, history: list[dict], metrics: list[dict]) -> None:
        cfg, device = self.cfg, next(m.parameters()).device
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.class_conditional:   # one row per class (the first ten)
            labels = torch.arange(min(cfg.num_classes, 10), device=device).repeat_interleave(8)
        else:
            labels = torch.full((64,), self.null_class, device=device)
        grids = sequence_to_grid(m.generate(labels, generator=gen), height=cfg.grid)
        images = self.tokenizer.to(device).decode(grids)
        save_image_grid(out_dir / "samples.png", images, nrow=8, title=f"samples at step {metrics[-1]['step']}",
                        row_labels=self.class_names[:10] if cfg.class_conditional else None)
        if history:
            steps = [h["step"] for h in history]
            curves = {"train_loss (nats/token)": (steps, [h["train_loss"] for h in history]),
                      "test (nats/token)": ([r["step"] for r in metrics],
                                            [r["test_nll_bits_per_token"] * math.log(2) for r in metrics])}
            save_curves(out_dir / "loss.png", curves, title="prior loss")

    def make_optimizer(self, m) -> torch.optim.Optimizer:
        # Weight decay on matrices only (nanoGPT): not on biases, norms or position embeddings.
        def decays(name, p):
            return p.dim() >= 2 and not name.endswith(("pos_emb", "row_emb", "col_emb"))
        cfg, named = self.cfg, list(m.named_parameters())
        if cfg.optimizer == "muon":
            return MuonWithAdamW(named, cfg.lr, cfg.weight_decay, decays)
        decay = [p for n, p in named if decays(n, p)]
        no_decay = [p for n, p in named if not decays(n, p)]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    def pass_tensors(self, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes, which = augmented_codes(self.tokenizer, self.train_images, self.train_codes, self.cfg.seed,
                                       draw, self.cfg.distorted_share(), self.cfg.augment_flip,
                                       self.cfg.augment_strength)
        labels = self.train_labels.clone()
        if self.cfg.augment_token:
            labels[which] += self.distorted
        return codes.long(), labels


def resolve_data(cfg: PriorConfig, tokenizer) -> tuple[PriorConfig, str, dict]:
    """The prior's vocabulary, grid, classes and data set, all from its tokenizer run; a
    dataset= that names another set is refused in one line. Returns (cfg, dataset, its info)."""
    from tokenizer import tokenizer_data
    dataset, info = tokenizer_data(cfg.tokenizer)
    if cfg.dataset and not same_dataset(cfg.dataset, dataset):
        raise ConfigError(f"dataset={cfg.dataset}, but its tokenizer {cfg.tokenizer} was trained on "
                          f"dataset={dataset}; drop dataset= (the prior reads its tokenizer's)")
    classes = len(info["class_names"] or [])
    n_train = min(info["train_size"], cfg.train_subset or info["train_size"])
    cfg = dataclasses.replace(resolve_num_codes(cfg, tokenizer.num_codes), dataset=dataset, grid=tokenizer.grid,
                              num_classes=classes, class_conditional=cfg.class_conditional and classes > 0,
                              epoch_samples=prior_epoch_samples(dataset, cfg.epoch_samples, n_train),
                              dropout=dropout_for(dataset, cfg.dropout, n_train),
                              augment=augment_for(dataset, cfg, n_train),
                              augment_share=augment_share_for(dataset, cfg.augment_share, n_train))
    return cfg, dataset, info


def prior_epoch_samples(dataset: str, configured: int, n_train: int) -> int:
    """epoch_samples as the tokenizer counts them, but on a user's set at most OWN_PASSES passes
    over it (a prior memorises a small set long before 60,000 samples an epoch are done) and at
    least OWN_MIN_EPOCH samples (ten passes over 738 icons were 57 steps an epoch: too few to learn)."""
    samples = epoch_samples_for(dataset, configured)
    if configured or not is_own_dataset(dataset):
        return samples
    return min(samples, max(OWN_PASSES * n_train, OWN_MIN_EPOCH))


def small_own_set(dataset: str, n_train: int) -> bool:
    """A user's set of fewer than SMALL_SET training images: where a prior memorises, and the
    regularisers below are on by default."""
    return is_own_dataset(dataset) and n_train < SMALL_SET


def tiny_own_set(dataset: str, n_train: int) -> bool:
    """A user's set whose epoch is more than OWN_PASSES passes (fewer than 3,000 training images):
    the regularisers below are stronger there."""
    return is_own_dataset(dataset) and OWN_PASSES * n_train < OWN_MIN_EPOCH


def dropout_for(dataset: str, configured: float, n_train: int) -> float:
    """The configured dropout, or for -1 one chosen by the set: TINY_SET_DROPOUT on a tiny user's
    set, SMALL_SET_DROPOUT on one of fewer than SMALL_SET training images, where a prior
    memorises, else none."""
    if configured >= 0:
        return configured
    if tiny_own_set(dataset, n_train):
        return TINY_SET_DROPOUT
    return SMALL_SET_DROPOUT if small_own_set(dataset, n_train) else 0.0


def augment_share_for(dataset: str, configured: float, n_train: int) -> float:
    """The configured augment_share, or for -1 TINY_SET_AUGMENT_SHARE on a tiny user's set, else
    DEFAULT_AUGMENT_SHARE."""
    if configured >= 0:
        return configured
    return TINY_SET_AUGMENT_SHARE if tiny_own_set(dataset, n_train) else DEFAULT_AUGMENT_SHARE


def augment_for(dataset: str, cfg: PriorConfig, n_train: int) -> bool:
    """The configured augment, or for none (the default) one chosen by the set: on for a user's
    set of fewer than SMALL_SET training images (held-out loss and the gap measured better there)
    or where augment_flip or augment_token asks for it, else off (on MNIST the distortions leaked
    into the samples)."""
    if cfg.augment is not None:
        return cfg.augment
    return small_own_set(dataset, n_train) or cfg.augment_flip or cfg.augment_token


def same_dataset(given: str, trained: str) -> bool:
    if not (is_own_dataset(given) and is_own_dataset(trained)):
        return given == trained
    return Path(given).expanduser().resolve() == Path(trained).expanduser().resolve()


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(PriorConfig, sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG, usage=__doc__)
    tokenizer = load_tokenizer(cfg.tokenizer)          # refuses a missing run in one line
    cfg, dataset, info = resolve_data(cfg, tokenizer)
    if not info["class_names"]:
        print(f"prior: dataset={dataset} has no classes: the prior is unconditional", file=sys.stderr)
    accelerator = make_accelerator(cfg.tracker)   # first: every step below is agreed by all processes
    with run_lock(cfg.out_dir):               # one writer per run folder
        find_resume_point(cfg, "prior")
        root = data_root(cfg.data_root)
        tokenizer.to(accelerator.device)

        def prepare():   # data and code cache are per machine: its first process makes them
            data = load_run_dataset(dataset, info, root, cfg.tokenizer, cfg.train_subset)
            return data, load_code_grids(tokenizer, data, dataset, Path(cfg.out_dir) / "codes", cfg.train_subset)
        data, grids = together(prepare, on="local-first")
        train_images = data.train if cfg.augment else None
        return fit(cfg, make_task(cfg, tokenizer, grids, train_images, info["class_names"]), accelerator)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
