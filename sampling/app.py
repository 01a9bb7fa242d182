"""Play with vqgen in the browser: sample digits, finish a drawn one, look at its codes.

    pip install -e '.[app]'          # once (or: make app, which also starts it)
    python sampling/app.py [--prior runs/prior] [--tokenizer DIR] [--port 7860] [--host 127.0.0.1]

Three tabs: Sample (the prior's digits, with the 7x7 codes of the one you pick),
Complete (keep the first code rows of a drawing or a test digit, let the prior write
the rest) and Tokenize (an image in, its codes and reconstruction out). The models
are loaded once. Everything above build_app() is plain torch/numpy, so the tests and
the other commands never import gradio; it is imported to build the page only.
"""

import argparse
import contextlib
import functools
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import OneLineArgumentParser, VQGenError, run_main
from common.pretrained import (SHIPPED_DEFAULT, find_run, is_run, parse_digits as parse_digit_setting,
                               recommended_settings, shown_path)
from prior.model import GRID
from sampling import NULL_DIGIT, Models, generate, load_models

BOX, FIELD = 20, 28         # MNIST: the ink's bounding box scaled to 20x20, centred by mass in 28x28
INK_CHOICES = ("auto", "white on black", "black on white")
MAX_SAMPLES = 64
OWN_RUNS = "runs/prior"     # the page's prior when none is named; while it has none, SHIPPED_DEFAULT
SHOW_SCALE = 4              # pixels per MNIST pixel in the page


class DemoError(VQGenError):
    """A problem the page shows as a message: empty canvas, missing run, value out of range."""


def to_mnist(image: np.ndarray, ink: str = "auto") -> torch.Tensor:
    """A drawing or a photo (H,W), (H,W,3) or (H,W,4) uint8 -> float [1,28,28] in [0,1],
    made the way MNIST's digits were: white ink on black, the ink's bounding box scaled
    to fit 20x20 with its aspect kept, placed so its centre of mass is the field's centre.
    Strokes on a transparent canvas are ink wherever there is paint, whatever the colour;
    an opaque image is inverted when its ink is dark (ink="auto": a bright border)."""
    if ink not in INK_CHOICES:
        raise DemoError(f"ink={ink!r}: expected one of {', '.join(INK_CHOICES)}")
    a = np.asarray(image, dtype=np.float32)
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 2:
        raise DemoError(f"need an image, got an array of shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 4 and a[..., 3].min() < 255:
        gray = a[..., 3] / 255
    else:
        gray = (a[..., :3].mean(-1) if a.ndim == 3 else a) / 255
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        if ink == "black on white" or (ink == "auto" and np.median(border) > 0.5):
            gray = 1 - gray
    gray = np.clip(gray, 0, 1)
    rows, cols = np.nonzero(gray > 0.1)
    if len(rows) == 0:
        raise DemoError("the canvas is empty: draw a digit (or pick a test digit) first")
    crop = torch.from_numpy(np.ascontiguousarray(gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]))
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    small = F.interpolate(crop[None, None], size=size, mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 1)
    mass = small.sum()
    centre_y = (small.sum(1) * torch.arange(size[0])).sum() / mass
    centre_x = (small.sum(0) * torch.arange(size[1])).sum() / mass
    # MNIST's test digits have their centre of mass at pixel (14.0, 14.0), measured so.
    top = int(np.clip(round(FIELD / 2 - centre_y.item()), 0, FIELD - size[0]))
    left = int(np.clip(round(FIELD / 2 - centre_x.item()), 0, FIELD - size[1]))
    field = torch.zeros(1, FIELD, FIELD)
    field[0, top:top + size[0], left:left + size[1]] = small
    return field


def to_uint8(images: torch.Tensor, scale: int = SHOW_SCALE) -> np.ndarray:
    """float [N,1,28,28] in [0,1] -> uint8 [N,28*scale,28*scale], blown up without blur."""
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2).numpy()


