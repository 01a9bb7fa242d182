"""The project's own judge: a small classifier (MNIST or Fashion-MNIST) and the sample metrics built on it.

Metrics: Frechet distance between classifier features of samples
and of the test set (as FID, Heusel et al. 2017, but in an MNIST classifier's
penultimate layer), `confident` (top probability >= 0.9), `class_kl` (KL of the
predicted-class histogram to uniform), `cond_acc`, and improved precision/recall
(Kynkaanniemi et al. 2019, k-NN balls in feature space).

Two judges of different architecture and seed: "a", the one every earlier table
used (3x3 convs, ReLU, max pooling, seed 0), and "b" (a 5x5 then a 3x3 strided
conv, GELU, seed 1; global average pooling instead of its flat layer fell short of
MIN_ACCURACY). One judge can be tuned to without meaning to; a change counts
as a gain where both distances agree.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import CheckpointError, atomic_write_text, load_weights, save_weights
from common.runs import load_weights_into
from common.images import batch_for_pixels, in_batches, quantized, to_float
from tokenizer.data import builtin_info, data_root, ensure_dataset, load_split

CLASSIFIER_DIRS = {"mnist": Path("runs/classifier"), "fashion": Path("runs/classifier-fashion")}
JUDGES = ("a", "b")
MIN_ACCURACY = {"mnist": 0.99, "fashion": 0.90}   # a weaker judge would blur the figures
JUDGE_EPOCHS = {"mnist": 3, "fashion": 6}          # 3 epochs leave Fashion short of its MIN_ACCURACY


SIDE = 28   # every judge sees pictures at this side (others are resized): small enough to train in a minute


class Classifier(nn.Module):
    """A judge: pictures of `channels` channels -> logits over `classes` and 128 features."""

    def __init__(self, kind: str, channels: int, classes: int):
        super().__init__()
        cells = (SIDE // 4) ** 2   # two halvings
        if kind == "a":
            self.features = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(64 * cells, 128), nn.ReLU(),
            )
        elif kind == "b":
            self.features = nn.Sequential(
                nn.Conv2d(channels, 48, 5, stride=2, padding=2), nn.GELU(),
                nn.Conv2d(48, 96, 3, stride=2, padding=1), nn.GELU(),
                nn.Flatten(), nn.Linear(96 * cells, 128), nn.GELU(),
            )
        else:
            raise ValueError(f"judge kind {kind!r}: expected one of {', '.join(JUDGES)}")
        self.head = nn.Linear(128, classes)

    def forward(self, x):               # x: [B,C,H,W] in [0,1], seen at SIDE x SIDE
        if x.shape[-1] != SIDE or x.shape[-2] != SIDE:
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
        feats = self.features(x * 2 - 1)
        return self.head(feats), feats


def train_classifier(root: Path, epochs: int = 3, seed: int = 0, subset: int = 0,
                     dataset: str = "mnist", kind: str = "a") -> tuple[Classifier, float]:
    """A few epochs of Adam with light shift augmentation; returns (model, test accuracy)."""
    torch.manual_seed(seed)
    images, labels = load_split(root, dataset, train=True, subset=subset)
    model = Classifier(kind, *judged_shape(dataset))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(images) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for i in range(len(images) // 128):
            idx = order[i * 128:(i + 1) * 128]
            x = to_float(images[idx])
            # Random shifts of up to 2 pixels: samples are not perfectly centred.
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, (dy, dx), (2, 3))
            loss = F.cross_entropy(model(x)[0], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    test_x, test_y = load_split(root, dataset, train=False)
    accuracy = (classify(model, to_float(test_x))[0].argmax(1) == test_y).float().mean().item()
    return model, accuracy


def judged_shape(dataset: str) -> tuple[int, int]:
    """(channels, classes) of a judged data set, from its definition."""
    info = builtin_info(dataset)
    return info["channels"], len(info["class_names"])


def judge_dir(dataset: str, kind: str) -> Path:
    """Where a judge is cached: runs/classifier (judge a), runs/classifier-b, ..."""
    base = CLASSIFIER_DIRS[dataset]
    return base if kind == "a" else base.with_name(f"{base.name}-{kind}")


def load_classifier(root: Path | None = None, dataset: str = "mnist", cache_dir: Path | None = None,
                    kind: str = "a") -> Classifier:
    """The cached judge of `dataset`, trained on first use (about a minute on a 2-core CPU)."""
    path = Path(cache_dir or judge_dir(dataset, kind)) / "model.safetensors"
    model = Classifier(kind, *judged_shape(dataset))
    if path.is_file():
        try:
            load_weights_into(model, load_weights(path, "classifier"), path)
        except CheckpointError as err:   # e.g. a judge cached by an older version
            raise CheckpointError(f"{err}: delete {path.parent} and the judge is retrained on first use") from None
        return model.eval()
    root = root or data_root()
    ensure_dataset(root, dataset)
    print(f"training the {dataset} judge classifier {kind} (once; cached in {path}) ...", flush=True)
    model, accuracy = train_classifier(root, epochs=JUDGE_EPOCHS[dataset], dataset=dataset, kind=kind,
                                       seed=JUDGES.index(kind))
    if accuracy < MIN_ACCURACY[dataset]:
        raise CheckpointError(f"{dataset} judge classifier reached only {accuracy:.2%} test accuracy "
                              f"(< {MIN_ACCURACY[dataset]:.0%})")
    print(f"judge classifier {kind}: {accuracy:.2%} {dataset} test accuracy", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model.state_dict(), "classifier")
    return model.eval()


@torch.no_grad()
def classify(model: Classifier, images: torch.Tensor, batch_size: int = 1000):
    """(probabilities [N,classes], features [N,128]) for float images [N,C,H,W] in [0,1]."""
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        logits, f = model(images[i:i + batch_size].float())
        probs.append(logits.softmax(1))
        feats.append(f)
    return torch.cat(probs), torch.cat(feats)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def _knn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    radii = []
    for i in range(0, len(x), 1000):
        d = torch.cdist(x[i:i + 1000], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)   # +1: the point itself is at 0
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    hits = []
    for i in range(0, len(points), 1000):
        d = torch.cdist(points[i:i + 1000], centres)
        hits.append((d <= radii[None]).any(1))
    return torch.cat(hits).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    precision = _covered(fake, real, _knn_radius(real, k))
    recall = _covered(real, fake, _knn_radius(fake, k))
    return precision, recall


def judge(model: Classifier, images: torch.Tensor, reference_feats: torch.Tensor,
          labels: torch.Tensor | None = None) -> dict:
    """All sample metrics of float images [N,1,28,28] in [0,1] against reference features."""
    probs, feats = classify(model, images)
    hist = torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)
    nonzero = hist[hist > 0]
    precision, recall = precision_recall(reference_feats, feats)
    result = {"n": len(images), "frechet": frechet_distance(feats, reference_feats),
              "confident": (probs.max(1).values >= 0.9).float().mean().item(),
              "class_kl": float((nonzero * (nonzero * 10).log()).sum()),
              "precision": precision, "recall": recall}
    if labels is not None:
        result["cond_acc"] = (probs.argmax(1) == labels).float().mean().item()
    return result



FLOOR = "real train (floor)"   # the set of real training digits every distance is a multiple of
RECON_FLOOR = "real test (recon floor)"   # the reconstructions' own floor: the test images they come from


def judged_by_classifiers(sets: dict, test: torch.Tensor, root: Path, dataset: str) -> dict[str, dict]:
    """sets: name -> (float images, labels or None), one of them FLOOR. Judge a's figures and
    judge b's distance (frechet_b) for each, against the test images' features, and each
    distance as a multiple of the floor's: x_real, x_real_b and the larger, x_real_worst."""
    rows = {}
    for kind in JUDGES:
        suffix = "" if kind == "a" else f"_{kind}"
        model = load_classifier(root, dataset, kind=kind)
        _, test_feats = classify(model, test)
        for name, (x, y) in sets.items():
            if kind == "a":
                rows[name] = judge(model, x, test_feats, y)
            else:
                rows[name][f"frechet{suffix}"] = frechet_distance(classify(model, x)[1], test_feats)
        floor = rows[FLOOR][f"frechet{suffix}"]
        for r in rows.values():
            r[f"x_real{suffix}"] = r[f"frechet{suffix}"] / max(floor, 1e-9)
    for r in rows.values():
        r["x_real_worst"] = max(r[key] for key in r if key.startswith("x_real"))
    return rows


