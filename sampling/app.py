"""Play with vqgen in the browser: sample digits, finish a drawn one, look at its codes.

    pip install -e '.[app]'          # once (or: make app, which also starts it)
    python sampling/app.py [--prior runs/prior] [--tokenizer DIR] [--port 7860] [--host 127.0.0.1]

Three tabs: Sample (the prior's images, with the code grid of the one you pick),
Complete (keep the first code rows of a drawing or a test digit, let the prior write
the rest) and Tokenize (an image in, its codes and reconstruction out). The models
are loaded once. The page is this file; its work is sampling/demo.py, its pictures
sampling/digit_image.py and its cache bound sampling/page_cache.py, all plain
torch/numpy: the tests and the other commands never import gradio, which is
imported to build the page only.
"""

import argparse
import atexit
import functools
import math
import os
import signal
import sys

import numpy as np

from common.errors import OneLineArgumentParser, VQGenError, run_main
from common.pretrained import SHIPPED_DEFAULT
from sampling.demo import MAX_SAMPLES, OWN_RUNS, Demo, DemoError, choose_prior, parse_digits
from sampling.digit_image import INK_CHOICES, MAX_PICTURE_PIXELS, PictureError, check_picture, fit_to, kept_part, \
    picked, picture, shown_scale, to_mnist, enlarged
from sampling.page_cache import MIN_FETCH_AGE, PageCache, private_cache_folder

MAX_UPLOAD_MB = 5    # gradio refuses a larger upload before storing it
MAX_LAYERS = 4       # the canvas has none (layers=False), but the API can send any number

# A page with no run loaded (the shipped runs missing or broken) shows the shipped MNIST runs' ranges
# until one is loaded: their code grid's side, codes and classes.
NO_RUN_GRID, NO_RUN_CODES, NO_RUN_CLASSES = 7, 64, 10


def code_table(grid, codebook_size: int, kept_rows: int = 0) -> str:
    """A 7x7 code grid as an HTML table (kept rows in bold), for the page."""
    cells = "".join(
        "<tr>" + "".join(f"<td{' class=kept' if r < kept_rows else ''}>{int(v)}</td>" for v in row) + "</tr>"
        for r, row in enumerate(grid.tolist()))
    return (f"<table class='codes'>{cells}</table>"
            f"<p>{len(set(grid.flatten().tolist()))} different codes of {codebook_size} in this grid</p>")


CSS = """
table.codes { border-collapse: collapse; font-family: monospace; }
table.codes td { border: 1px solid #888; padding: 2px 6px; text-align: right; }
table.codes td.kept { font-weight: bold; background: #243a6e; color: white; }
#samples .grid-wrap, #completions .grid-wrap { min-height: 0; height: auto; }  /* no empty 450 px box */
"""


SETTING_KEYS = ("digits", "cfg", "temperature", "top_k", "top_p", "keep_likeliest")   # Demo.settings, in page order


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


def bounded(canvas):
    """The canvas, with every picture sent to it checked from its header before gradio decodes
    it (gradio decodes the background, the composite and each layer to RGBA). The instance's
    methods are wrapped, not subclassed: a new component class makes gradio write a .pyi file
    beside this one."""
    import io

    import gradio as gr
    preprocess, convert = canvas.preprocess, canvas.convert_and_format_image

    def checked_preprocess(payload):
        if payload is not None:
            stored = canvas.blob_storage.get(payload.id) if payload.id is not None else payload
            if stored is not None and len(stored.layers or []) > MAX_LAYERS:
                raise gr.Error(f"{len(stored.layers)} layers sent; the canvas takes at most {MAX_LAYERS}",
                               print_exception=False)
        return preprocess(payload)

    def checked_convert(file, flatten_on_white=False):
        if file is not None:
            try:
                check_picture(io.BytesIO(file) if isinstance(file, (bytes, bytearray, memoryview))
                              else file.path, "the uploaded picture")
            except PictureError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return convert(file, flatten_on_white)

    canvas.preprocess, canvas.convert_and_format_image = checked_preprocess, checked_convert
    return canvas


def build_app(demo: Demo, cache: PageCache | None = None, allow_load: bool = True):
    """The page. `demo` serves every visitor; a visitor who loads other runs (allow_load) gets a
    Demo of their own in their session state, so no visitor changes what another one sees."""
    return Page(demo, cache, allow_load).build()


