"""Sampling: token grids from the prior, decoded into images by the tokenizer.

    from sampling import generate
    out = generate(n=64, label=None, temperature=1.0, top_k=None, top_p=None, cfg=0.0, seed=0)
    out["images"]   # float [n,C,H,W] in [0,1];  out["tokens"]: long [n,h,w];  out["labels"]: long [n] or None
                    # (MNIST: [n,1,28,28] and [n,7,7])

label=None (digit=None: the same keyword) samples p(x) without a chosen class. From a class-conditional prior
that is ancestral sampling, p(x) = sum_c p(c) p(x|c), with p(c) each class's share of the
training pictures where the tokenizer run recorded them (a user's set, whose classes may
differ 100-fold), else uniform (MNIST's classes are 9.0-11.2% each): every sample draws
its class, then its codes. The
model's own unconditional branch (the NULL_CLASS token, learnt from only the ~10%
of examples whose label was dropped) is label="null": measurably worse (README).

keep_likeliest=s < 1 filters by the prior's own judgement: for each group of samples
that share a condition (a digit, or a completion's kept rows), it draws
ceil(count / s) candidates and keeps the `count` the prior finds likeliest
(teacher-forced, unguided). Each digit keeps its share; ranking all digits together
would let the simple ones (1s) crowd out the rest.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch

from common.checkpoint import CheckpointError
from common.grid import grid_to_sequence, sequence_to_grid
from prior.model import CFG_SCHEDULES, NUM_CLASSES


MAX_SEED = 2**63 - 1   # torch.Generator.manual_seed's range (a larger one overflows inside it)


def check_sampling_args(n: int, temperature: float, top_k, top_p, label, batch_size: int,
                        cfg_schedule: str = "constant", keep_likeliest: float = 1.0, seed: int = 0,
                        cfg: float = 0.0, refine: int | None = None) -> None:
    """Raise ValueError (one line) before anything heavy is loaded."""
    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, int) or refine < 0):
        raise ValueError(f"refine={refine!r}: the refiner's steps must be a whole number >= 0 (0: the decoder alone)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r}: must be a whole number from 0 to {MAX_SEED}")
    if not 0 <= cfg < math.inf:   # also refuses NaN
        raise ValueError(f"cfg={cfg}: guidance must be a finite number >= 0 (0: off)")
    if not 0 < keep_likeliest <= 1:   # also refuses NaN
        raise ValueError(f"keep_likeliest={keep_likeliest}: must be in (0, 1] (1 keeps every sample drawn)")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule={cfg_schedule!r}: expected one of {', '.join(CFG_SCHEDULES)}")
    if n <= 0:
        raise ValueError(f"n={n}: need at least one sample")
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature={temperature}: must be a finite number > 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if label in (NULL_LABEL, ALL_CLASSES):
        return
    for d in label if isinstance(label, (list, tuple)) else ([] if label is None else [label]):
        if not (isinstance(d, int) and not isinstance(d, bool) and d >= 0):
            raise ValueError(f"label={d!r}: must be a class number >= 0 (MNIST: a digit 0-9)")


NULL_LABEL = "null"   # label= value for the prior's null class token
ALL_CLASSES = "all"   # label= value for every class in turn


def check_classes(label, num_classes: int, class_names: list[str] | None, prior) -> None:
    """A class the prior does not have is one ValueError naming the ones it has."""
    asked = [] if label in (None, NULL_LABEL, ALL_CLASSES) else label if isinstance(label, (list, tuple)) else [label]
    wrong = [d for d in asked if d >= num_classes]
    if wrong:
        names = class_names or [str(c) for c in range(num_classes)]
        listed = ", ".join(f"{i} ({name})" if name != str(i) else str(i) for i, name in enumerate(names[:12]))
        raise ValueError(f"label={wrong[0]}: the prior {prior} has {num_classes} classes: {listed}"
                         + (", ..." if num_classes > 12 else ""))


def labels_for(n: int, label, generator: torch.Generator | None = None,
               num_classes: int = NUM_CLASSES, class_counts: list[int] | None = None) -> torch.Tensor | None:
    """None -> a random class per sample, in proportion to class_counts (uniform without them);
    "null" -> no label (the null class); "all" -> every class in turn; an int -> all that class;
    a list -> cycled across the n samples."""
    if label == NULL_LABEL:
        return None
    if label is None:
        device = generator.device if generator is not None else "cpu"
        if class_counts:
            weights = torch.tensor(class_counts, dtype=torch.float, device=device)
            return torch.multinomial(weights, n, replacement=True, generator=generator).cpu()
        return torch.randint(0, num_classes, (n,), generator=generator, device=device).cpu()
    if label == ALL_CLASSES:
        label = list(range(num_classes))
    classes = list(label) if isinstance(label, (list, tuple)) else [label]
    return torch.tensor([classes[i % len(classes)] for i in range(n)], dtype=torch.long)


class Models(NamedTuple):
    gpt: torch.nn.Module      # the prior (eval mode)
    prior_cfg: object         # its PriorConfig
    tokenizer: torch.nn.Module
    prior_dir: Path           # the run folders they came from (a shipped run's name resolved)
    tokenizer_dir: Path
    dataset: str = "mnist"    # what the tokenizer learnt, and its classes' names (None: unlabelled)
    class_names: list | None = None
    class_counts: list | None = None   # training pictures per class, where the run recorded them


def check_device(device) -> torch.device:
    """The device, or a one-line ValueError: a name torch does not know, or one this machine lacks."""
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: not a device name; use cpu, cuda, cuda:1, mps, ...") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS (Apple GPU) here; use --device cpu")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: vqgen runs on cpu, cuda or mps")
    return chosen


def read_npz(path: Path, what: str, required: tuple[str, ...] = ("images",)) -> dict:
    """The arrays of an .npz, never unpickled; an unreadable, truncated or incomplete file is one
    ValueError that names it (`what`: how the user gave it, e.g. '--complete FILE')."""
    import zipfile
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{what}: not a readable .npz ({str(err).splitlines()[0][:120]}); "
                         "it may be truncated: write it again") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{what}: no {', '.join(map(repr, missing))} array in it (has: {', '.join(arrays) or 'none'})")
    if "images" in required and len(arrays["images"]) == 0:
        raise ValueError(f"{what}: its 'images' array is empty")
    return arrays


def load_models(prior_dir="runs/prior", tokenizer_dir=None, device="cpu") -> Models:
    """Models(gpt, prior_cfg, tokenizer, prior_dir, tokenizer_dir), checking that the two
    stages belong together. Either location may be a shipped run's name (common.pretrained)."""
    from common.pretrained import find_run
    from prior import load_prior
    from tokenizer import load_tokenizer
    check_device(device)
    gpt, cfg = load_prior(prior_dir, device)
    tokenizer_dir = tokenizer_dir or cfg.tokenizer
    tokenizer = load_tokenizer(tokenizer_dir, device)
    if tokenizer.num_codes != cfg.num_codes:
        raise CheckpointError(f"prior {prior_dir} has num_codes={cfg.num_codes} but tokenizer {tokenizer_dir} "
                              f"has {tokenizer.num_codes} codes; pass the tokenizer it was trained on")
    if cfg.grid != tokenizer.grid:
        raise CheckpointError(f"prior {prior_dir} writes {cfg.grid}x{cfg.grid} code grids but tokenizer {tokenizer_dir} "
                              f"reads {tokenizer.grid}x{tokenizer.grid}; pass the tokenizer it was trained on")
    from tokenizer import tokenizer_data
    dataset, info = tokenizer_data(tokenizer_dir)
    return Models(gpt, cfg, tokenizer, find_run(prior_dir, "prior"), find_run(tokenizer_dir, "tokenizer"),
                  dataset, info["class_names"], info.get("train_class_counts"))