# Chosen on the shipped tokenizer's reconstructions against training digits: the schedule under
# which the classifier's validation loss fell furthest (the figures: docs/EXPERIMENTS.md).
C2ST_SEEDS = 3          # the two-sample test is the mean of this many seeds, with their spread
C2ST_MAX_EPOCHS = 16    # a one-cycle rate over at most this many epochs ...
C2ST_PATIENCE = 2       # ... stopped when the validation loss has not improved for this many,
C2ST_MIN_EPOCHS = 12    # ... but never before this many: the loss can stall for two epochs and fall again
                        # as the rate decays (stopped there, a test reads the samples as far better)
C2ST_LR = 3e-3          # Adam's peak rate
C2ST_WARMUP = 0.3       # share of the steps the rate rises over first (one-cycle)
C2ST_BATCH = 256
C2ST_VERSION = 2        # how the test's classifier is built (2: its one-logit head drawn directly); a kept floor
                        # measured by another version is measured again


def two_sample_accuracy(candidates: torch.Tensor, real: torch.Tensor, seed: int = 0,
                        max_epochs: int = C2ST_MAX_EPOCHS, patience: int = C2ST_PATIENCE,
                        min_epochs: int = C2ST_MIN_EPOCHS, held_out: float = 0.2,
                        validation: float = 0.1, batch_size: int = C2ST_BATCH, lr: float = C2ST_LR,
                        warmup: float = C2ST_WARMUP, report: dict | None = None) -> float:
    """A classifier two-sample test (Lopez-Paz & Oquab 2017) trained until it has finished
    learning: a fresh CNN learns to tell `candidates` from `real` (float [N,C,H,W] in [0,1], seen
    at 28x28; the larger set cut to the smaller) with a cosine-decayed rate, is checked on a
    validation share after each epoch, stops once that loss has not improved for `patience`
    epochs (never before `min_epochs`), and is scored, with its best weights, on a held-out
    test share it never saw (neither for training nor for stopping). 0.5: it cannot tell them
    apart; 1.0: it always can.

    A test stopped early can be passed without the images being right (docs/EXPERIMENTS.md).
    Deterministic for a seed (the same machine). Two real sets stop at min_epochs (nothing to
    learn); a set it can tell apart runs all max_epochs."""
    n = min(len(candidates), len(real))
    if n < 10:
        raise ValueError(f"a two-sample test needs at least 10 images a side, got {n}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([candidates[torch.randperm(len(candidates), generator=gen)[:n]],
                   real[torch.randperm(len(real), generator=gen)[:n]]]).float()
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    share = torch.zeros(2 * n, dtype=torch.long)   # 0 train, 1 validation, 2 test: the same shares of each side
    for side in (0, n):
        order = side + torch.randperm(n, generator=gen)
        test_count, val_count = max(1, round(n * held_out)), max(1, round(n * validation))
        share[order[:test_count]] = 2
        share[order[test_count:test_count + val_count]] = 1
    parts = [(x[share == k], y[share == k]) for k in range(3)]
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = parts
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Classifier("a", channels=x.shape[1], classes=1)   # one logit: "candidate"
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max_epochs * -(-len(train_x) // batch_size)
    rise = max(1, round(warmup * steps))

    def rate(step: int) -> float:   # a linear rise over `warmup` of the steps (one-cycle), then a cosine decay
        if step < rise and warmup > 0:
            return (step + 1) / rise
        return 0.5 * (1 + math.cos(math.pi * min(1, (step - rise * (warmup > 0)) / max(1, steps - rise * (warmup > 0)))))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)

    def logits_of(images):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(images[i:i + 1000])[0][:, 0] for i in range(0, len(images), 1000)])

    best, best_state, waited, best_epoch, epochs = math.inf, None, 0, 0, 0
    for epochs in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(train_x[idx])[0][:, 0], train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        val_loss = F.binary_cross_entropy_with_logits(logits_of(val_x), val_y).item()
        if val_loss < best:
            best, best_state, waited, best_epoch = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0, epochs
        else:
            waited += 1
            if waited >= patience and epochs >= min_epochs:
                break
    model.load_state_dict(best_state)
    if report is not None:
        report.update(epochs=epochs, best_epoch=best_epoch, val_loss=best)
    return ((logits_of(test_x) > 0).float() == test_y).float().mean().item()


