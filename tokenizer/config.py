"""TokenizerConfig: the shared training keys plus the network's shape, one dataclass."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from common.config import ConfigError, TrainConfig
from tokenizer.model import VQVAEShape
from tokenizer.pictures import MAX_PIXELS


@dataclass
class TokenizerConfig(TrainConfig, VQVAEShape):
    out_dir: str = "runs/tokenizer"  # the run folder
    skip_bad_images: bool = False    # dataset=PATH: leave unreadable image files out (counted) instead of stopping
    max_image_pixels: int = MAX_PIXELS   # dataset=PATH: a picture declaring more pixels is a bad file (a decompression bomb)
    epochs: int = 2                  # epochs of epoch_samples (MNIST, Fashion: their 60k training pictures)
    batch_size: int = 64
    lr: float = 2e-3                 # Adam peak learning rate
    warmup_steps: int = 20           # linear warmup, in steps of one process (N processes: /N, the same samples)
    decoder_epochs: int = 2          # then this many epochs of the decoder alone on the frozen codes (same codes, sharper images)
    decoder_lr: float = 1e-3         # peak learning rate of those epochs (no warmup, cosine decay)
    decoder_loss: Literal["mse", "gan"] = "gan"   # gan: MSE plus a patch discriminator's hinge loss (sharper strokes)
    decoder_gan_weight: float = -1.0   # gan: weight of the adversarial term beside the MSE; -1: by the set
    # (tokenizer/train.py gan_weight_for: MNIST's 0.1 on the built-in sets, 0.02 on a user's)
    decoder_gan_warmup: int = 200    # gan: steps (of one process; N processes: /N) over which that weight ramps up from 0
    decoder_disc_lr: float = 2e-4    # gan: the discriminator's Adam learning rate (constant)
    decoder_disc_channels: int = 32  # gan: width of the discriminator's first layer
    decoder_disc_whole_image: bool = True    # gan: a whole-picture head beside the patch head (what a classifier sees)
    decoder_seed: int = 0            # added to seed for the decoder phase: another draw of the phase alone
    decoder_weight_average: float = 0.999   # the decoder phase's weight_average: > 0, its EMA is what ships
    decoder_r1: float = 0.0          # gan: weight gamma of the R1 gradient penalty on real pictures (0 = none)
    decoder_psnr_budget: float = -1.0   # gan: held-out PSNR (dB) the phase may cost against the joint phase's: the
    # last weights within it ship, and it stops after `patience` evaluations beyond it; 0 = no limit (the last
    # weights ship); -1: by the set (tokenizer/train.py psnr_budget_for: 0.5 on a user's set, none on the built-in)
    refiner_epochs: int = -1         # then this many epochs of the refiner alone (tokenizer/refiner.py): it learns to
    # draw what a code grid leaves open, where the decoder paints an average; 0 = none; -1: by the grid
    # (tokenizer/train.py refiner_epochs_for: 2, none over codes at half the pictures' side)
    refiner_width: int = 16          # the refiner's width (its first level's channels): 16 drew within 1-2 points of 32 in half the time
    refiner_lr: float = 2e-3         # the refiner's peak learning rate (cosine decay; its weight average ships)

    RENAMED: ClassVar[dict] = {"decoder_disc_whole_digit": "decoder_disc_whole_image"}   # old name -> name
    # A run saved before a key existed ran without it: the values such a run used (the
    # defaults before the adopted recipe moved here from configs/tokenizer.yaml).
    ABSENT_IN_OLD_RUNS: ClassVar[dict] = {"codebook_size": 512, "epochs": 3, "decoder_epochs": 0, "decoder_loss": "mse",
                                          "decoder_disc_whole_image": False, "decoder_weight_average": 0.0,
                                          "upsample": "transposed", "image_size": 28, "channels": 1,   # MNIST's then
                                          "refiner_epochs": 0, "refiner_width": 0, "decoder_psnr_budget": 0.0}

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.dataset.strip() != "", "dataset", "must be mnist, fashion or a path"),
            (self.max_image_pixels >= 1, "max_image_pixels", "must be >= 1"),
            (self.codebook_size >= 2, "codebook_size", "must be >= 2"),
            (self.embedding_dim >= 1, "embedding_dim", "must be >= 1"),
            (self.hidden_channels >= 1, "hidden_channels", "must be >= 1"),
            (self.res_blocks >= 0, "res_blocks", "must be >= 0"),
            (self.decoder_epochs >= 0, "decoder_epochs", "must be >= 0 (0 = none)"),
            (self.decoder_lr > 0, "decoder_lr", "must be > 0"),
            (self.decoder_gan_weight >= 0 or self.decoder_gan_weight == -1, "decoder_gan_weight",
             "must be >= 0 (0 = MSE only), or -1 (by the set)"),
            (self.decoder_gan_warmup >= 0, "decoder_gan_warmup", "must be >= 0 steps"),
            (self.decoder_disc_lr > 0, "decoder_disc_lr", "must be > 0"),
            (self.decoder_disc_channels >= 1, "decoder_disc_channels", "must be >= 1"),
            (0 <= self.decoder_weight_average < 1, "decoder_weight_average", "must be in [0, 1) (0 = off)"),
            (self.decoder_r1 >= 0, "decoder_r1", "must be >= 0 (0 = no penalty)"),
            (self.decoder_psnr_budget >= 0 or self.decoder_psnr_budget == -1, "decoder_psnr_budget",
             "must be >= 0 dB (0 = no limit), or -1 (by the set)"),
            (self.refiner_epochs >= -1, "refiner_epochs", "must be >= 0 (0 = no refiner), or -1 (by the grid)"),
            (self.refiner_width >= 1 or self.refiner_epochs == 0, "refiner_width",
             "must be >= 1 when refiner_epochs > 0"),
            (self.refiner_lr > 0, "refiner_lr", "must be > 0"),
            (0 <= self.refiner_start < 1, "refiner_start", "must be in [0, 1): where on the path from noise (0) "
                                                           "to picture (1) the refiner's steps start"),
            (self.refiner_steps >= 0, "refiner_steps", "must be >= 0 (0 = the decoder's picture alone)"),
            (self.beta >= 0, "beta", "must be >= 0"),
            (0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)"),
            (self.dead_code_steps >= 0, "dead_code_steps", "must be >= 0 (0 = never restart)"),
            (len(self.fsq_levels) >= 1 and all(n >= 2 for n in self.fsq_levels), "fsq_levels",
             "must be a list of levels, each >= 2, like [8, 5, 5, 5]"),
            (self.channels in (0, 1, 3), "channels", "must be 1 (grey), 3 (colour) or 0 (from the data)"),
            (0 <= self.downsamples <= 5, "downsamples", "must be 1-5 halvings, or 0 (from image_size)"),
            (self.image_size == 0 or (self.image_size >= 8 and self.image_size % 2 ** self.halvings == 0),
             "image_size", f"must be 0 (from the data) or at least 8 and a multiple of 2**downsamples "
                           f"({2 ** self.halvings}): 28, 32, 64, ..."),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} {message}")

    def shape(self) -> VQVAEShape:
        """The network a finished run holds (a refiner only where its phase runs)."""
        shape = VQVAEShape(**{f.name: getattr(self, f.name) for f in fields(VQVAEShape)})
        return replace(shape, refiner_width=self.refiner_width if self.refiner_epochs else 0)