class Page:
    """The page's builders, one per tab, and the answers they wire (methods taking the
    visitor's state first, as gradio passes it)."""

    def __init__(self, demo: Demo, cache: PageCache | None, allow_load: bool):
        import gradio as gr
        self.gr, self.demo, self.cache, self.allow_load = gr, demo, cache, allow_load
        self.grid = demo.models.tokenizer.grid if demo.models is not None else NO_RUN_GRID

    def build(self):
        gr, demo = self.gr, self.demo
        with gr.Blocks(title="vqgen", analytics_enabled=False) as page:
            self.visitor = gr.State(None)   # this visitor's own Demo once they load other runs
            gr.Markdown(f"# vqgen\nA VQ-VAE tokenizer turns an image into {self.grid}x{self.grid} codes; a small "
                        "Transformer writes codes row by row; the tokenizer draws them.")
            self.status = gr.Markdown(demo.status(), elem_id="status")
            with gr.Accordion("run folders", open=demo.models is None, visible=self.allow_load):
                with gr.Row():
                    self.prior_dir = gr.Textbox(demo.prior, label="prior run")
                    self.tokenizer_dir = gr.Textbox(demo.tokenizer or "", label="tokenizer run (empty: the prior's own)")
                    self.load = gr.Button("load (for you only)", elem_id="load-button")
            with gr.Tab("Sample"):
                self.sample_tab(page)
            with gr.Tab("Complete"):
                self.complete_tab()
            with gr.Tab("Tokenize"):
                self.tokenize_tab()
        return page

    # -- the tabs ---------------------------------------------------------------------------
    def sample_tab(self, page) -> None:
        gr, demo, chosen = self.gr, self.demo, self.demo.settings()
        with gr.Row():
            with gr.Column(scale=1):
                # starting values: what generate.py uses for this prior without flags
                digits = gr.CheckboxGroup(class_choices(demo), value=chosen["digits"],
                                          label=class_label(demo), elem_id="sample-digits")
                n = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="samples", elem_id="sample-n")
                cfg = gr.Slider(0, 3, value=chosen["cfg"], step=0.05, label="guidance (0: off)", elem_id="sample-cfg")
                temperature = gr.Slider(0.1, 2.0, value=chosen["temperature"], step=0.05, label="temperature")
                top_k = gr.Slider(0, top_k_limit(demo), value=chosen["top_k"], step=1, label="top-k (0: off)",
                                  elem_id="sample-top-k")
                top_p = gr.Slider(0.05, 1.0, value=chosen["top_p"], step=0.05, label="top-p (1: off)")
                keep_likeliest = gr.Slider(0.5, 1.0, value=chosen["keep_likeliest"], step=0.05, elem_id="sample-keep",
                                           label="keep the likeliest share of each digit (1: all drawn)")
                seed = gr.Number(value=0, precision=None, step=1, label="seed (same seed, same digits as generate.py)")
                go = gr.Button("sample", variant="primary", elem_id="sample-button")
            with gr.Column(scale=2):
                samples = gr.Image(label="samples (click one)", format="png", elem_id="samples", interactive=False)
                sample_info = gr.Markdown(elem_id="sample-info")
                codes = gr.HTML(label="codes of the chosen sample", elem_id="sample-codes")
        tokens = gr.State()
        if self.allow_load:
            self.load.click(self.on_load, [self.visitor, self.prior_dir, self.tokenizer_dir],
                            [self.visitor, self.status, digits, cfg, temperature, top_k, top_p, keep_likeliest])
        go.click(self.failing(self.on_sample),
                 [self.visitor, digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest],
                 [samples, tokens, codes, sample_info])

        def on_select(visitor, tokens, event: gr.SelectData):   # gradio passes the click for this annotation
            return self.on_select(visitor, tokens, event)
        samples.select(self.failing(on_select), [self.visitor, tokens], codes)
        if demo.models is not None:   # the page opens on a grid of samples, drawn once at start
            opening = self.on_sample(None, chosen["digits"], 16, chosen["cfg"], chosen["temperature"],
                                     chosen["top_k"], chosen["top_p"], 0, chosen["keep_likeliest"])
            page.load(self.failing(lambda: opening), None, [samples, tokens, codes, sample_info])

    def complete_tab(self) -> None:
        gr = self.gr
        with gr.Row():
            source, drawing, index, ink = self.digit_input("complete")
            with gr.Column():
                rows = self.grid
                keep_rows = gr.Slider(0, rows, value=min(3, rows), step=1, label=f"code rows to keep (of {rows})")
                n = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="completions")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                seed = gr.Number(value=0, precision=None, step=1, label="seed")
                go = gr.Button("complete", variant="primary", elem_id="complete-button")
        with gr.Row():
            kept = gr.Image(label="kept (blue: rewritten)", format="png")
            recon = gr.Image(label="the tokenizer's reconstruction", format="png")
            codes = gr.HTML()
        completions = gr.Image(label="completions", format="png", elem_id="completions", interactive=False)
        info = gr.Markdown(elem_id="complete-info")
        go.click(self.failing(self.on_complete), [self.visitor, source, drawing, index, ink, keep_rows, n, temperature,
                                                  seed], [kept, recon, completions, codes, info])

    def tokenize_tab(self) -> None:
        gr = self.gr
        with gr.Row():
            source, drawing, index, ink = self.digit_input("tokenize")
            go = gr.Button("tokenize", variant="primary", elem_id="tokenize-button")
        with gr.Row():
            seen = gr.Image(label="the tokenizer's input", format="png")
            recon = gr.Image(label="reconstruction", format="png")
            codes = gr.HTML(elem_id="tokenize-codes")
        info = gr.Markdown(elem_id="tokenize-info")
        go.click(self.failing(self.on_tokenize), [self.visitor, source, drawing, index, ink], [seen, recon, codes, info])

    def digit_input(self, tab: str):
        """The Complete and Tokenize tabs take a drawing (or an uploaded picture) or a test digit."""
        gr = self.gr
        with gr.Column():
            source = gr.Radio(["drawing", "test digit"], value="drawing", label="input", elem_id=f"{tab}-source")
            drawing = bounded(gr.Sketchpad(label="draw a digit (or upload a picture)", canvas_size=(280, 280),
                                           fixed_canvas=True, elem_id=f"{tab}-drawing", image_mode="RGBA",
                                           sources=["upload"], layers=False, value=blank_canvas("white on black"),
                                           brush=pen("white on black")))
            ink = gr.Radio(list(INK_CHOICES), value="auto", elem_id=f"{tab}-ink",
                           label="ink (a new canvas in that style; auto: a bright border means dark ink)")
            # precision=None: gradio's own rounding would fail on NaN; whole() says what is wrong instead
            index = gr.Number(value=0, precision=None, step=1, label="test digit #", elem_id=f"{tab}-index")
        ink.change(lambda style: gr.Sketchpad(value=blank_canvas(style), brush=pen(style)), ink, drawing)
        return source, drawing, index, ink

    # -- the answers ------------------------------------------------------------------------
    def failing(self, fn):
        """Our errors become a readable message in the page, never a stack trace; the cache
        is swept before each answer adds its picture, and a full one refuses the answer."""
        @functools.wraps(fn)   # gradio reads the signature to pass event data
        def wrapped(*args):
            try:
                if self.cache is not None and not self.cache.sweep():
                    raise DemoError("the page is busy (its image cache is full of pictures not yet fetched); "
                                    "try again in a minute")
                return fn(*args)
            except VQGenError as err:   # the page's own and the pictures' (digit_image.PictureError)
                raise self.gr.Error(str(err), print_exception=False) from None
        return wrapped

    def current(self, visitor: Demo | None) -> Demo:
        return visitor if visitor is not None else self.demo

    def input_image(self, visitor, source, drawing, index, ink):
        model = self.current(visitor)
        if source == "test digit":
            return model.test_digit(whole(index, "test digit #"))
        if drawing is None or drawing.get("composite") is None:
            raise DemoError("the canvas is empty: draw a digit (or pick a test digit) first")
        return fit_to(to_mnist(drawing["composite"], ink), model.require_models().tokenizer.image_shape)

    def on_sample(self, visitor, digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest):
        model = self.current(visitor)
        top_k, top_p = whole(top_k, "top-k"), number(top_p, "top-p")
        s = model.sample(parse_digits(digits, model.require_models().prior_cfg.num_classes), whole(n, "samples"),
                         number(cfg, "guidance"),
                         number(temperature, "temperature"), top_k or None, None if top_p == 1.0 else top_p,
                         whole(seed, "seed"), number(keep_likeliest, "keep the likeliest share"))
        size = model.require_models().tokenizer.num_codes
        shown = "" if s.labels is None else " (digits " + " ".join(str(int(c)) for c in s.labels) + ")"
        return (picture(enlarged(s.images)), s.tokens, code_table(s.tokens[0], size),
                f"{len(s.images)} samples in {s.seconds:.2f} s of server time{shown}. "
                "Click one to see its codes.")

    def on_select(self, visitor, tokens, event):
        if tokens is None:
            raise DemoError("sample first")
        x, y = event.index if isinstance(event.index, (list, tuple)) else (-1, -1)
        side = self.current(visitor).require_models().tokenizer.shape.image_size
        chosen = picked(x, y, len(tokens), side * shown_scale(side))
        if chosen is None:
            raise DemoError("click a digit, not the space between them")
        return code_table(tokens[chosen], self.current(visitor).require_models().tokenizer.num_codes)

    def on_complete(self, visitor, source, drawing, index, ink, keep_rows, n, temperature, seed):
        model = self.current(visitor)
        image = self.input_image(visitor, source, drawing, index, ink)
        keep_rows = whole(keep_rows, "code rows to keep")
        grid, recon, _ = model.tokenize(image)
        s = model.complete(image, keep_rows, whole(n, "completions"), number(temperature, "temperature"),
                           whole(seed, "seed"))
        return (kept_part(image, keep_rows, model.require_models().tokenizer.grid), enlarged(recon[None])[0],
                picture(enlarged(s.images)),
                code_table(grid, model.require_models().tokenizer.num_codes, keep_rows),
                f"{len(s.images)} completions in {s.seconds:.2f} s of server time.")

    def on_tokenize(self, visitor, source, drawing, index, ink):
        model = self.current(visitor)
        image = self.input_image(visitor, source, drawing, index, ink)
        grid, recon, db = model.tokenize(image)
        return (enlarged(image[None])[0], enlarged(recon[None])[0],
                code_table(grid, model.require_models().tokenizer.num_codes), f"reconstruction PSNR {db:.1f} dB")

    def on_load(self, visitor, prior, tokenizer):
        """Other runs for this visitor only; the Sample tab's settings become the new prior's
        recommended ones. Nothing changes when they cannot be loaded: the page says why."""
        gr = self.gr
        try:
            loaded = self.current(visitor).reloaded(str(prior).strip(), str(tokenizer or "").strip() or None)
        except DemoError as err:
            return (visitor, f"**Cannot load those runs**; still serving the ones before. {err}",
                    *(gr.update() for _ in SETTING_KEYS))
        chosen = loaded.settings()
        updates = {key: {"value": chosen[key]} for key in SETTING_KEYS}
        updates["digits"].update(choices=class_choices(loaded), label=class_label(loaded))
        updates["top_k"].update(maximum=top_k_limit(loaded))   # every range follows the run
        return (loaded, loaded.status(), *(gr.update(**updates[key]) for key in SETTING_KEYS))


