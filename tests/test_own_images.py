"""Your own images: folders and .npz files the tests make themselves, through the same commands.

Small sets (a few hundred pictures cut from MNIST, some tinted), so each command runs in seconds.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_PRIOR, TINY_TOKENIZER, run_cli
from tokenizer.own_images import DataError, prepare

N_PER_CLASS = 40   # 3 classes x 40: enough for a held-out share and a few batches


@pytest.fixture(scope="module")
def digits(mnist_root):
    from tokenizer.data import load_split
    images, labels = load_split(mnist_root, "mnist", train=True, subset=3000)
    picked = [torch.nonzero(labels == c)[:N_PER_CLASS, 0] for c in (0, 1, 7)]
    return [images[i].numpy() for i in picked]   # per class: uint8 [40,28,28]


# Ink and paper colour ranges (low, high per RGB channel) of the colour sets: orange-ish ink on
# dark blue paper, so a model whose colours do not follow its training set's shows it.
INK, PAPER = ((200, 100, 0), (256, 160, 60)), ((0, 0, 40), (30, 30, 90))


def tinted(image: np.ndarray, seed: int, side: int = 40) -> np.ndarray:
    """A digit in a random ink colour on a random dark background (INK, PAPER), at side x side:
    uint8 [side,side,3]."""
    rng = np.random.default_rng(seed)
    ink, paper = rng.integers(*INK), rng.integers(*PAPER)
    big = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32)[..., None] / 255
    return (paper * (1 - big) + ink * big).round().astype(np.uint8)


def write_classes(folder, digits, colour=False, suffix=".png"):
    for name, images in zip(["zero", "one", "seven"], digits):
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(images):
            picture = Image.fromarray(tinted(image, i) if colour else image)
            picture.save(folder / name / f"{i:03d}{suffix if i % 5 else suffix.upper()}")   # any case


def test_class_folders_become_labels_and_a_held_out_share(tmp_path, digits):
    write_classes(tmp_path / "set", digits)
    (tmp_path / "set" / "one" / "notes.txt").write_text("not a picture")
    got = prepare(tmp_path / "set", 0, tmp_path / "data", quiet=True)
    assert got.info["class_names"] == ["one", "seven", "zero"] and got.channels == 1
    assert got.info["image_size"] == 28 and got.train.shape[1:] == (28, 28) and got.train.dtype == np.uint8
    assert len(got.train) + len(got.test) == 120 and len(got.test) == 12 and got.info["ignored"] == 1
    assert sorted(np.unique(got.train_labels)) == [0, 1, 2]
    # each picture kept as it was: a training image is one of the files, bit for bit
    assert any(np.array_equal(got.train[0], image) for images in digits for image in images)


def test_the_second_preparation_reads_the_cache_and_a_changed_listing_does_not(tmp_path, digits):
    write_classes(tmp_path / "set", digits)
    first = prepare(tmp_path / "set", 0, tmp_path / "data", quiet=True)
    assert isinstance(first.train, np.memmap)   # read memory-mapped: a set larger than memory still trains
    prepared = list((tmp_path / "data" / "prepared").iterdir())
    prepare(tmp_path / "set", 0, tmp_path / "data", quiet=True)
    assert list((tmp_path / "data" / "prepared").iterdir()) == prepared
    os.remove(tmp_path / "set" / "zero" / "000.PNG")
    again = prepare(tmp_path / "set", 0, tmp_path / "data", quiet=True)
    assert len(again.train) + len(again.test) == 119


def test_flat_folders_npz_and_train_test_folders(tmp_path, digits):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(np.concatenate(digits)):
        Image.fromarray(image).save(flat / f"{i}.jpg", quality=95)
    got = prepare(flat, 0, tmp_path / "data", quiet=True)
    assert got.info["class_names"] is None and got.train_labels is None and len(got.test) == 12
    split = tmp_path / "split"
    write_classes(split / "train", digits)
    write_classes(split / "val", [d[:5] for d in digits])
    got = prepare(split, 0, tmp_path / "data", quiet=True)
    assert (len(got.train), len(got.test)) == (120, 15) and got.info["split"] == "train/ and val/ folders"
    assert got.info["leaked"] == 15   # val/ holds copies of train/'s first files: named, kept as given
    all_images = np.concatenate(digits)
    np.savez(tmp_path / "with.npz", images=all_images, labels=np.repeat([0, 1, 2], N_PER_CLASS))
    np.savez(tmp_path / "without.npz", images=all_images[..., None])   # [N,H,W,1]
    got = prepare(tmp_path / "with.npz", 0, tmp_path / "data", quiet=True)
    assert got.info["class_names"] == ["0", "1", "2"] and len(got.train_labels) == len(got.train)
    got = prepare(tmp_path / "without.npz", 0, tmp_path / "data", quiet=True)
    assert got.train_labels is None and got.train.shape[1:] == (28, 28)


def test_copies_of_a_picture_fall_on_one_side_of_the_split_and_are_named(tmp_path, digits, capsys):
    """An icon theme's links, copied, made 233 of 820 icons copies, and 23 of the 82 held out
    were pictures the model trained on: copies now go wherever the first of them is drawn."""
    flat = tmp_path / "flat"
    flat.mkdir()
    pictures = np.concatenate(digits)
    for i, image in enumerate(pictures):
        Image.fromarray(image).save(flat / f"{i:03d}.png")
    for i in range(0, 120, 4):   # 30 copies under other names
        shutil.copy(flat / f"{i:03d}.png", flat / f"copy-{i:03d}.png")
    got = prepare(flat, 0, tmp_path / "data")
    assert got.info["copies"] == 30 and got.info["leaked"] == 0
    assert len(got.train) + len(got.test) == 150 and len(got.test) >= 10
    train = {image.tobytes() for image in got.train}
    assert not any(image.tobytes() in train for image in got.test)
    assert "30 picture(s) exact copies of others, none across the split" in capsys.readouterr().out
    np.savez(tmp_path / "copies.npz", images=np.concatenate([pictures, pictures[:60]]))
    got = prepare(tmp_path / "copies.npz", 0, tmp_path / "data", quiet=True)
    train = {image.tobytes() for image in got.train}
    assert got.info["copies"] == 60 and not any(image.tobytes() in train for image in got.test)


def test_colour_mixed_and_odd_sized_pictures(tmp_path, digits):
    folder = tmp_path / "mixed"
    write_classes(folder, digits, colour=True)
    Image.fromarray(digits[0][0]).resize((50, 30)).save(folder / "zero" / "grey-wide.png")   # grey, not square
    Image.fromarray(tinted(digits[1][0], 1)).convert("RGBA").save(folder / "one" / "alpha.png")
    got = prepare(folder, 0, tmp_path / "data", quiet=True)
    assert got.channels == 3 and got.info["converted"] == 1 and got.info["image_size"] == 32
    assert got.train.shape[1:] == (3, 32, 32)
    got = prepare(folder, 28, tmp_path / "data", quiet=True)
    assert got.train.shape[1:] == (3, 28, 28)


@pytest.mark.parametrize("damage, says", [("corrupt", "cannot read"), ("empty", "cannot read"),
                                          ("few", "needs at least 60"), ("nothing", "no image files found"),
                                          ("text", "a file, but not an .npz"), ("missing", "no such file or folder"),
                                          ("nested", "point dataset= at the folder that holds the class folders")])
def test_bad_sets_are_one_line_before_any_training(tmp_path, digits, damage, says):
    folder = tmp_path / "set"
    write_classes(folder, [d[:3] for d in digits] if damage == "few" else digits)
    target = folder
    if damage == "corrupt":
        data = (folder / "one" / "001.png").read_bytes()
        (folder / "one" / "001.png").write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        (folder / "one" / "002.png").write_bytes(b"")
    elif damage == "nothing":
        target = tmp_path / "empty-folder"
        target.mkdir()
    elif damage == "text":
        target = tmp_path / "list.txt"
        target.write_text("x")
    elif damage == "missing":
        target = tmp_path / "nowhere"
    elif damage == "nested":
        target = tmp_path
    with pytest.raises(DataError, match=says) as caught:
        prepare(target, 0, tmp_path / "data", quiet=True)
    assert "\n" not in str(caught.value)
    if damage in ("corrupt", "empty"):   # named, and skipped when asked
        assert "skip_bad_images=true" in str(caught.value)
        got = prepare(folder, 0, tmp_path / "data", skip_bad=True, quiet=True)
        assert got.info["skipped"] == 1 and len(got.train) + len(got.test) == 119


@pytest.mark.slow
def test_a_users_set_trains_for_a_budget_in_pixels_and_resizes_above_28_pixels():
    """An epoch of a user's set holds the pixels of MNIST's (60,000 at 28x28), whatever the
    pictures' size; a set by name keeps its own size, and a configured value is kept. The
    decoder resizes above 28 pixels unless told otherwise."""
    from tokenizer.data import epoch_samples_for
    from tokenizer.train import upsample_for
    assert [epoch_samples_for("/my/set", 0, side) for side in (28, 32, 64)] == [60_000, 45_937, 11_484]
    assert epoch_samples_for("/my/set", 0) == 60_000                      # the prior: grids, not pixels
    assert epoch_samples_for("mnist", 0, 28) == 0 and epoch_samples_for("/my/set", 5000, 64) == 5000
    assert [upsample_for(side, "auto") for side in (28, 32, 64)] == ["transposed", "resize", "resize"]
    assert upsample_for(64, "transposed") == "transposed" and upsample_for(28, "resize") == "resize"


def test_a_users_pictures_up_to_28_pixels_get_codes_at_half_their_side():
    """One halving for a user's set up to 28 pixels (14x14 codes at 28), stated in the config,
    and no refiner over such a grid; the built-in sets, larger pictures and configured values
    keep theirs (downsamples 0: by size; the refiner's two epochs)."""
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VQVAEShape
    from tokenizer.train import downsamples_for, refiner_epochs_for
    assert [downsamples_for("/my/set", 0, side) for side in (16, 28, 32, 64)] == [1, 1, 0, 0]
    assert downsamples_for("mnist", 0, 28) == downsamples_for("fashion", 0, 28) == 0
    assert downsamples_for("/my/set", 2, 28) == 2
    assert [VQVAEShape(image_size=28, downsamples=d).grid for d in (0, 1)] == [7, 14]
    assert TokenizerConfig().refiner_epochs == -1   # the grid unknown
    assert [refiner_epochs_for(-1, d) for d in (0, 1, 2)] == [2, 0, 2]
    assert refiner_epochs_for(3, 1) == 3 and refiner_epochs_for(0, 0) == 0


def test_the_adversarial_weight_and_psnr_budget_are_chosen_by_the_set_unless_given():
    """MNIST's 0.1 and no PSNR budget on the built-in sets (their shipped runs rest on them), a
    fifth of the weight and a 0.5 dB budget on a user's set; configured values are kept, and -1
    never reaches training."""
    from tokenizer.config import TokenizerConfig
    from tokenizer.train import gan_weight_for, psnr_budget_for
    assert gan_weight_for("mnist", -1) == gan_weight_for("fashion", -1) == 0.1
    assert gan_weight_for("/my/emoji", -1) == 0.02 and gan_weight_for("/my/emoji", 0.2) == 0.2
    assert psnr_budget_for("mnist", -1) == psnr_budget_for("fashion", -1) == 0.0
    assert psnr_budget_for("/my/emoji", -1) == 0.5 and psnr_budget_for("/my/emoji", 0) == 0.0
    assert TokenizerConfig().decoder_gan_weight == TokenizerConfig().decoder_psnr_budget == -1   # set unknown


def test_a_colour_folder_trains_both_stages_and_generates_colour_grids(colour_runs, tmp_path):
    """The three commands on a folder of tinted digits at 40x40 (the module's colour runs): a
    colour tokenizer at 32x32 (8x8 codes, resize doublings), a class-conditional prior over
    them, and colour samples."""
    _, tok, prior, data, tokenizer_stdout = colour_runs
    out = tmp_path / "samples"
    assert "colour at 32x32" in tokenizer_stdout
    config = (tok / "config.yaml").read_text()
    assert "image_size: 32" in config and "channels: 3" in config and "upsample: resize" in config
    tiny_prior = [a for a in TINY_PRIOR if not a.startswith("train_subset")] + ["epoch_samples=512"]
    result = run_cli(["prior/train.py", *tiny_prior, f"tokenizer={tok}", f"data_root={data}",
                      f"out_dir={tmp_path / 'p2'}", "dataset=mnist"])
    assert result.returncode == 2 and "dataset=mnist, but its tokenizer" in result.stderr
    result = run_cli(["sampling/generate.py", "--n", "16", "--prior", str(prior), "--out", str(out), "--label", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out / "samples.npz") as samples:
        assert samples["images"].shape == (16, 32, 32, 3) and samples["tokens"].shape == (16, 8, 8)
        colour = samples["images"].reshape(-1, 3).astype(float)
    assert np.abs(colour[:, 0] - colour[:, 1]).mean() > 3   # not grey: the channels differ
    # The paper follows the training set's (blue the strongest channel of the darker half of the
    # pixels). This tiny model blurs the ink too much for its colour to be checked here.
    dark = colour[colour.sum(1) <= np.median(colour.sum(1))]
    assert dark.mean(0)[2] > dark.mean(0)[:2].max() + 10, dark.mean(0)
    assert Image.open(out / "grid.png").mode == "RGB"
    result = run_cli(["sampling/evaluate.py", str(out / "samples.npz"), "--tokenizer", str(tok)],
                     env={"VQGEN_DATA": str(data)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "two-sample test" in result.stdout and "tokenizer recon" in result.stdout


@pytest.mark.slow
def test_a_flat_folder_trains_an_unconditional_prior(tmp_path, digits):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(np.concatenate(digits)):
        Image.fromarray(image).save(flat / f"{i}.png")
    tok, prior = tmp_path / "tok", tmp_path / "prior"
    tiny = [a for a in TINY_TOKENIZER if not a.startswith("train_subset")] + ["epoch_samples=1024"]
    assert run_cli(["tokenizer/train.py", *tiny, f"dataset={flat}", f"data_root={tmp_path}/data",
                    f"out_dir={tok}"]).returncode == 0
    tiny_prior = [a for a in TINY_PRIOR if not a.startswith("train_subset")] + ["epoch_samples=512"]
    result = run_cli(["prior/train.py", *tiny_prior, f"tokenizer={tok}", f"data_root={tmp_path}/data",
                      f"out_dir={prior}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no classes: the prior is unconditional" in result.stdout + result.stderr
    result = run_cli(["sampling/generate.py", "--n", "4", "--prior", str(prior), "--out", str(tmp_path / "s"),
                      "--label", "3"])
    assert result.returncode == 2 and "has no classes" in result.stderr
    result = run_cli(["sampling/generate.py", "--n", "4", "--prior", str(prior), "--out", str(tmp_path / "s")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "downsamples: 1" in (tok / "config.yaml").read_text()   # 28 px: codes at half the side
    with np.load(tmp_path / "s" / "samples.npz") as samples:
        assert samples["tokens"].shape == (4, 14, 14)
    # A picture added since the tokenizer trained, its prepared copy gone: the prior refuses the set
    recorded = json.loads((tok / "data.json").read_text())
    shutil.rmtree(tmp_path / "data" / "prepared" / recorded["key"])
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(flat / "added.png")
    result = run_cli(["prior/train.py", *tiny_prior, f"tokenizer={tok}", f"data_root={tmp_path}/data",
                      f"out_dir={tmp_path / 'prior-2'}"])
    assert result.returncode == 2 and f"has changed since {tok}" in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def colour_runs(tmp_path_factory, digits):
    """A tiny colour tokenizer and prior on tinted digits (3 classes), for the readers below."""
    base = tmp_path_factory.mktemp("colour-runs")
    folder = base / "colour"
    write_classes(folder, digits, colour=True)
    tok, prior = base / "tok", base / "prior"
    tiny = [a for a in TINY_TOKENIZER if not a.startswith("train_subset")] + ["epoch_samples=1024"]
    trained = run_cli(["tokenizer/train.py", *tiny, f"dataset={folder}", f"data_root={base}/data", f"out_dir={tok}"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    tiny_prior = [a for a in TINY_PRIOR if not a.startswith("train_subset")] + ["epoch_samples=512"]
    result = run_cli(["prior/train.py", *tiny_prior, f"tokenizer={tok}", f"data_root={base}/data", f"out_dir={prior}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, tok, prior, base / "data", trained.stdout


def test_unconditional_samples_draw_the_classes_as_often_as_the_training_set_holds_them(colour_runs):
    """The run records each class's training pictures; label=None draws classes in those shares
    (uniform where a run recorded none: MNIST's)."""
    from sampling import labels_for, load_models
    _, tok, prior, _, _ = colour_runs
    recorded = json.loads((tok / "data.json").read_text())
    assert sum(recorded["train_class_counts"]) == recorded["train_size"] and len(recorded["train_class_counts"]) == 3
    assert load_models(prior).class_counts == recorded["train_class_counts"]
    drawn = labels_for(20000, None, torch.Generator().manual_seed(0), 3, [10, 30, 60])
    assert torch.allclose(torch.bincount(drawn).float() / 20000, torch.tensor([0.1, 0.3, 0.6]), atol=0.02)
    uniform = labels_for(20000, None, torch.Generator().manual_seed(0), 3)
    assert torch.allclose(torch.bincount(uniform).float() / 20000, torch.full((3,), 1 / 3), atol=0.02)


@pytest.mark.slow
def test_generate_names_the_prior_it_was_given(colour_runs, tmp_path):
    _, _, prior, _, _ = colour_runs
    result = run_cli(["sampling/generate.py", "--n", "4", "--prior", str(prior), "--out", str(tmp_path / "s"),
                      "--digit", "12"])
    assert result.returncode == 2 and f"the prior {prior} has 3 classes" in result.stderr, result.stderr


def test_the_page_serves_a_colour_run_with_its_class_names(colour_runs):
    from sampling.demo import Demo
    from sampling.digit_image import enlarged, picture
    _, _, prior, data, _ = colour_runs
    demo = Demo(prior, data_root=data)
    assert demo.models is not None and demo.models.class_names == ["one", "seven", "zero"]
    assert demo.settings()["digits"] == ["0", "1", "2"]    # "all" is every class of this prior
    sampled = demo.sample([2], n=4)
    assert sampled.images.shape == (4, 3, 32, 32) and sampled.tokens.shape == (4, 8, 8)
    assert picture(enlarged(sampled.images)).shape[-1] == 3   # one colour picture per answer
    test_image = demo.test_digit(0)                          # from the run's own prepared test split
    assert test_image.shape == (3, 32, 32)
    completed = demo.complete(test_image, keep_rows=4, n=2)
    assert torch.equal(completed.tokens[:, :4], demo.tokenize(test_image)[0][None, :4].expand(2, -1, -1))


@pytest.mark.slow
def test_a_killed_run_on_a_folder_resumes_to_the_bits_of_an_unbroken_one(colour_runs, tmp_path):
    from safetensors.torch import load_file
    folder, _, _, data, _ = colour_runs
    tiny = [a for a in TINY_TOKENIZER if not a.startswith("train_subset")] + ["epoch_samples=512", "epochs=2"]
    common = ["tokenizer/train.py", *tiny, f"dataset={folder}", f"data_root={data}"]
    assert run_cli(common + [f"out_dir={tmp_path}/a"]).returncode == 0
    assert run_cli(common + [f"out_dir={tmp_path}/b", "max_steps=7"]).returncode == 0   # stopped part way
    assert run_cli(common + [f"out_dir={tmp_path}/b"]).returncode == 0                  # the same command again
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


MEMORY_PROBE = r"""
import sys, threading, time
import numpy as np
from PIL import Image
from conftest import TINY_TOKENIZER

def anon_mb():   # resident anonymous memory: what a copy of the set would add (mapped file pages do not count)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

folder, data, out = sys.argv[1:4]
import torch
from tokenizer.train import main
peak, done = [0.0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.002)
before = anon_mb()
threading.Thread(target=watch, daemon=True).start()
main([*TINY_TOKENIZER, "train_subset=0", "batch_size=8", "max_steps=4", "image_size=128", "hidden_channels=8",
      f"dataset={folder}", f"data_root={data}", f"out_dir={out}"])
done.set()
print(f"RESULT {before:.1f} {peak[0]:.1f}")
"""


def peak_anonymous_mb(tmp_path, pictures: int) -> float:
    """Peak resident anonymous memory of preparing and training on `pictures` colour pictures at 128x128."""
    folder = tmp_path / f"set-{pictures}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(pictures):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    data = tmp_path / f"data-{pictures}"
    result = run_cli(["-c", MEMORY_PROBE, str(folder), str(data), str(tmp_path / f"run-{pictures}")],
                     env={"PYTHONPATH": f"{REPO / 'tests'}:{REPO}"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = np.load(next((data / "prepared").glob("*/train.npy")), mmap_mode="r")
    assert cached.shape == (pictures - max(10, round(pictures / 10)), 3, 128, 128)
    return float(result.stdout.split("RESULT")[1].split()[1])


@pytest.mark.slow
def test_a_set_larger_than_the_memory_it_may_use_prepares_and_trains_from_its_map(tmp_path):
    """Preparing and training on 4000 colour pictures at 128x128 (188 MB of uint8) takes little
    more anonymous memory than on 500 (23 MB): pictures are decoded one at a time into a
    memory-mapped file and the loop gathers each batch from the map, so the set is never
    copied into the process (the fixed costs, imports and model, cancel in the difference)."""
    small, large = peak_anonymous_mb(tmp_path, 500), peak_anonymous_mb(tmp_path, 4000)
    extra_data_mb = 3500 * 3 * 128 * 128 / 2 ** 20
    assert large - small < 0.25 * extra_data_mb, (small, large, extra_data_mb)

