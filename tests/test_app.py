"""The browser demo's work, without a browser or gradio: MNIST-style preprocessing of
drawings, sampling that matches generate.py, completion that keeps its rows, errors."""

import numpy as np
import pytest
import torch

from conftest import run_cli
from sampling.demo import Demo, DemoError
from sampling.digit_image import to_mnist


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    from tokenizer.data import load_split
    return load_split(mnist_root, "mnist", train=False)[0][:20]


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    rows = torch.arange(28, dtype=torch.float32)
    return (float((image.sum(1) * rows).sum() / image.sum()), float((image.sum(0) * rows).sum() / image.sum()))


def upscaled(digit: torch.Tensor, factor: int = 10) -> np.ndarray:
    return digit.repeat_interleave(factor, 0).repeat_interleave(factor, 1).numpy()


def test_a_drawing_is_made_like_an_mnist_digit(test_digits):
    for digit in test_digits:
        real = digit.float() / 255
        big = upscaled(digit)
        made = to_mnist(big)[0]
        # A real digit drawn 10x larger comes back at its own size and place.
        assert np.corrcoef(made.flatten(), real.flatten())[0, 1] > 0.9
        cy, cx = centre_of_mass(made)
        assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6
        ink_rows, ink_cols = np.nonzero(made.numpy() > 0.1)
        assert max(np.ptp(ink_rows), np.ptp(ink_cols)) + 1 <= 20
        # Dark ink on paper (auto-detected or said), RGB, or paint on a transparent canvas: the same digit.
        paper = 255 - big
        assert torch.allclose(to_mnist(paper), made, atol=1e-5)
        assert torch.allclose(to_mnist(paper, "black on white"), made, atol=1e-5)
        assert torch.allclose(to_mnist(np.stack([paper] * 3, -1)), made, atol=1e-5)
        transparent = np.zeros((*big.shape, 4), np.uint8)
        transparent[..., 3] = big
        assert torch.allclose(to_mnist(transparent), made, atol=1e-5)


def test_a_small_drawing_off_centre_is_scaled_and_centred():
    canvas = np.zeros((280, 280), np.uint8)
    canvas[10:40, 200:215] = 255   # a short bar in the top-right corner
    made = to_mnist(canvas)[0]
    ink_rows, _ = np.nonzero(made.numpy() > 0.5)
    assert np.ptp(ink_rows) + 1 >= 19   # scaled so its long side is 20 pixels
    cy, cx = centre_of_mass(made)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6


@pytest.mark.parametrize("image", [np.zeros((280, 280, 4), np.uint8), np.full((280, 280), 255, np.uint8)])
def test_an_empty_canvas_is_a_message(image):
    with pytest.raises(DemoError, match="canvas is empty"):
        to_mnist(image)


def test_sampling_in_the_page_draws_what_generate_py_draws(tiny_prior_run, tmp_path):
    prior, _ = tiny_prior_run
    demo = Demo(prior)
    sampled = demo.sample([3, 5], n=16, cfg=1.0, temperature=0.9, top_k=20, seed=7, keep_likeliest=0.75)
    result = run_cli(["sampling/generate.py", "--prior", str(prior), "--out", str(tmp_path / "s"), "--n", "16",
                      "--digit", "3,5", "--cfg", "1.0", "--temperature", "0.9", "--top-k", "20", "--seed", "7",
                      "--keep-likeliest", "0.75"])
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "s" / "samples.npz") as cli:
        assert np.array_equal(cli["tokens"], sampled.tokens.numpy())
        assert np.array_equal(cli["images"], (sampled.images[:, 0] * 255).round().to(torch.uint8).numpy())
        assert cli["labels"].tolist() == sampled.labels.tolist() == [3, 5] * 8
    unconditional = demo.sample(None, n=4, seed=1)
    assert unconditional.images.shape == (4, 1, 28, 28) and unconditional.seconds > 0
    assert len(set(demo.sample(None, n=30, seed=1).labels.tolist())) > 1   # each draws its digit


def test_completion_keeps_the_chosen_code_rows(tiny_prior_run, test_digits):
    demo = Demo(tiny_prior_run[0])
    image = test_digits[0][None].float() / 255
    grid, recon, db = demo.tokenize(image)
    assert grid.shape == (7, 7) and recon.shape == (1, 28, 28) and db > 5
    for rows in (0, 3, 7):
        done = demo.complete(image, keep_rows=rows, n=8, seed=2)
        assert done.images.shape == (8, 1, 28, 28)
        assert torch.equal(done.tokens[:, :rows], grid[:rows].expand(8, -1, -1))
    free = demo.complete(image, keep_rows=1, n=8, seed=2).tokens[:, 1:]
    assert len({tuple(t.flatten().tolist()) for t in free}) > 1   # the rest is sampled, not copied


