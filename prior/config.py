"""PriorConfig: the shared training keys plus the GPT's shape, one dataclass."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from common.config import ConfigError, TrainConfig
from prior.model import PriorShape


# With augmentation, dropout 0.1 measured 4% better held out than 0.2 on the emoji, but its gap (0.34
# bits/token) set off the run's own warning; 0.2 sat on the line (0.30 on one CPU, 0.31 on another),
# 0.25 keeps it under on both sizes (0.28-0.29) for 2% more held-out loss (EXPERIMENTS.md).
SMALL_SET, SMALL_SET_DROPOUT = 20_000, 0.25
# A set so small that ten passes are under half an epoch of MNIST's size (prior/train.py) is
# passed over more than ten times an epoch, and regularised harder: more dropout, more of each
# pass distorted.
TINY_SET_DROPOUT, TINY_SET_AUGMENT_SHARE = 0.3, 0.8
DEFAULT_AUGMENT_SHARE = 0.5


@dataclass
class PriorConfig(TrainConfig, PriorShape):
    out_dir: str = "runs/prior"           # the run folder
    tokenizer: str = "runs/tokenizer"     # run dir of the frozen stage-one model
    dataset: str = ""                     # "" = the tokenizer's data set (given, it must name the same one)
    epochs: int = 2                       # passes over the 60k code grids
    batch_size: int = 128
    lr: float = 4e-3                      # peak learning rate (Muon's and AdamW's)
    weight_decay: float = 0.01            # on weight matrices and embeddings only
    dropout: float = -1.0                 # residual dropout in training; -1: by the set (SMALL_SET_DROPOUT for a
                                          # user's set of fewer than SMALL_SET training images, TINY_SET_DROPOUT
                                          # for a tiny one: they measured better there), else 0
    warmup_steps: int = 100               # linear warmup, in steps of one process (N processes: /N, the same samples)
    augment: bool | None = None    # each pass over the set: fresh code grids of slightly distorted training
                                   # pictures; none (the default): on for a user's set of fewer than SMALL_SET
    augment_share: float = -1.0    # share of the pictures distorted on each augmented pass; -1: by the set
                                   # (TINY_SET_AUGMENT_SHARE on a tiny user's set, else DEFAULT_AUGMENT_SHARE)
    augment_flip: bool = False     # augment: mirror half of those left to right (photos, icons; never digits or text)
    augment_strength: float = 1.0  # augment: the distortions' size, times prior/data.py's (1.5 px, 8 degrees, 8%)
    z_loss: float = 0.0            # weight of log(sum(exp(logits)))^2, which keeps the logits from drifting
    optimizer: Literal["adamw", "muon"] = "muon"   # muon: Muon on the blocks' weight matrices, AdamW on the rest
    lr_schedule: Literal["cosine", "wsd"] = "wsd"   # warmup-stable-decay

    # Switches that lost their ablation left the code (figures: docs/EXPERIMENTS.md, "prior levers" and
    # "augmentation"); a saved run still names them, at the value that now is the only behaviour.
    RETIRED: ClassVar[dict] = {"zero_init": False, "tie_embeddings": False, "label_smoothing": 0.0,
                               "token_dropout": 0.0, "augment_mode": "warp", "skip_bad_images": False}
    RETIRED_WHY: ClassVar[dict] = {"skip_bad_images": "the prior reads the data set as its tokenizer prepared it, "
                                                      "skipped files included"}
    RENAMED: ClassVar[dict] = {"vocab_size": "num_codes"}   # old name -> name: saved runs still read
    # A run saved before a key existed ran without it: the values such a run used (the defaults
    # before the adopted recipe moved here from configs/prior.yaml).
    ABSENT_IN_OLD_RUNS: ClassVar[dict] = {"rope": "none", "activation": "gelu", "optimizer": "adamw",
                                          "lr_schedule": "cosine", "n_layer": 4, "n_embd": 128, "lr": 2e-3,
                                          "eval_every": 0, "grid": 7}   # MNIST's 7x7: the only grid then

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.num_codes == 0 or self.num_codes >= 2, "num_codes", "must be 0 (from the tokenizer) or >= 2"),
            (self.n_layer >= 1, "n_layer", "must be >= 1"),
            (self.n_head >= 1 and self.n_embd % self.n_head == 0, "n_head", "must divide n_embd"),
            (self.n_embd >= 8, "n_embd", "must be >= 8"),
            (self.dropout == -1 or 0 <= self.dropout < 1, "dropout", "must be in [0, 1), or -1 (by set size)"),
            (0 <= self.label_dropout < 1, "label_dropout", "must be in [0, 1)"),
            (self.augment_share == -1 or 0 <= self.augment_share <= 1, "augment_share",
             "must be in [0, 1], or -1 (by the set)"),
            (self.augment is not False or not self.augment_token, "augment_token", "needs augment=true"),
            (self.augment is not False or not self.augment_flip, "augment_flip", "needs augment=true"),
            (0 < self.augment_strength <= 5, "augment_strength", "must be in (0, 5] (5: 40 degrees, 40% larger)"),
            (self.augment is not False or self.augment_strength == 1, "augment_strength", "needs augment=true"),
            (self.z_loss >= 0, "z_loss", "must be >= 0"),
            (self.rope == "none" or (self.n_embd // max(self.n_head, 1)) % 4 == 0, "rope",
             "needs a head width (n_embd / n_head) divisible by 4"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} {message}")

    def distorted_share(self) -> float:
        """augment_share, or where it is unresolved (-1: no data set yet) DEFAULT_AUGMENT_SHARE."""
        return DEFAULT_AUGMENT_SHARE if self.augment_share < 0 else self.augment_share

    def shape(self) -> PriorShape:
        shape = PriorShape(**{f.name: getattr(self, f.name) for f in fields(PriorShape)})
        return replace(shape, dropout=max(shape.dropout, 0.0))   # -1 unresolved (no data set yet): none
