import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")   # tests never track
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Small enough for seconds on a 2-core CPU, real MNIST underneath. No decoder or refiner phase
# (the default has both): tests add them where they test them, without the default's weight
# average (0.999 averages over ~1000 steps; a tiny phase has 128) or whole-digit head.
TINY_TOKENIZER = ["hidden_channels=16", "embedding_dim=8", "codebook_size=32", "train_subset=2048",
                  "batch_size=32", "epochs=2", "warmup_steps=10", "dead_code_steps=5", "lr=0.003",
                  "decoder_epochs=0", "decoder_weight_average=0", "decoder_disc_whole_image=false", "refiner_epochs=0"]
TINY_PRIOR = ["n_layer=2", "n_head=2", "n_embd=32", "train_subset=512", "batch_size=64", "epochs=2",
              "warmup_steps=2"]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    from tokenizer.data import data_root, ensure_dataset
    root = data_root()
    ensure_dataset(root, "mnist")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer_run(tmp_path_factory, mnist_root) -> Path:
    """A trained tiny tokenizer shared by tests that only read it."""
    from tokenizer.train import main
    out = tmp_path_factory.mktemp("tok") / "run"
    main(TINY_TOKENIZER + [f"out_dir={out}", f"data_root={mnist_root}"])
    return out


@pytest.fixture(scope="session")
def tiny_prior_run(tmp_path_factory, tiny_tokenizer_run, mnist_root):
    """(run dir, final metrics) of a tiny prior over the tiny tokenizer, shared by readers."""
    from prior.train import main
    out = tmp_path_factory.mktemp("prior") / "run"
    metrics = main(TINY_PRIOR + [f"out_dir={out}", f"tokenizer={tiny_tokenizer_run}", f"data_root={mnist_root}"])
    return out, metrics


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_script(args: list[str], env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """run_cli for an entry script, in this interpreter: the script runs as __main__ (its own
    run_main, so the same one-line errors and exit status), without the 2-3 s a fresh Python
    spends importing torch. For the many tests of a script's refusals; the tests that train,
    spawn or time a process keep run_cli."""
    import contextlib
    import io
    import runpy
    import traceback
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    try:
        sys.argv = [str(Path(cwd, args[0])), *args[1:]]
        os.chdir(cwd)
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:   # what a real process would die of: a traceback and status 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def huge_png(width: int, height: int) -> bytes:
    """A valid all-black greyscale PNG of that size, written row by row (zlib) without holding it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)   # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