def test_the_page_explains_bad_input(tiny_prior_run, tmp_path, mnist_root, test_digits):
    missing = Demo(tmp_path / "nothing")
    assert missing.models is None and "accelerate launch prior/train.py" in missing.status()
    with pytest.raises(DemoError, match="accelerate launch prior/train.py"):
        missing.sample(None, n=4)
    demo = Demo(tiny_prior_run[0], data_root=mnist_root)
    for call, message in [(lambda: demo.sample(None, n=0), "pick 1 to 64"),
                          (lambda: demo.sample(None, n=4, temperature=0), "temperature=0"),
                          (lambda: demo.sample(None, n=4, top_p=1.5), "top_p=1.5"),
                          (lambda: demo.sample(None, n=4, keep_likeliest=0), "keep_likeliest=0"),
                          (lambda: demo.complete(torch.zeros(1, 28, 28), keep_rows=8), "pick 0 to 7"),
                          (lambda: demo.test_digit(10_000), "0 to 9999")]:
        with pytest.raises(DemoError, match=message):
            call()
    assert torch.equal(demo.test_digit(5)[0], test_digits[5].float() / 255)


def test_the_demo_logic_does_not_import_gradio():
    modules = "sampling.app, sampling.demo, sampling.digit_image, sampling.page_cache, sampling.serving"
    result = run_cli(["-c", f"import sys, {modules}; assert 'gradio' not in sys.modules, 'gradio imported'"])
    assert result.returncode == 0, result.stderr


def test_a_bad_port_or_cache_bound_is_one_line_before_anything_loads():
    result = run_cli(["sampling/app.py", "--port", "70000"])
    assert result.returncode == 2 and result.stderr.strip() == "error: --port 70000: must be 1-65535"
    result = run_cli(["sampling/app.py", "--cache-max-mb", "0"])
    assert result.returncode == 2 and result.stderr.strip() == "error: --cache-max-mb 0.0: must be more than 0"


def test_without_runs_prior_the_page_serves_the_shipped_runs_and_says_so(tmp_path, monkeypatch, tiny_prior_run):
    import shutil
    from common.pretrained import PRETRAINED, recommended_settings
    from sampling.demo import choose_prior
    monkeypatch.chdir(tmp_path)   # a fresh clone: no runs/prior
    prior, notice = choose_prior(None)
    assert prior == "mnist" and "Serving the shipped runs" in notice and "make demo" in notice
    demo = Demo(prior, notice)
    assert demo.status().startswith(notice) and "pretrained/mnist/prior" in demo.status()
    shipped = recommended_settings(PRETRAINED / "mnist" / "prior")
    assert demo.settings()["cfg"] == shipped["cfg"] and demo.settings()["temperature"] == shipped["temperature"]
    assert choose_prior("elsewhere") == ("elsewhere", "")
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_prior_run[0], tmp_path / "runs" / "prior")   # once trained, ours are served
    assert choose_prior(None) == ("runs/prior", "")
    assert Demo("runs/prior").settings()["cfg"] == recommended_settings(tmp_path / "runs" / "prior")["cfg"]


def test_the_cache_sweep_deletes_by_age_and_then_oldest_first_by_size(tmp_path):
    import os
    import time
    from types import SimpleNamespace
    from sampling.page_cache import TRIM_TO, sweep_cache
    names = []
    for i in range(10):   # ten answers' files of 100 kB, each in a folder of its own as gradio makes them
        folder = tmp_path / f"answer{i}"
        folder.mkdir()
        (folder / "digit.png").write_bytes(bytes(100_000))
        names.append(str(folder / "digit.png"))
        time.sleep(0.01)   # distinct ctimes: "oldest" is well defined
    kept_for_good = tmp_path / "example.png"
    kept_for_good.write_bytes(bytes(500_000))
    files = set(names) | {str(kept_for_good)}
    page = SimpleNamespace(GRADIO_CACHE=str(tmp_path), temp_file_sets=[files],
                           blocks={0: SimpleNamespace(keep_in_cache={str(kept_for_good)})})
    assert sweep_cache(page, max_age=600, max_bytes=2_000_000)[0] == 0          # young, and room to spare
    deleted = sweep_cache(page, max_age=600, max_bytes=1_000_000)[0]          # too close to the bound: oldest first
    remaining = [n for n in names if os.path.exists(n)]
    assert remaining == names[deleted:] and 500_000 + 100_000 * len(remaining) <= TRIM_TO * 1_000_000
    assert files == set(remaining) | {str(kept_for_good)} and kept_for_good.exists()
    assert not any((tmp_path / f"answer{i}").exists() for i in range(deleted))   # their folders too
    time.sleep(0.05)
    assert sweep_cache(page, max_age=0.01, max_bytes=2_000_000)[0] == len(remaining)   # all past the age bound
    assert kept_for_good.exists() and files == {str(kept_for_good)}