@torch.no_grad()
def generate(n: int = 64, label=None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, cfg: float = 0.0, seed: int = 0, prior: str | Path = "runs/prior",
             tokenizer: str | Path | None = None, device: str = "cpu", batch_size: int = 2048,
             keep: torch.Tensor | None = None, models=None, cfg_schedule: str = "constant",
             keep_likeliest: float = 1.0, refine: int | None = None, **digit) -> dict:
    """Sample n images, float [n,C,H,W]. label: a class, a list, "all", "null" or None (module doc;
    digit= is the same keyword). keep: optional long [n,R,w] code rows to hold fixed (completion).
    cfg_schedule: "constant" or "linear" (guidance rising from 0 to 2 * cfg along the sequence).
    keep_likeliest: draw more and keep this share of each condition's likeliest (module doc).
    refine: the refiner's steps for the pictures (None: the tokenizer's refiner_steps; 0: the
    decoder's average picture of each code grid; VQVAE.draw)."""
    if digit:   # digit= is label='s name for MNIST users
        if set(digit) != {"digit"}:
            raise TypeError(f"generate() got an unexpected keyword argument {sorted(set(digit) - {'digit'})[0]!r}")
        if label is not None:
            raise TypeError("generate() takes label= or digit= (the same setting), not both")
        label = digit["digit"]
    check_sampling_args(n, temperature, top_k, top_p, label, batch_size, cfg_schedule, keep_likeliest, seed, cfg,
                        refine)
    models = models or load_models(prior, tokenizer, device)
    gpt, prior_cfg, tok = models[:3]
    prior = getattr(models, "prior_dir", prior)   # messages name the prior in use, not the default
    device = next(gpt.parameters()).device   # given models may live anywhere
    shape = prior_cfg.shape()
    if not prior_cfg.class_conditional:
        why = "its data set has no classes" if shape.num_classes == 0 else "it was trained with class_conditional=false"
        if label not in (None, NULL_LABEL):
            raise ValueError(f"--label needs a class-conditional prior; {prior} has no classes to choose ({why})")
        if cfg:
            raise ValueError(f"--cfg needs a class-conditional prior; {prior} has no classes to guide to ({why})")
        label = NULL_LABEL   # its only start token
    check_classes(label, shape.num_classes, getattr(models, "class_names", None), prior)
    gen = torch.Generator().manual_seed(seed)   # on the CPU: the same seed gives the same digits on any device
    labels = labels_for(n, label, gen, shape.num_classes, getattr(models, "class_counts", None))
    cond = labels if labels is not None else torch.full((n,), shape.null_class, dtype=torch.long)
    prefix = None if keep is None else grid_to_sequence(keep).long().cpu()   # moved per chunk below
    candidates = torch.arange(n)   # the output row each drawn sample is a candidate for
    if keep_likeliest < 1:
        conditions = cond[:, None] if prefix is None else torch.cat([cond[:, None], prefix], 1)
        group_of_row, candidates = oversample(conditions, keep_likeliest)
    drawn = []
    for start in range(0, len(candidates), batch_size):   # chunks keep memory bounded for any n
        rows = candidates[start:start + batch_size]
        y = cond[rows].to(device)
        given = None if prefix is None else prefix[rows].to(device)
        drawn.append(gpt.generate(y, temperature, top_k, top_p, cfg if labels is not None else 0.0,
                                  prefix=given, generator=gen, cfg_schedule=cfg_schedule))
    tokens = torch.cat(drawn)
    if keep_likeliest < 1:
        scores = torch.cat([gpt.log_likelihood(tokens[i:i + batch_size], cond[candidates[i:i + batch_size]].to(device))
                            for i in range(0, len(tokens), batch_size)]).cpu()
        tokens = tokens[likeliest_per_group(group_of_row, candidates, scores).to(tokens.device)]
    grids = sequence_to_grid(tokens, height=shape.grid)
    images = torch.cat([tok.draw(grids[i:i + batch_size], refine, gen) for i in range(0, n, batch_size)])
    return {"images": images.cpu(), "tokens": grids.cpu(), "labels": labels}