def two_sample_test(candidates: torch.Tensor, real: torch.Tensor, seed: int = 0, seeds: int = C2ST_SEEDS,
                    **kwargs) -> dict:
    """The two-sample test over `seeds` seeds (split, classifier and order each): {"c2st": mean,
    "c2st_spread": half the range, "c2st_seeds": each}."""
    each = [two_sample_accuracy(candidates, real, seed=seed + k, **kwargs) for k in range(seeds)]
    return {"c2st": sum(each) / len(each), "c2st_spread": (max(each) - min(each)) / 2, "c2st_seeds": each}


def floor_two_sample_test(name: str, candidates: torch.Tensor, real: torch.Tensor, cache: Path, seed: int = 0,
                          seeds: int = C2ST_SEEDS) -> dict:
    """two_sample_test for a floor (real images against real images: the same sets for a data
    set and n every time), measured once and kept in `cache` (a JSON file, one entry per set,
    size, seeds and test settings): the two floors are 72 of an evaluation's 168 epochs."""
    key = json.dumps([name, len(candidates), len(real), seed, seeds, C2ST_VERSION, C2ST_MAX_EPOCHS, C2ST_MIN_EPOCHS,
                      C2ST_PATIENCE, C2ST_LR, C2ST_WARMUP, C2ST_BATCH])
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except ValueError:   # a damaged cache is measured again, not trusted
        known = {}
    if key not in known:
        known[key] = two_sample_test(candidates, real, seed=seed, seeds=seeds)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(known, indent=1))
    return known[key]


def real_digit_sets(count: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random index sets of n training digits out of count: the real digits a
    sample set is compared with (the floor set), and the two-sample test's reference.
    At random, because MNIST's training file is ordered by writer group: its first and last
    10k are told apart a little (docs/EXPERIMENTS.md)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:n], order[n:2 * n]


@torch.no_grad()
def reconstructions(tokenizer, images: torch.Tensor, batch_size: int = 0, refine: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """The tokenizer's reconstructions of float images [N,C,H,W] as generate() draws pictures from
    code grids (refine: the refiner's steps, None its default, 0 the decoder's average), rounded
    to uint8 levels as generated samples are (batches of 2000 MNIST digits' pixels)."""
    batch_size = batch_size or batch_for_pixels(images, 2000)
    gen = torch.Generator().manual_seed(seed)
    return quantized(in_batches(lambda batch: tokenizer.draw(tokenizer.encode(batch), refine, gen), images, batch_size))
