"""The browser demo's work, without a browser or gradio: MNIST-style preprocessing of
drawings, sampling that matches generate.py, completion that keeps its rows, errors."""

import numpy as np
import pytest
import torch

from conftest import run_cli
from sampling.demo import Demo, DemoError
from sampling.digit_image import PictureError, to_mnist


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
    with pytest.raises(PictureError, match="canvas is empty"):
        to_mnist(image)


@pytest.mark.slow
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


@pytest.mark.slow
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


def answers(folder, count: int, size: int, age: float = 100.0) -> list:
    """count answers' files of `size` bytes, each in a folder of its own as gradio makes them,
    the first the oldest (distinct ctimes are not settable: the sweep orders by ctime, so they
    are written in order, a little apart)."""
    import time
    names = []
    for i in range(count):
        sub = folder / f"answer{len(list(folder.iterdir()))}"
        sub.mkdir()
        (sub / "digit.png").write_bytes(bytes(size))
        names.append(str(sub / "digit.png"))
        time.sleep(0.01)
    return names


def test_the_cache_sweep_counts_blocks_on_disk_and_deletes_oldest_first(tmp_path):
    import os
    from sampling.page_cache import cache_size, sweep_cache
    names = answers(tmp_path, 10, 600)   # 600-byte PNGs: each costs a block and a folder on disk
    kept_for_good = tmp_path / "example.png"
    kept_for_good.write_bytes(bytes(50_000))
    files, used = cache_size(tmp_path)
    assert files == 11 and used >= 50_000 + 10 * (600 + 2 * 512), "blocks of files and folders are counted"
    gone, _, left, count = sweep_cache(tmp_path, max_age=600, max_bytes=used, max_files=100, min_fetch_age=0,
                                       keep={str(kept_for_good)})
    assert gone == []                                                     # young, and within both bounds
    gone, _, left, count = sweep_cache(tmp_path, max_age=600, max_bytes=used // 2 + 50_000, max_files=100,
                                       min_fetch_age=0, keep={str(kept_for_good)})
    assert gone == names[:len(gone)] and 0 < len(gone) < 10 and left <= used // 2 + 50_000   # oldest first
    assert cache_size(tmp_path) == (count, left) and kept_for_good.exists()
    assert not any(os.path.exists(os.path.dirname(n)) for n in gone)     # their folders too
    gone, *_ = sweep_cache(tmp_path, max_age=600, max_bytes=10**9, max_files=3, min_fetch_age=0,
                           keep={str(kept_for_good)})
    assert cache_size(tmp_path)[0] == 3                                   # the count bound
    gone, *_ = sweep_cache(tmp_path, max_age=0, max_bytes=10**9, max_files=100, keep={str(kept_for_good)})
    assert cache_size(tmp_path)[0] == 1 and kept_for_good.exists()        # all past the age bound


def test_files_younger_than_the_fetch_time_are_never_deleted_and_the_room_cannot_ratchet_to_zero(tmp_path):
    """After a burst as large as the bound, the page refuses answers while its files are young, then
    keeps room for the next ones without deleting each new picture at once."""
    import os
    import time
    from sampling.page_cache import MAX_HEADROOM, PageCache, private_cache_folder
    folder = private_cache_folder(tmp_path)
    cache = PageCache(folder, max_age=600, max_bytes=200_000, max_files=1000, min_fetch_age=0.5)
    assert cache.sweep()
    burst = answers(folder, 40, 8000)                      # ~ 40 x 16 KB on disk: over the bound at once
    assert not cache.sweep() and all(map(os.path.exists, burst))   # young: refused, not deleted
    time.sleep(0.6)
    assert cache.sweep()                               # old enough now: oldest deleted, room again
    assert cache.room_bytes <= MAX_HEADROOM * 200_000
    fresh = answers(folder, 2, 8000)
    cache.sweep()
    assert all(map(os.path.exists, fresh)), "a new picture was deleted before its browser could fetch it"


def test_the_pages_folder_is_its_own_and_never_a_link(tmp_path):
    import os
    from sampling.page_cache import PageCache, private_cache_folder
    shared = tmp_path / "gradio"
    shared.mkdir()
    (shared / "other-app.png").write_bytes(b"theirs")
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(ValueError, match="real folder, not a link"):
        PageCache(link, 600, 10**6, 100)
    folder = private_cache_folder(link)                     # inside a linked parent: a new real folder
    assert folder.parent == shared.resolve() and oct(folder.stat().st_mode)[-3:] == "700"
    (folder / "escape").symlink_to(shared / "other-app.png")
    cache = PageCache(folder, max_age=0, max_bytes=10**6, max_files=100, min_fetch_age=0)
    cache.sweep()
    PageCache.remove_folder(folder)
    assert (shared / "other-app.png").read_bytes() == b"theirs" and not folder.exists()
    assert os.listdir(shared) == ["other-app.png"]


def test_an_answer_is_one_picture_and_a_click_finds_its_digit():
    import numpy as np
    from sampling.digit_image import GAP, picked, picture
    digits = np.stack([np.full((4, 4), i, np.uint8) for i in range(11)])
    sheet = picture(digits, columns=8)
    assert sheet.shape == (2 * 4 + GAP, 8 * 4 + 7 * GAP)
    for i in range(11):
        r, c = divmod(i, 8)
        x, y = c * (4 + GAP) + 1, r * (4 + GAP) + 2
        assert picked(x, y, 11, 4) == i and sheet[y, x] == i
    assert picked(4, 0, 11, 4) is None and picked(3 * (4 + GAP), 4 + GAP, 11, 4) is None   # a gap, past the last


def test_a_picture_is_checked_from_its_header_before_decoding(tmp_path):
    from conftest import huge_png
    from sampling.digit_image import PictureError, check_picture, to_mnist
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_png(13000, 13000))
    with pytest.raises(PictureError, match="13000x13000 pixels.*scale it down"):
        check_picture(bomb)
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(PictureError, match="not an image"):
        check_picture(tmp_path / "text.png")
    import numpy as np
    with pytest.raises(PictureError, match="3000x2000 pixels"):
        to_mnist(np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2000, 3000), (0, 0)))