def oversample(conditions: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """conditions: (n, k) rows, equal rows forming a group. Returns (group of each row (n,),
    candidates (m,): for each of ceil(count / share) draws per group, the group's first row)."""
    _, group_of_row, counts = torch.unique(conditions, dim=0, return_inverse=True, return_counts=True)
    first_row = torch.full((len(counts),), len(conditions), dtype=torch.long)
    first_row.scatter_reduce_(0, group_of_row, torch.arange(len(conditions)), "amin")
    # the small epsilon: 8 / 0.8 is 10.000000000000002 in floating point, and must draw 10
    draws = torch.tensor([math.ceil(c / share - 1e-9) for c in counts.tolist()])
    return group_of_row, torch.repeat_interleave(first_row, draws)


def likeliest_per_group(group_of_row: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """For each output row, the index of the candidate it gets: each group's likeliest
    candidates (as many as its rows), handed out in the order they were drawn."""
    group_of_candidate = group_of_row[candidates]
    chosen = torch.empty(len(group_of_row), dtype=torch.long)
    for g in group_of_row.unique().tolist():
        mine = (group_of_candidate == g).nonzero().squeeze(1)
        rows = (group_of_row == g).nonzero().squeeze(1)
        best = mine[scores[mine].argsort(descending=True, stable=True)[:len(rows)]]
        chosen[rows] = best.sort().values
    return chosen


__all__ = ["generate", "load_models", "Models", "check_sampling_args", "labels_for", "NULL_LABEL", "ALL_CLASSES",
           "oversample",
           "likeliest_per_group"]