def kept_part(image: torch.Tensor, keep_rows: int) -> np.ndarray:
    """The input as RGB with the rows the prior will rewrite tinted blue: what it keeps, seen."""
    gray = torch.from_numpy(to_uint8(image[None])[0]).float()
    rgb = torch.stack([gray, gray, gray], -1)
    cut = keep_rows * (FIELD // GRID) * SHOW_SCALE
    rgb[cut:] = rgb[cut:] * 0.35 + torch.tensor([20.0, 40.0, 110.0])
    return rgb.round().to(torch.uint8).numpy()


def code_table(grid: torch.Tensor, codebook_size: int, kept_rows: int = 0) -> str:
    """A 7x7 code grid as an HTML table (kept rows in bold), for the page."""
    cells = "".join(
        "<tr>" + "".join(f"<td{' class=kept' if r < kept_rows else ''}>{int(v)}</td>" for v in row) + "</tr>"
        for r, row in enumerate(grid.tolist()))
    return (f"<table class='codes'>{cells}</table>"
            f"<p>{len(set(grid.flatten().tolist()))} different codes of {codebook_size} in this grid</p>")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b).clamp_min(1e-10)))


def parse_digits(choices: list[str]) -> list[int] | None:
    """Ticked boxes -> generate()'s digit: none ticked is unconditional (each sample draws its digit)."""
    try:
        digits = sorted({int(c) for c in choices or []})
    except (TypeError, ValueError):
        raise DemoError(f"digits: {choices!r}: tick digits 0-9 (none: any digit)") from None
    if any(not 0 <= d <= 9 for d in digits):
        raise DemoError(f"digits: {digits}: tick digits 0-9 (none: any digit)")
    return digits or None


@dataclass
class Sampled:
    images: torch.Tensor         # float [n,1,28,28]
    tokens: torch.Tensor         # long [n,7,7]
    labels: torch.Tensor | None  # long [n] or None
    seconds: float               # server time of the generation and decoding


