"""Play with vqgen in the browser: sample digits, finish a drawn one, look at its codes.

    pip install -e '.[app]'          # once (or: make app, which also starts it)
    python sampling/app.py [--prior runs/prior] [--tokenizer DIR] [--port 7860] [--host 127.0.0.1]

Three tabs: Sample (the prior's digits, with the 7x7 codes of the one you pick),
Complete (keep the first code rows of a drawing or a test digit, let the prior write
the rest) and Tokenize (an image in, its codes and reconstruction out). The models
are loaded once. The page is this file; its work is sampling/demo.py, its pictures
sampling/digit_image.py and its cache bound sampling/page_cache.py, all plain
torch/numpy: the tests and the other commands never import gradio, which is
imported to build the page only.
"""

import argparse
import functools
import math
import os
import sys

import numpy as np

from common.errors import OneLineArgumentParser, run_main
from common.pretrained import SHIPPED_DEFAULT
from prior.model import GRID
from sampling.demo import MAX_SAMPLES, OWN_RUNS, Demo, DemoError, choose_prior, parse_digits
from sampling.digit_image import INK_CHOICES, kept_part, to_mnist, to_uint8
from sampling.page_cache import PageCache


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


def build_app(demo: Demo, cache: PageCache | None = None):
    import gradio as gr

    def failing(fn):
        """Our errors become a readable message in the page, never a stack trace; the cache
        is swept before each answer adds its images."""
        @functools.wraps(fn)   # gradio reads the signature to pass event data
        def wrapped(*args):
            if cache is not None:
                cache.sweep()
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
                   help="and the oldest of them while they hold more than this many megabytes")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be 1-65535")
    if args.cache_max_age < 1:
        raise ValueError(f"--cache-max-age {args.cache_max_age}: must be at least 1 second")
    if not args.cache_max_mb > 0:
        raise ValueError(f"--cache-max-mb {args.cache_max_mb}: must be more than 0")
    # Offline by design: no usage statistics, and the local health check must not go through a proxy.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost", args.host]))
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the browser demo needs gradio: pip install -e '.[app]' (or run `make app`)") from None
    demo = Demo(*choose_prior(args.prior), tokenizer=args.tokenizer, device=args.device)
    print(demo.status().replace("**", "").replace("`", "").replace("\n\n", " "), file=sys.stderr)
    if demo.models is None:
        print("warning: the page shows this until the run exists", file=sys.stderr)
    cache = PageCache(args.cache_max_age, int(args.cache_max_mb * 2**20))
    page = build_app(demo, cache)
    cache.keep_sweeping(page)
    page.launch(server_name=args.host, server_port=args.port, css=CSS, footer_links=[], show_error=False)


if __name__ == "__main__":
    run_main(main, sys.argv[1:], also=(ValueError, OSError))
