"""Every picture read as a viewer shows it, or named: each odd file the tests make here is either
prepared to the pixels of a reference conversion or refused in one line that names it.

Sets are 60 small pictures (50 in train/, 10 in test/, so the rows follow the file names), each
written in the mode under test; nothing trains.
"""
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from tokenizer.own_images import DataError, prepare, prepare_recorded

SIDE = 16


def write_split(folder, save, n_train=50, n_test=10):
    """save(path_without_suffix, i) writes picture i; train/ gets the first n_train, test/ the rest."""
    for part, indices in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        (folder / part).mkdir(parents=True, exist_ok=True)
        for i in indices:
            save(folder / part / f"{i:03d}", i)


def ramp(i: int, high: float) -> np.ndarray:
    """A SIDE x SIDE ramp from 0 to `high`, shifted by picture i (each picture differs)."""
    values = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) + 7 * i) % (SIDE * SIDE)
    return values / (SIDE * SIDE - 1) * high


def prepared(tmp_path, save, **kwargs):
    write_split(tmp_path / "set", save)
    return prepare(tmp_path / "set", SIDE, tmp_path / "data", quiet=True, **kwargs)


def all_pictures(got) -> np.ndarray:
    return np.concatenate([got.train, got.test])


def one_line_naming(err, *words):
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


# -- modes converted with their real range ---------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, suffix):
    pictures = {i: ramp(i, 65535).round().astype(np.uint16) for i in range(60)}
    got = prepared(tmp_path, lambda path, i: Image.fromarray(pictures[i]).save(f"{path}{suffix}"))
    assert Image.open(tmp_path / "set" / "train" / f"000{suffix}").mode.startswith("I;16")
    reference = np.stack([np.rint(pictures[i].astype(float) * 255 / 65535) for i in range(60)])
    assert got.channels == 1 and np.abs(all_pictures(got).astype(int) - reference).max() <= 1
    assert all_pictures(got).mean() == pytest.approx(127.5, abs=2)   # clipped, it read ~254


@pytest.mark.parametrize("high", [1.0, 255.0])
def test_float_pictures_in_either_range_are_read_by_their_range(tmp_path, high):
    pictures = {i: ramp(i, high).astype(np.float32) for i in range(60)}
    got = prepared(tmp_path, lambda path, i: Image.fromarray(pictures[i], "F").save(f"{path}.tif"))
    reference = np.stack([np.rint(pictures[i] * 255 / high) for i in range(60)])
    assert np.abs(all_pictures(got).astype(int) - reference).max() <= 1


@pytest.mark.parametrize("values, says", [((-1.0, 1.0), "float pixels from -1 to 1"),
                                          ((0.0, 300.0), "float pixels from 0 to 300"),
                                          ((np.nan, 1.0), "not numbers")])
def test_float_pictures_of_no_known_range_are_named(tmp_path, values, says):
    def save(path, i):
        pixels = ramp(i, 1.0).astype(np.float32)
        pixels[0, :2] = values
        Image.fromarray(pixels, "F").save(f"{path}.tif")
    with pytest.raises(DataError) as err:
        prepared(tmp_path, save)
    one_line_naming(err, "train/000.tif", says)


def test_32_bit_integer_grey_reads_as_16_bit_and_beyond_it_is_named(tmp_path):
    pictures = {i: ramp(i, 65535).round().astype(np.int32) for i in range(60)}
    got = prepared(tmp_path, lambda path, i: Image.fromarray(pictures[i], "I").save(f"{path}.tif"))
    reference = np.stack([np.rint(pictures[i].astype(float) * 255 / 65535) for i in range(60)])
    assert np.abs(all_pictures(got).astype(int) - reference).max() <= 1
    Image.fromarray(np.full((SIDE, SIDE), 100_000, np.int32), "I").save(tmp_path / "set" / "test" / "big.tif")
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "set", SIDE, tmp_path / "data", quiet=True)
    one_line_naming(err, "big.tif", "32-bit integer pixels from 100000 to 100000")