def class_choices(demo: Demo) -> list[tuple[str, str]]:
    """The Sample tab's boxes: (name shown, class number) of the served prior's classes."""
    models = demo.models
    if models is None or not models.prior_cfg.class_conditional:
        return [] if models is not None else [(str(c), str(c)) for c in range(NO_RUN_CLASSES)]
    names = models.class_names or [str(c) for c in range(models.prior_cfg.num_classes)]
    return [(name, str(i)) for i, name in enumerate(names)]


def top_k_limit(demo: Demo) -> int:
    """top-k can keep at most every code of the served tokenizer."""
    return demo.models.tokenizer.num_codes if demo.models is not None else NO_RUN_CODES


def class_label(demo: Demo) -> str:
    if demo.models is not None and not demo.models.prior_cfg.class_conditional:
        return "classes: this prior has none (its data set had no class folders): every sample is drawn freely"
    return "classes (none ticked: any)" if demo.models is not None and demo.models.dataset != "mnist" \
        else "digits (none ticked: any digit)"


def blank_canvas(ink: str) -> dict:
    """An opaque canvas for that ink: black for white ink (MNIST's look), white for black ink."""
    paper = np.full((280, 280, 4), 255 if ink == "black on white" else 0, np.uint8)
    paper[..., 3] = 255
    return {"background": paper, "layers": [], "composite": paper}


