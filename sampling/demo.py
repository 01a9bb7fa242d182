"""The browser demo's work, without the page: the models loaded once, then sample, complete
and tokenize, each with the page's one-line messages for bad values. What the page draws
is what `python sampling/generate.py` draws for the same settings and seed.
Plain torch, so the tests and benchmarks use it without gradio."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.errors import VQGenError
from common.images import psnr, to_float
from common.pretrained import SHIPPED_DEFAULT, find_run, is_run, parse_label, \
    recommended_settings, shown_path
from sampling import NULL_LABEL, Models, generate, load_models

MAX_SAMPLES = 64
OWN_RUNS = "runs/prior"     # the page's prior when none is named; while it has none, SHIPPED_DEFAULT


class DemoError(VQGenError):
    """A problem the page shows as a message: empty canvas, missing run, value out of range."""


def parse_digits(choices: list[str], num_classes: int = 10) -> list[int] | None:
    """Ticked boxes (class numbers) -> generate()'s digit: none ticked is unconditional (each
    sample draws its class)."""
    try:
        digits = sorted({int(c) for c in choices or []})
    except (TypeError, ValueError):
        raise DemoError(f"digits: {choices!r}: tick classes 0-{num_classes - 1} (none: any)") from None
    if any(not 0 <= d < num_classes for d in digits):
        raise DemoError(f"digits: {digits}: tick classes 0-{num_classes - 1} (none: any)")
    return digits or None


@dataclass
class Sampled:
    images: torch.Tensor         # float [n,C,H,W] (MNIST [n,1,28,28])
    tokens: torch.Tensor         # long [n,h,w] (MNIST [n,7,7])
    labels: torch.Tensor | None  # long [n] or None
    seconds: float               # server time of the generation and decoding


class Demo:
    """The page's work: models loaded once, then sample / complete / tokenize."""

    def __init__(self, prior: str | Path = OWN_RUNS, notice: str = "", tokenizer: str | Path | None = None,
                 data_root: str | Path | None = None, device: str = "cpu"):
        self.prior, self.tokenizer, self.device = str(prior), tokenizer, device
        self.data_root = data_root
        self.notice = notice   # said on the page above the run line, e.g. why these runs are served
        self.models: Models | None = None
        self.error = ""
        self._test_images: torch.Tensor | None = None
        self.load()

    def reloaded(self, prior: str, tokenizer: str | None) -> Demo:
        """Another Demo on other runs, for one visitor, with its settings read: this one is untouched,
        and a run that cannot be loaded (or a bad sampling.yaml) raises DemoError instead."""
        other = Demo(prior, tokenizer=tokenizer, data_root=self.data_root, device=self.device)
        if other.models is None:
            raise DemoError(other.status().replace("**", ""))
        try:
            other.settings()
        except (VQGenError, OSError, ValueError) as err:
            raise DemoError(str(err)) from None
        return other

    def load(self) -> str:
        """(Re)load the two runs; on failure keep the message for the page instead of raising."""
        try:
            self.models, self.error = load_models(self.prior, self.tokenizer, self.device), ""
        except (VQGenError, OSError, ValueError) as err:
            self.models, self.error = None, str(err)
        return self.status()

    def status(self) -> str:
        notice = f"{self.notice}\n\n" if self.notice else ""
        if self.models is None:
            return f"{notice}**Cannot load the models.** {self.error}"
        cfg = self.models.prior_cfg
        kind = "class-conditional" if cfg.class_conditional else "unconditional"
        return (f"{notice}prior `{shown_path(self.models.prior_dir)}` ({cfg.n_layer} layers, {kind})"
                f" over tokenizer `{shown_path(self.models.tokenizer_dir)}` ({self.models.tokenizer.num_codes} codes)")

    def settings(self) -> dict:
        """The sampling settings the page starts from: generate.py's without flags for this prior
        (configs/sampling.yaml, then the prior's own sampling.yaml), as the Sample tab's values."""
        folder = self.models.prior_dir if self.models is not None else find_run(self.prior, "prior")
        chosen = recommended_settings(folder)
        label = parse_label(chosen.get("label", "none"))
        classes = self.models.prior_cfg.num_classes if self.models is not None else 10
        if self.models is not None and not self.models.prior_cfg.class_conditional:
            label = None
        digits = [] if label in (None, NULL_LABEL) else list(range(classes)) if label == "all" else \
            label if isinstance(label, list) else [label]
        return {"digits": [str(d) for d in digits], "cfg": float(chosen.get("cfg", 0.0)),
                "temperature": float(chosen.get("temperature", 1.0)),
                "keep_likeliest": float(chosen.get("keep_likeliest", 1.0)),
                "top_k": int(chosen.get("top_k") or 0), "top_p": float(chosen.get("top_p") or 1.0)}

    def require_models(self) -> Models:
        """The loaded models, or the reason they are not (as a message for the page)."""
        if self.models is None:
            raise DemoError(self.error)
        return self.models

    def test_digit(self, index: int) -> torch.Tensor:
        """Test image `index` of the loaded tokenizer's data set, float [C,H,W]. Never fetched or
        prepared inside a request (that can take minutes): a server without it says how to get it."""
        if self._test_images is None:
            from tokenizer.data import DataError, data_root, is_own_dataset, load_run_dataset, run_data_info, verify
            models = self.require_models()
            root, dataset = data_root(str(self.data_root or "")), models.dataset
            try:
                if not is_own_dataset(dataset) and verify(root, dataset):   # preparing is for training
                    raise DemoError(f"no {dataset} test images on this server (in {root}); its owner can prepare "
                                    f"them with `python -m tokenizer.data {dataset}`; draw one meanwhile")
                recorded = run_data_info(models.tokenizer_dir, dataset)
                self._test_images = load_run_dataset(dataset, recorded, root, models.tokenizer_dir,
                                                     prepare_missing=False).test
            except DataError as err:
                raise DemoError(str(err)) from None
        if not 0 <= index < len(self._test_images):
            raise DemoError(f"test digit {index}: pick an index from 0 to {len(self._test_images) - 1}")
        image = self._test_images[index]
        return to_float(image[None])[0]

    def sample(self, digits: list[int] | None, n: int, cfg: float = 0.0, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0,
               keep_likeliest: float = 1.0) -> Sampled:
        """What `python sampling/generate.py --n N --label D --cfg ... --seed S` draws, image for image."""
        if not 1 <= n <= MAX_SAMPLES:
            raise DemoError(f"{n} samples: pick 1 to {MAX_SAMPLES}")
        digit = digits if digits is None or len(digits) > 1 else digits[0]
        return self._generate(n=n, label=digit, temperature=temperature, top_k=top_k, top_p=top_p, cfg=cfg,
                              seed=seed, keep_likeliest=keep_likeliest)

    def complete(self, image: torch.Tensor, keep_rows: int, n: int = 8, temperature: float = 1.0,
                 seed: int = 0) -> Sampled:
        """n completions of image [C,H,W] from its first keep_rows code rows, like
        `generate.py --complete FILE --keep-rows R` (no digit: the kept rows decide it)."""
        grid = self.require_models().tokenizer.grid
        if not 0 <= keep_rows <= grid:
            raise DemoError(f"keep {keep_rows} rows: pick 0 to {grid}")
        if not 1 <= n <= MAX_SAMPLES:
            raise DemoError(f"{n} completions: pick 1 to {MAX_SAMPLES}")
        with torch.no_grad():
            grid = self.require_models().tokenizer.encode(image[None].to(self.device)).cpu()
        return self._generate(n=n, label=NULL_LABEL, temperature=temperature, seed=seed,
                              keep=grid[:, :keep_rows].expand(n, -1, -1))

    def tokenize(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """image [C,H,W] -> (its code grid, its reconstruction [C,H,W], PSNR in dB)."""
        tok = self.require_models().tokenizer
        with torch.no_grad():
            grid = tok.encode(image[None].to(self.device))
            recon = tok.decode(grid)[0].cpu()
        return grid[0].cpu(), recon, psnr(F.mse_loss(recon, image))

    def _generate(self, **kwargs) -> Sampled:
        """sampling.generate on the loaded models, timed; its argument checks become page messages."""
        started = time.perf_counter()
        try:
            out = generate(models=self.require_models(), **kwargs)
        except ValueError as err:
            raise DemoError(str(err)) from None
        return Sampled(out["images"], out["tokens"], out["labels"], time.perf_counter() - started)


def choose_prior(given: str | None) -> tuple[str, str]:
    """(prior, notice): the named one; else runs/prior; else, while that has none, the shipped
    runs, with a notice that says so (never a silent switch)."""
    if given is not None:
        return given, ""
    if is_run(find_run(OWN_RUNS, "prior")) or not is_run(find_run(SHIPPED_DEFAULT, "prior")):
        return OWN_RUNS, ""
    return SHIPPED_DEFAULT, (f"**Serving the shipped runs** (`pretrained/{SHIPPED_DEFAULT}`): there is no `{OWN_RUNS}` "
                          "here yet. Train your own with `make demo`, then load `runs/prior` below.")