class Demo:
    """The page's work: models loaded once, then sample / complete / tokenize."""

    def __init__(self, prior: str | Path = OWN_RUNS, notice: str = "", tokenizer: str | Path | None = None,
                 data_root: str | Path | None = None):
        self.prior, self.tokenizer = str(prior), tokenizer
        self.data_root = data_root
        self.notice = notice   # said on the page above the run line, e.g. why these runs are served
        self.models: Models | None = None
        self.error = ""
        self._test_images: torch.Tensor | None = None
        self.load()

    def load(self) -> str:
        """(Re)load the two runs; on failure keep the message for the page instead of raising."""
        try:
            self.models, self.error = load_models(self.prior, self.tokenizer), ""
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
                f" over tokenizer `{shown_path(self.models.tokenizer_dir)}` ({self.models.tokenizer.codebook_size} codes)")

    def settings(self) -> dict:
        """The sampling settings the page starts from: generate.py's without flags for this prior
        (configs/sampling.yaml, then the prior's own sampling.yaml), as the Sample tab's values."""
        folder = self.models.prior_dir if self.models is not None else find_run(self.prior, "prior")
        chosen = recommended_settings(folder)
        digit = parse_digit_setting(chosen.get("digit", "none"))
        digits = [] if digit in (None, NULL_DIGIT) else digit if isinstance(digit, list) else [digit]
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
        """Test-set digit `index` of the tokenizer's dataset, float [1,28,28]."""
        if self._test_images is None:
            from sampling.evaluate import tokenizer_dataset
            from tokenizer.data import DataError, data_root, ensure_dataset, load_split
            root = data_root(str(self.data_root or ""))
            dataset = tokenizer_dataset(Path(self.tokenizer or self.require_models().prior_cfg.tokenizer))
            try:
                ensure_dataset(root, dataset)
            except DataError as err:
                raise DemoError(str(err)) from None
            self._test_images = load_split(root, dataset, train=False)[0]
        if not 0 <= index < len(self._test_images):
            raise DemoError(f"test digit {index}: pick an index from 0 to {len(self._test_images) - 1}")
        return self._test_images[index][None].float() / 255

    def sample(self, digits: list[int] | None, n: int, cfg: float = 0.0, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0,
               keep_likeliest: float = 1.0) -> Sampled:
        """What `python sampling/generate.py --n N --digit D --cfg ... --seed S` draws, image for image."""
        if not 1 <= n <= MAX_SAMPLES:
            raise DemoError(f"{n} samples: pick 1 to {MAX_SAMPLES}")
        digit = digits if digits is None or len(digits) > 1 else digits[0]
        return self._generate(n=n, digit=digit, temperature=temperature, top_k=top_k, top_p=top_p, cfg=cfg,
                              seed=seed, keep_likeliest=keep_likeliest)

    def complete(self, image: torch.Tensor, keep_rows: int, n: int = 8, temperature: float = 1.0,
                 seed: int = 0) -> Sampled:
        """n completions of image [1,28,28] from its first keep_rows code rows, like
        `generate.py --complete FILE --keep-rows R` (no digit: the kept rows decide it)."""
        if not 0 <= keep_rows <= GRID:
            raise DemoError(f"keep {keep_rows} rows: pick 0 to {GRID}")
        if not 1 <= n <= MAX_SAMPLES:
            raise DemoError(f"{n} completions: pick 1 to {MAX_SAMPLES}")
        with torch.no_grad():
            grid = self.require_models().tokenizer.encode(image[None])
        return self._generate(n=n, digit=NULL_DIGIT, temperature=temperature, seed=seed,
                              keep=grid[:, :keep_rows].expand(n, -1, -1))

    def tokenize(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """image [1,28,28] -> (its 7x7 codes, its reconstruction [1,28,28], PSNR in dB)."""
        tok = self.require_models().tokenizer
        with torch.no_grad():
            grid = tok.encode(image[None])
            recon = tok.decode(grid)[0]
        return grid[0], recon, psnr(recon, image)

    def _generate(self, **kwargs) -> Sampled:
        """sampling.generate on the loaded models, timed; its argument checks become page messages."""
        started = time.perf_counter()
        try:
            out = generate(models=self.require_models(), **kwargs)
        except ValueError as err:
            raise DemoError(str(err)) from None
        return Sampled(out["images"], out["tokens"], out["labels"], time.perf_counter() - started)


# ---------------------------------------------------------------- the page (gradio)

CSS = """
table.codes { border-collapse: collapse; font-family: monospace; }
table.codes td { border: 1px solid #888; padding: 2px 6px; text-align: right; }
table.codes td.kept { font-weight: bold; background: #243a6e; color: white; }
#samples .grid-wrap, #completions .grid-wrap { min-height: 0; height: auto; }  /* no empty 450 px box */
"""


SETTING_KEYS = ("digits", "cfg", "temperature", "top_k", "top_p", "keep_likeliest")   # Demo.settings, in page order


def build_app(demo: Demo):
    import gradio as gr

    def failing(fn):
        """Our errors become a readable message in the page, never a stack trace."""
        @functools.wraps(fn)   # gradio reads the signature to pass event data
        def wrapped(*args):
            try:
                return fn(*args)
            except DemoError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return wrapped

    def number(value, what: str) -> float:
        """A field's value as a finite float, or the page's message (the API can send anything)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise DemoError(f"{what}: enter a number") from None
        if not math.isfinite(value):
            raise DemoError(f"{what}: {value} is not a finite number")
        return value

    def whole(value, what: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value   # exact: a float would round a seed near 2**63
        value = number(value, what)
        if value != int(value):
            raise DemoError(f"{what}: {value} is not a whole number")
        return int(value)

    def input_image(source, drawing, index, ink):
        if source == "test digit":
            return demo.test_digit(whole(index, "test digit #"))
        if drawing is None or drawing.get("composite") is None:
            raise DemoError("the canvas is empty: draw a digit (or pick a test digit) first")
        return to_mnist(drawing["composite"], ink)

    def on_sample(digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest):
        top_k, top_p = whole(top_k, "top-k"), number(top_p, "top-p")
        s = demo.sample(parse_digits(digits), whole(n, "samples"), number(cfg, "guidance"),
                        number(temperature, "temperature"), top_k or None, None if top_p == 1.0 else top_p,
                        whole(seed, "seed"), number(keep_likeliest, "keep the likeliest share"))
        captions = [f"{int(c)}" for c in s.labels] if s.labels is not None else [""] * len(s.images)
        gallery = list(zip(to_uint8(s.images), captions))
        size = demo.require_models().tokenizer.codebook_size
        return (gallery, s.tokens, code_table(s.tokens[0], size),
                f"{len(s.images)} samples in {s.seconds:.2f} s of server time. Click one to see its codes.")

    def on_select(tokens, event: gr.SelectData):
        if tokens is None:
            raise DemoError("sample first")
        return code_table(tokens[event.index], demo.require_models().tokenizer.codebook_size)

    def on_complete(source, drawing, index, ink, keep_rows, n, temperature, seed):
        image = input_image(source, drawing, index, ink)
        keep_rows = whole(keep_rows, "code rows to keep")
        grid, recon, _ = demo.tokenize(image)
        s = demo.complete(image, keep_rows, whole(n, "completions"), number(temperature, "temperature"),
                          whole(seed, "seed"))
        return (kept_part(image, keep_rows), to_uint8(recon[None])[0], list(to_uint8(s.images)),
                code_table(grid, demo.require_models().tokenizer.codebook_size, keep_rows),
                f"{len(s.images)} completions in {s.seconds:.2f} s of server time.")

    def on_tokenize(source, drawing, index, ink):
        image = input_image(source, drawing, index, ink)
        grid, recon, db = demo.tokenize(image)
        return (to_uint8(image[None])[0], to_uint8(recon[None])[0],
                code_table(grid, demo.require_models().tokenizer.codebook_size), f"reconstruction PSNR {db:.1f} dB")

    def on_load(prior, tokenizer):
        """Load other runs; the Sample tab's settings become the new prior's recommended ones."""
        demo.prior, demo.tokenizer, demo.notice = prior.strip(), tokenizer.strip() or None, ""
        status = demo.load()
        chosen = demo.settings()
        return (status, *(gr.update(value=chosen[key]) for key in SETTING_KEYS))

    def digit_input(tab: str):
        """The Complete and Tokenize tabs take a drawing (or an uploaded picture) or a test digit."""
        with gr.Column():
            source = gr.Radio(["drawing", "test digit"], value="drawing", label="input", elem_id=f"{tab}-source")
            drawing = gr.Sketchpad(label="draw a digit (or upload a picture)", canvas_size=(280, 280),
                                   fixed_canvas=True, elem_id=f"{tab}-drawing", image_mode="RGBA",
                                   sources=["upload"], layers=False, value=blank_canvas("white on black"),
                                   brush=pen("white on black"))
            ink = gr.Radio(list(INK_CHOICES), value="auto", elem_id=f"{tab}-ink",
                           label="ink (a new canvas in that style; auto: a bright border means dark ink)")
            # precision=None: gradio's own rounding would fail on NaN; whole() says what is wrong instead
            index = gr.Number(value=0, precision=None, step=1, label="test digit #", elem_id=f"{tab}-index")
        ink.change(lambda style: gr.Sketchpad(value=blank_canvas(style), brush=pen(style)), ink, drawing)
        return source, drawing, index, ink

    chosen = demo.settings()
    with gr.Blocks(title="vqgen", analytics_enabled=False) as page:
        gr.Markdown("# vqgen\nA VQ-VAE tokenizer turns a digit into 7x7 codes; a small Transformer writes "
                    "codes row by row; the tokenizer draws them.")
        status = gr.Markdown(demo.status(), elem_id="status")
        with gr.Accordion("run folders", open=demo.models is None):
            with gr.Row():
                prior_dir = gr.Textbox(demo.prior, label="prior run")
                tokenizer_dir = gr.Textbox(demo.tokenizer or "", label="tokenizer run (empty: the prior's own)")
                load = gr.Button("load", elem_id="load-button")

        with gr.Tab("Sample"):
            with gr.Row():
                with gr.Column(scale=1):
                    # starting values: what generate.py uses for this prior without flags
                    digits = gr.CheckboxGroup([str(d) for d in range(10)], value=chosen["digits"],
                                              label="digits (none ticked: any digit)", elem_id="sample-digits")
                    n = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="samples", elem_id="sample-n")
                    cfg = gr.Slider(0, 3, value=chosen["cfg"], step=0.05, label="guidance (0: off)",
                                    elem_id="sample-cfg")
                    temperature = gr.Slider(0.1, 2.0, value=chosen["temperature"], step=0.05, label="temperature")
                    top_k = gr.Slider(0, 512, value=chosen["top_k"], step=1, label="top-k (0: off)")
                    top_p = gr.Slider(0.05, 1.0, value=chosen["top_p"], step=0.05, label="top-p (1: off)")
                    keep_likeliest = gr.Slider(0.5, 1.0, value=chosen["keep_likeliest"], step=0.05,
                                               elem_id="sample-keep",
                                               label="keep the likeliest share of each digit (1: all drawn)")
                    seed = gr.Number(value=0, precision=None, step=1,
                                     label="seed (same seed, same digits as generate.py)")
                    go = gr.Button("sample", variant="primary", elem_id="sample-button")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="samples", columns=8, format="png", elem_id="samples")
                    sample_info = gr.Markdown(elem_id="sample-info")
                    codes = gr.HTML(label="codes of the chosen sample", elem_id="sample-codes")
            tokens = gr.State()
            load.click(on_load, [prior_dir, tokenizer_dir], [status, digits, cfg, temperature, top_k, top_p,
                                                             keep_likeliest])
            go.click(failing(on_sample), [digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest],
                     [gallery, tokens, codes, sample_info])
            gallery.select(failing(on_select), tokens, codes)

        with gr.Tab("Complete"):
            with gr.Row():
                source, drawing, index, ink = digit_input("complete")
                with gr.Column():
                    keep_rows = gr.Slider(0, GRID, value=3, step=1, label="code rows to keep (of 7)")
                    n_complete = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="completions")
                    temperature_c = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                    seed_c = gr.Number(value=0, precision=None, step=1, label="seed")
                    go_c = gr.Button("complete", variant="primary", elem_id="complete-button")
            with gr.Row():
                kept = gr.Image(label="kept (blue: rewritten)", format="png")
                recon_c = gr.Image(label="the tokenizer's reconstruction", format="png")
                codes_c = gr.HTML()
            completions = gr.Gallery(label="completions", columns=8, format="png", elem_id="completions")
            complete_info = gr.Markdown(elem_id="complete-info")
            go_c.click(failing(on_complete),
                       [source, drawing, index, ink, keep_rows, n_complete, temperature_c, seed_c],
                       [kept, recon_c, completions, codes_c, complete_info])

        with gr.Tab("Tokenize"):
            with gr.Row():
                source_t, drawing_t, index_t, ink_t = digit_input("tokenize")
                go_t = gr.Button("tokenize", variant="primary", elem_id="tokenize-button")
            with gr.Row():
                seen = gr.Image(label="the tokenizer's input (28x28)", format="png")
                recon_t = gr.Image(label="reconstruction", format="png")
                codes_t = gr.HTML(elem_id="tokenize-codes")
            tokenize_info = gr.Markdown(elem_id="tokenize-info")
            go_t.click(failing(on_tokenize), [source_t, drawing_t, index_t, ink_t],
                       [seen, recon_t, codes_t, tokenize_info])
    return page


def sweep_cache(page, max_age: float) -> int:
    """Delete the page's files (each answer's images) older than max_age seconds and forget
    them; returns how many went. gradio's own delete_cache walks the same sets without
    copying them, so under concurrent requests it dies on "Set changed size during
    iteration" and the files pile up (measured: 32k files after 512 requests)."""
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in page.blocks.values()))
    now, deleted = time.time(), 0
    for files in page.temp_file_sets:
        for name in list(files):   # a copy: requests add files while we sweep
            if name in keep:
                continue
            try:
                if now - os.lstat(name).st_ctime <= max_age:
                    continue
                os.remove(name)
                deleted += 1
                os.rmdir(os.path.dirname(name))   # gradio puts each file in a folder of its own
            except OSError:   # gone already, or a folder that still holds another file
                pass
            files.discard(name)
    return deleted