def colour_picture(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_pictures_are_their_colours(tmp_path, transparent):
    def save(path, i):
        image = Image.fromarray(colour_picture(i)).quantize(16)
        if transparent:
            image.info["transparency"] = 0
        image.save(f"{path}.png", **({"transparency": 0} if transparent else {}))
    got = prepared(tmp_path, save)
    references = []
    for part, names in (("train", range(50)), ("test", range(50, 60))):
        for i in names:
            image = Image.open(tmp_path / "set" / part / f"{i:03d}.png")
            assert image.mode == "P"
            rgb = np.asarray(image.convert("RGB")).copy()
            if transparent:
                rgb[np.asarray(image) == 0] = 0   # the transparent entry, onto black
            references.append(rgb.transpose(2, 0, 1))
    assert got.channels == 3 and np.array_equal(all_pictures(got), np.stack(references))


def test_a_palette_of_greys_makes_a_grey_set(tmp_path):
    def save(path, i):
        Image.fromarray(ramp(i, 255).astype(np.uint8)).convert("P").save(f"{path}.png")
    got = prepared(tmp_path, save)
    assert got.channels == 1
    assert np.array_equal(all_pictures(got), np.stack([ramp(i, 255).astype(np.uint8) for i in range(60)]))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    """Orientation 6: the stored pixels are shown turned 90 degrees clockwise."""
    def picture(i):
        pixels = np.zeros((SIDE, SIDE), np.uint8)
        pixels[:, :SIDE // 2] = 200 + i % 50   # bright left half: shown as the top half
        return pixels

    def save(path, i):
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(picture(i)).save(f"{path}{suffix}", exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    got = all_pictures(prepared(tmp_path, save)).astype(int)
    turned = np.stack([np.rot90(picture(i), -1) for i in range(60)]).astype(int)
    as_stored = np.stack([picture(i) for i in range(60)]).astype(int)
    assert np.abs(got - turned).mean() < 3 < np.abs(got - as_stored).mean()
    if suffix == ".png":
        assert np.array_equal(got, turned)


def test_an_embedded_colour_profile_is_applied_and_a_broken_one_named(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    got = prepared(tmp_path, lambda path, i: Image.fromarray(colour_picture(i)).save(f"{path}.png", icc_profile=srgb))
    assert np.abs(all_pictures(got).astype(int) - np.stack([colour_picture(i).transpose(2, 0, 1)
                                                           for i in range(60)])).max() <= 2
    Image.fromarray(colour_picture(0)).save(tmp_path / "set" / "test" / "broken.png", icc_profile=b"not a profile")
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "set", SIDE, tmp_path / "data", quiet=True)
    one_line_naming(err, "broken.png", "colour profile")


def test_modes_without_a_trusted_conversion_are_named(tmp_path):
    write_split(tmp_path / "set", lambda path, i: Image.fromarray(colour_picture(i)).save(f"{path}.png"))
    Image.new("LAB", (SIDE, SIDE)).save(tmp_path / "set" / "train" / "lab.tif")
    with pytest.raises(DataError) as err:
        prepare(tmp_path / "set", SIDE, tmp_path / "data", quiet=True)
    one_line_naming(err, "lab.tif", "mode LAB")
    got = prepare(tmp_path / "set", SIDE, tmp_path / "data", quiet=True, skip_bad=True)
    assert got.info["skipped"] == 1 and len(got.train) == 50


def test_a_file_of_several_frames_gives_its_first_and_the_summary_says_so(tmp_path, capsys):
    def save(path, i):
        first = Image.fromarray(ramp(i, 255).astype(np.uint8))
        first.save(f"{path}.tif", save_all=True, append_images=[Image.new("L", (SIDE, SIDE), 255)])
    write_split(tmp_path / "set", save)
    got = prepare(tmp_path / "set", SIDE, tmp_path / "data")
    assert got.info["multi_frame"] == 60
    assert np.array_equal(all_pictures(got), np.stack([ramp(i, 255).astype(np.uint8) for i in range(60)]))
    assert "60 file(s) with several frames: the first used" in capsys.readouterr().out


# -- bad files under one rule --------------------------------------------------------------

def declared_png(width: int, height: int, colour: bool = False) -> bytes:
    """A PNG whose header declares width x height and whose data is a few bytes of nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 8))
            + chunk(b"IEND", b""))


def grey_set(tmp_path):
    write_split(tmp_path / "set", lambda path, i: Image.fromarray(ramp(i, 255).astype(np.uint8)).save(f"{path}.png"))
    return tmp_path / "set"


def test_a_decompression_bomb_is_a_bad_file_like_any_other(tmp_path):
    folder = grey_set(tmp_path)
    (folder / "train" / "bomb.png").write_bytes(declared_png(30000, 30000))
    with pytest.raises(DataError) as err:
        prepare(folder, SIDE, tmp_path / "data", quiet=True)
    one_line_naming(err, "bomb.png", "30000x30000", "max_image_pixels", "skip_bad_images=true")
    got = prepare(folder, SIDE, tmp_path / "data", quiet=True, skip_bad=True)
    assert got.info["skipped"] == 1 and len(got.train) == 50
    with pytest.raises(DataError) as err:   # the bound is the user's: 16x16 pictures over 100 pixels
        prepare(folder, SIDE, tmp_path / "data", quiet=True, skip_bad=True, max_pixels=100)
    one_line_naming(err, "training and 0 test images")


def test_skipped_colour_files_never_make_a_grey_set_colour(tmp_path):
    folder = grey_set(tmp_path)
    (folder / "train" / "colour-but-broken.png").write_bytes(declared_png(SIDE, SIDE, colour=True))
    got = prepare(folder, SIDE, tmp_path / "data", quiet=True, skip_bad=True)
    assert got.channels == 1 and got.info["converted"] == 0 and got.info["skipped"] == 1
    assert np.array_equal(all_pictures(got), np.stack([ramp(i, 255).astype(np.uint8) for i in range(60)]))


def test_the_reason_is_never_cut(tmp_path):
    folder = grey_set(tmp_path)
    long_name = "a-picture-with-a-long-name-" * 6 + ".png"
    (folder / "test" / long_name).write_bytes(b"not a picture at all")
    with pytest.raises(DataError) as err:
        prepare(folder, SIDE, tmp_path / "data", quiet=True)
    one_line_naming(err, str(folder / "test" / long_name), "cannot identify image file")


# -- .npz checked from its header ------------------------------------------------------------

def npz_with_header(path, shape, dtype="|u1"):
    """An .npz whose images.npy declares `shape` but holds no pixels (a header alone)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)


@pytest.mark.parametrize("case, says", [
    ("empty", "holds no pictures"), ("no-pixels", "holds no pictures"), ("huge", "GB of memory"),
    ("npy", "not a readable .npz"), ("truncated", "not a readable .npz"), ("objects", "must be uint8"),
    ("labels", "'labels' must be integers"), ("no-images", "no 'images' array")])
def test_npz_problems_are_one_line_from_the_header(tmp_path, case, says):
    path = tmp_path / "set.npz"
    images = np.zeros((100, 8, 8), np.uint8)
    if case == "empty":
        np.savez(path, images=np.zeros((0, 0, 0), np.uint8))
    elif case == "no-pixels":
        np.savez(path, images=np.zeros((100, 0, 0), np.uint8))
    elif case == "huge":
        npz_with_header(path, (100_000, 1000, 1000))   # 100 GB declared
    elif case == "npy":
        np.save(tmp_path / "set.npy", images)
        os.rename(tmp_path / "set.npy", path)
    elif case == "truncated":
        np.savez(path, images=images)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "objects":
        npz_with_header(path, (100, 8, 8), "|O")
    elif case == "labels":
        np.savez(path, images=images, labels=np.zeros(99, np.int64))
    elif case == "no-images":
        np.savez(path, pictures=images)
    with pytest.raises(DataError) as err:
        prepare(path, 0, tmp_path / "data", quiet=True)
    one_line_naming(err, str(path), says)


# -- the cache -------------------------------------------------------------------------------

def test_a_picture_replaced_with_its_size_and_time_kept_is_read_again(tmp_path):
    folder = grey_set(tmp_path)
    file = folder / "train" / "zzz.bmp"   # BMP: another picture of the same size is a file of the same size
    Image.fromarray(ramp(0, 255).astype(np.uint8)).save(file)
    first = prepare(folder, SIDE, tmp_path / "data", quiet=True)
    stat = file.stat()
    Image.fromarray(255 - ramp(0, 255).astype(np.uint8)).save(file)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (file.stat().st_size, file.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = prepare(folder, SIDE, tmp_path / "data", quiet=True)
    assert again.info["key"] != first.info["key"] and not np.array_equal(again.train[-1], first.train[-1])


def test_killed_preparations_and_unused_sets_are_pruned(tmp_path):
    folder = grey_set(tmp_path)
    prepared_dir = tmp_path / "data" / "prepared"
    old = prepare(folder, SIDE, tmp_path / "data", quiet=True).info["key"]
    month_ago = time.time() - 31 * 86_400
    os.utime(prepared_dir / old / "info.json", (month_ago, month_ago))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    killed = prepared_dir / f".tmp-0123456789abcdef0123-{dead.stdout.strip()}@{socket.gethostname()}"
    killed.mkdir()
    (killed / "train.npy").write_bytes(b"half written")
    live = prepared_dir / f".tmp-0123456789abcdef0123-{os.getpid()}@{socket.gethostname()}"
    live.mkdir()
    foreign = [prepared_dir / ".tmp-notes", prepared_dir / "my-old-set"]   # not named as vqgen names its own
    for path in foreign:
        path.mkdir()
        (path / "info.json").write_text("{}")
        os.utime(path / "info.json", (month_ago, month_ago))
        os.utime(path, (month_ago - 86_400, month_ago - 86_400))
    new = prepare(folder, 0, tmp_path / "data", quiet=True).info["key"]   # another size: another preparation
    left = {p.name for p in prepared_dir.iterdir()}
    assert new in left and old not in left and killed.name not in left and live.name in left
    assert all(path.name in left for path in foreign)


def test_a_data_root_that_cannot_be_written_falls_back_to_the_user_cache(tmp_path, monkeypatch, capsys):
    folder = grey_set(tmp_path)
    root = tmp_path / "read-only"
    root.mkdir()
    (root / "prepared").write_text("a file where the folder would go")   # root may write anywhere else
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    got = prepare(folder, SIDE, root, quiet=True)
    assert (tmp_path / "cache" / "vqgen" / "prepared" / got.info["key"] / "info.json").is_file()
    assert "cannot be written" in capsys.readouterr().out
    again = prepare(folder, SIDE, root, quiet=True)   # found there next time
    assert again.info["key"] == got.info["key"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "prepared"))   # under the file: nowhere to write
    with pytest.raises(DataError) as err:
        prepare(folder, 0, root, quiet=True)
    one_line_naming(err, "data_root=")


# -- the stages agree on the data ----------------------------------------------------------------

def test_a_changed_set_is_read_from_the_tokenizers_copy_or_refused(tmp_path):
    import shutil
    folder = grey_set(tmp_path)
    data = tmp_path / "data"
    recorded = prepare(folder, SIDE, data, quiet=True).info
    assert {"digest", "key", "skip_bad_images", "max_image_pixels"} <= set(recorded)
    Image.fromarray(colour_picture(0)).save(folder / "train" / "999.png")   # a colour picture added since
    same = prepare_recorded(folder, recorded, data, run="runs/tok")         # the copy the run trained on
    assert same.info["digest"] == recorded["digest"] and same.channels == 1 and len(same.train) == 50
    shutil.rmtree(data / "prepared" / recorded["key"])
    with pytest.raises(DataError) as err:
        prepare_recorded(folder, recorded, data, run="runs/tok")
    one_line_naming(err, "has changed since runs/tok", "then: 50 training", "now: 51 training")
    os.remove(folder / "train" / "999.png")
    assert prepare_recorded(folder, recorded, data, run="runs/tok").info["digest"] == recorded["digest"]


def test_the_runs_settings_decide_what_is_skipped_when_the_set_is_prepared_again(tmp_path):
    import shutil
    folder = grey_set(tmp_path)
    (folder / "train" / "broken.png").write_bytes(b"not a picture")
    data = tmp_path / "data"
    recorded = prepare(folder, SIDE, data, quiet=True, skip_bad=True).info
    shutil.rmtree(data / "prepared" / recorded["key"])
    again = prepare_recorded(folder, recorded, data, run="runs/tok")   # skip_bad from the record
    assert again.info["digest"] == recorded["digest"] and again.info["skipped"] == 1
    shutil.rmtree(data / "prepared" / again.info["key"])
    with pytest.raises(DataError) as err:   # the page and the evaluator never prepare
        prepare_recorded(folder, recorded, data, run="runs/tok", prepare_missing=False)
    one_line_naming(err, "not prepared on this machine")


def test_command_line_paths_are_taken_as_typed():
    from common.config import load_config
    from prior.config import PriorConfig
    from tokenizer.config import TokenizerConfig
    cfg = load_config(TokenizerConfig, ["dataset=0123", "out_dir=2024-10-01", "epochs=3", "lr=1e-3"])
    assert (cfg.dataset, cfg.out_dir, cfg.epochs, cfg.lr) == ("0123", "2024-10-01", 3, 1e-3)
    assert load_config(PriorConfig, ["tokenizer=007"]).tokenizer == "007"
    from common.config import ConfigError
    with pytest.raises(ConfigError, match="as its tokenizer prepared it"):
        load_config(PriorConfig, ["skip_bad_images=true"])