def pen(ink: str):
    import gradio as gr
    colours = ["#000000", "#ffffff"] if ink == "black on white" else ["#ffffff", "#000000"]
    return gr.Brush(default_size=22, colors=colours, default_color=colours[0], color_mode="fixed")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="vqgen in the browser: sample, complete, tokenize.")
    p.add_argument("--prior", default=None,
                   help=f"run folder of a trained prior, or a shipped run's name (default: {OWN_RUNS}, or the "
                        f"shipped '{SHIPPED_DEFAULT}' runs while {OWN_RUNS} has none; the page says which)")
    p.add_argument("--tokenizer", default=None, help="default: the one the prior was trained on")
    p.add_argument("--device", default="cpu", help="where the models run: cpu, cuda, cuda:1, ...")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--cache-max-age", type=int, default=600, metavar="SECONDS",
                   help="delete the page's image files older than this (they are only needed while shown)")
    p.add_argument("--cache-max-mb", type=float, default=50, metavar="MB",
                   help="and the oldest of them while they hold more than this many megabytes on disk")
    p.add_argument("--cache-max-files", type=int, default=5000, metavar="N",
                   help="or more than this many files")
    p.add_argument("--cache-fetch-time", type=float, default=MIN_FETCH_AGE, metavar="SECONDS",
                   help="the size bound never deletes a file younger than this (its browser may not have "
                        "fetched it yet); while only such files are left, answers wait with a 'busy' line")
    p.add_argument("--allow-load", choices=["auto", "yes", "no"], default="auto",
                   help="let visitors load other run folders of this machine (each for themselves); "
                        "auto: only when listening on 127.0.0.1 or localhost")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be 1-65535")
    if args.cache_max_age < 1:
        raise ValueError(f"--cache-max-age {args.cache_max_age}: must be at least 1 second")
    if not args.cache_max_mb > 0:
        raise ValueError(f"--cache-max-mb {args.cache_max_mb}: must be more than 0")
    if not args.cache_fetch_time >= 0:
        raise ValueError(f"--cache-fetch-time {args.cache_fetch_time}: must be 0 or more seconds")
    if args.cache_max_files < 10:
        raise ValueError(f"--cache-max-files {args.cache_max_files}: must be at least 10")
    allow_load = args.allow_load == "yes" or (args.allow_load == "auto" and args.host in ("127.0.0.1", "localhost"))
    # Offline by design: no usage statistics, and the local health check must not go through a proxy.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost", args.host]))
    # The page's files go to a folder of its own (inside GRADIO_TEMP_DIR when set), never the folder
    # other gradio apps share: gradio reads the variable when it is imported, so set it first.
    folder = private_cache_folder(os.environ.get("GRADIO_TEMP_DIR") or None)
    atexit.register(lambda: PageCache.remove_folder(folder))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # so the folder is removed on `kill` too
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the browser demo needs gradio: pip install -e '.[app]' (or run `make app`)") from None
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = MAX_PICTURE_PIXELS   # any decode beyond twice this raises, wherever it happens
    demo = Demo(*choose_prior(args.prior), tokenizer=args.tokenizer, device=args.device)
    print(demo.status().replace("**", "").replace("`", "").replace("\n\n", " "), file=sys.stderr)
    if demo.models is None:
        print("warning: the page shows this until the run exists", file=sys.stderr)
    print(f"the page's files: {folder} (removed at exit)", file=sys.stderr)
    cache = PageCache(folder, args.cache_max_age, int(args.cache_max_mb * 2**20), args.cache_max_files,
                      min(args.cache_fetch_time, args.cache_max_age))
    page = build_app(demo, cache, allow_load)
    cache.keep_sweeping(page)
    page.launch(server_name=args.host, server_port=args.port, css=CSS, footer_links=[], show_error=False,
                max_file_size=f"{MAX_UPLOAD_MB}mb")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError, OSError))