def keep_sweeping(page, max_age: float) -> None:
    """sweep_cache a few times per max_age, for the life of the process (a daemon thread)."""
    def loop():
        while True:
            time.sleep(max(0.5, max_age / 4))
            try:
                sweep_cache(page, max_age)
            except Exception as err:   # a failed sweep is retried, never the end of sweeping
                print(f"warning: cache sweep failed: {err}", file=sys.stderr)
    threading.Thread(target=loop, daemon=True, name="cache-sweeper").start()


def blank_canvas(ink: str) -> dict:
    """An opaque canvas for that ink: black for white ink (MNIST's look), white for black ink."""
    paper = np.full((280, 280, 4), 255 if ink == "black on white" else 0, np.uint8)
    paper[..., 3] = 255
    return {"background": paper, "layers": [], "composite": paper}


def pen(ink: str):
    import gradio as gr
    colours = ["#000000", "#ffffff"] if ink == "black on white" else ["#ffffff", "#000000"]
    return gr.Brush(default_size=22, colors=colours, default_color=colours[0], color_mode="fixed")


@contextlib.contextmanager
def served(args: list[str], port: int, timeout: float = 120.0, env: dict | None = None):
    """This app in a child process on 127.0.0.1:port for the length of a with-block
    (the browser test and the bench use it); yields its URL once the page answers."""
    import urllib.request
    command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), *args]
    log = tempfile.TemporaryFile("w+")   # not a pipe: a chatty child must never block on a full one
    child = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **(env or {})},
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if child.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the app exited ({child.returncode}): {log.read()[-2000:]}")
            try:
                opener.open(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="vqgen in the browser: sample, complete, tokenize.")
    p.add_argument("--prior", default=None,
                   help=f"run folder of a trained prior, or a shipped run's name (default: {OWN_RUNS}, or the "
                        f"shipped '{SHIPPED_DEFAULT}' runs while {OWN_RUNS} has none; the page says which)")
    p.add_argument("--tokenizer", default=None, help="default: the one the prior was trained on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--cache-max-age", type=int, default=600, metavar="SECONDS",
                   help="delete the page's image files older than this (they are only needed while shown)")
    return p


def choose_prior(given: str | None) -> tuple[str, str]:
    """(prior, notice): the named one; else runs/prior; else, while that has none, the shipped
    runs, with a notice that says so (never a silent switch)."""
    if given is not None:
        return given, ""
    if is_run(find_run(OWN_RUNS, "prior")) or not is_run(find_run(SHIPPED_DEFAULT, "prior")):
        return OWN_RUNS, ""
    return SHIPPED_DEFAULT, (f"**Serving the shipped runs** (`pretrained/{SHIPPED_DEFAULT}`): there is no `{OWN_RUNS}` "
                          "here yet. Train your own with `make demo`, then load `runs/prior` below.")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be 1-65535")
    if args.cache_max_age < 1:
        raise ValueError(f"--cache-max-age {args.cache_max_age}: must be at least 1 second")
    # Offline by design: no usage statistics, and the local health check must not go through a proxy.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost", args.host]))
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the browser demo needs gradio: pip install -e '.[app]' (or run `make app`)") from None
    demo = Demo(*choose_prior(args.prior), tokenizer=args.tokenizer)
    print(demo.status().replace("**", "").replace("`", "").replace("\n\n", " "), file=sys.stderr)
    if demo.models is None:
        print("warning: the page shows this until the run exists", file=sys.stderr)
    page = build_app(demo)
    keep_sweeping(page, args.cache_max_age)
    page.launch(server_name=args.host, server_port=args.port, css=CSS, footer_links=[], show_error=False)


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError, OSError))
