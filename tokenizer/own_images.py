"""A user's own images (`dataset=PATH`): a folder of pictures or an .npz, checked once and
cached as one uint8 array.

Layouts a folder may have (image files: png, jpg, jpeg, bmp, webp, tif, tiff, any case):
- PATH/<class>/*.png ...           class subfolders: labels, in sorted folder-name order
- PATH/*.png ...                   flat: no labels (the prior is unconditional)
- PATH/train/... and PATH/test/... (or val/): the split as given, each part in either layout
Without train/test folders a fixed share (HELD_OUT) is held out, drawn with a fixed seed, and
the run records which. An .npz holds `images` uint8 [N,H,W] or [N,H,W,C] (C 1, 3 or 4) and
optionally `labels` (integers), read without unpickling.

Every image is decoded once, when the set is first prepared: an unreadable file is named in
one line (skip_bad=True skips it and counts it instead); files that are not images by their
extension are left out and counted. Pictures become grey when every file is grey, else colour
(RGB; a grey picture among colour ones is repeated on three channels, and the summary line
says so); transparent pixels are composited onto black. Each is resized (antialiased) so its
shorter side is image_size, then centre-cropped to a square. The result is cached under
DATA_ROOT/prepared/<key>/ as .npy files keyed by the listing (paths, sizes, modification
times) and the settings, so the next command starts in seconds and reads it memory-mapped: a
set larger than memory trains from the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import VQGenError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = ("train", ("test", "val"))
HELD_OUT = 0.1            # share held out for testing when the folder has no test/ part
MIN_TEST, MIN_TRAIN = 10, 50   # below this a held-out figure or a training run means nothing
SPLIT_SEED = 0
FORMAT = 1                # bump when the cached arrays change meaning


class DataError(VQGenError):
    """Data missing, corrupt or unfetchable; printed as one line that says what to do."""


@dataclass
class OwnSet:
    """A prepared set: uint8 images [N,H,W] (grey) or [N,3,H,W] (colour), labels long-able
    arrays or None, and what the run records about it."""
    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    test_labels: np.ndarray | None
    info: dict   # channels, image_size, class_names, split, sizes, skipped, ignored, converted

    @property
    def channels(self) -> int:
        return self.info["channels"]


def is_own_dataset(dataset: str) -> bool:
    return dataset not in ("mnist", "fashion")


def describe_problem(path: Path) -> str | None:
    """Why `path` cannot be a data set, or None."""
    if not path.exists():
        return f"dataset={path}: no such file or folder; expected mnist, fashion, a folder of images or an .npz"
    if path.is_file() and path.suffix.lower() != ".npz":
        return f"dataset={path}: a file, but not an .npz; expected a folder of images or an .npz with 'images'"
    return None


def _cache_folder(path: Path, image_size: int, root: Path, skip_bad: bool) -> tuple[Path, dict]:
    listing = _npz_listing(path) if path.is_file() else _folder_listing(path)
    key = hashlib.sha256(json.dumps([FORMAT, str(path.resolve()), image_size, skip_bad, listing["stamp"]])
                         .encode()).hexdigest()[:20]
    return Path(root) / "prepared" / key, listing


def is_prepared(path: str | Path, image_size: int, root: Path) -> bool:
    """Whether the set is in the cache already (at this size, as listed now)."""
    path = Path(path).expanduser()
    if describe_problem(path):
        return False
    try:
        return any((_cache_folder(path, size, root, skip)[0] / "info.json").is_file()
                   for size in (image_size, 0) for skip in (False, True))
    except DataError:
        return False


def prepare(path: str | Path, image_size: int, root: Path, skip_bad: bool = False, quiet: bool = False) -> OwnSet:
    """The set at `path` at image_size x image_size (0: chosen from the images), from the cache
    when its listing is unchanged, else decoded, checked and cached (atomically)."""
    path = Path(path).expanduser()
    problem = describe_problem(path)
    if problem:
        raise DataError(problem)
    cache, listing = _cache_folder(path, image_size, Path(root), skip_bad)
    if image_size and not (cache / "info.json").is_file():   # prepared before with image_size chosen for it
        auto, _ = _cache_folder(path, 0, Path(root), skip_bad)
        if (auto / "info.json").is_file() and json.loads((auto / "info.json").read_text())["image_size"] == image_size:
            cache = auto
    if not (cache / "info.json").is_file():
        info = _write_cache(cache, lambda out: _decode_npz(path, image_size, out) if path.is_file() else
                            _decode_folder(path, listing, image_size, skip_bad, out))
        if not quiet:
            print(summary(path, info), flush=True)
    info = json.loads((cache / "info.json").read_text())
    load = lambda name: np.load(cache / f"{name}.npy", mmap_mode="c") if (cache / f"{name}.npy").is_file() else None  # noqa: E731
    return OwnSet(load("train"), load("test"), load("train_labels"), load("test_labels"), info)


def summary(path: Path, info: dict) -> str:
    classes = info["class_names"]
    kind = f"{len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})" if classes \
        else "no classes (unconditional)"
    notes = [f"{info['skipped']} unreadable file(s) skipped"] if info["skipped"] else []
    notes += [f"{info['ignored']} file(s) that are not images left out"] if info["ignored"] else []
    notes += [f"{info['converted']} grey picture(s) made colour to match the rest"] if info["converted"] else []
    return (f"prepared {path}: {info['train_size']} training and {info['test_size']} test images "
            f"({info['split']}), {'colour' if info['channels'] == 3 else 'grey'} at "
            f"{info['image_size']}x{info['image_size']}, {kind}" + (f"; {'; '.join(notes)}" if notes else ""))


# -- listing ------------------------------------------------------------------------

def _npz_listing(path: Path) -> dict:
    stat = path.stat()
    return {"stamp": [path.name, stat.st_size, stat.st_mtime_ns]}


def _images_in(folder: Path) -> tuple[list[Path], int]:
    """(image files directly in folder, count of other files)."""
    images, others = [], 0
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                images.append(entry)
            elif not entry.name.startswith("."):
                others += 1
    return images, others


def _part(folder: Path) -> tuple[list[tuple[Path, str | None]], int, bool]:
    """(files with their class name or None, other files, labelled) of one folder in either layout."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, others = _images_in(folder)
    if subfolders and images:
        raise DataError(f"dataset={folder}: holds both image files and subfolders; put every image in a "
                        f"class subfolder (labelled) or none in subfolders (unlabelled)")
    if not subfolders:
        return [(p, None) for p in images], others, False
    files = []
    for sub in subfolders:
        inside, other = _images_in(sub)
        nested = [p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if nested:
            raise DataError(f"dataset={folder}: {sub.name}/ holds folders ({nested[0].name}/ ...); expected "
                            f"PATH/<class>/<images>: point dataset= at the folder that holds the class folders")
        files += [(p, sub.name) for p in inside]
        others += other
    return files, others, True


def _folder_listing(path: Path) -> dict:
    test_name = next((n for n in SPLIT_NAMES[1] if (path / n).is_dir()), None)
    if (path / "train").is_dir() and test_name:
        parts = {"train": _part(path / "train"), "test": _part(path / test_name)}
        split = f"train/ and {test_name}/ folders"
    else:
        parts = {"all": _part(path)}
        split = f"{HELD_OUT:.0%} held out at random (seed {SPLIT_SEED})"
    labelled = {part[2] for part in parts.values()}
    if len(labelled) > 1:
        raise DataError(f"dataset={path}: train/ has class folders and the test part has none (or the reverse)")
    files = {name: part[0] for name, part in parts.items()}
    if not any(files.values()):
        raise DataError(f"dataset={path}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        f"expected PATH/<class>/<images>, PATH/<images> or PATH/train/ and PATH/test/")
    stamp = [[name, [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p, _ in found]]
             for name, found in files.items()]
    return {"stamp": stamp, "files": files, "ignored": sum(part[1] for part in parts.values()),
            "labelled": labelled.pop(), "split": split}


# -- decoding -------------------------------------------------------------------------

def _colour_of(image) -> bool:
    """Whether a picture (opened, not decoded) is colour: its mode, or a palette of colours."""
    if image.mode == "P":
        palette = np.frombuffer(image.getpalette() or b"", np.uint8).reshape(-1, 3) if image.getpalette() else None
        return palette is not None and bool((palette.max(1) != palette.min(1)).any())
    return image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa")


def _square(image, size: int, colour: bool) -> np.ndarray:
    """A decoded PIL picture -> uint8 [size,size] or [size,size,3]: alpha onto black, shorter side
    resized to size (antialiased), centre-cropped."""
    from PIL import Image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    image = image.convert("RGB" if colour else "L")
    width, height = image.size
    scale = size / min(width, height)
    if (width, height) != (size, size):
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.BICUBIC, reducing_gap=None)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def auto_size(sides: list[int]) -> int:
    """The image_size a set of pictures suits: 28 up to 28 pixels (MNIST's), 32 up to 48, else 64."""
    side = int(np.median(sides)) if sides else 28
    return 28 if side <= 28 else 32 if side <= 48 else 64


def _decode_folder(path: Path, listing: dict, image_size: int, skip_bad: bool, out: Path) -> dict:
    """Decode every picture straight into memory-mapped .npy files in `out`, one at a time:
    preparing never holds the set in memory, so a folder larger than memory prepares too."""
    from PIL import Image, UnidentifiedImageError
    opened, bad = {}, []
    colour, sides = False, []
    for part, files in listing["files"].items():   # one pass over the headers: colour? sizes?
        kept = []
        for file, label in files:
            try:
                with Image.open(file) as image:
                    colour |= _colour_of(image)
                    sides.append(min(image.size))
                kept.append((file, label))
            except (UnidentifiedImageError, OSError, ValueError) as err:
                bad.append((file, err))
        opened[part] = kept
    _refuse_bad(path, bad, skip_bad)
    if "all" in opened:   # no train/test folders: hold out a seeded share of the files
        train, test = _held_out(path, len(opened["all"]))
        opened = {"train": [opened["all"][i] for i in train], "test": [opened["all"][i] for i in test]}
    _check_sizes(path, len(opened["train"]), len(opened["test"]))   # before the long decode
    size = image_size or auto_size(sides)
    classes = sorted({label for files in opened.values() for _, label in files}) if listing["labelled"] else None
    converted, skipped, sizes = 0, len(bad), {}
    for part, files in opened.items():
        shape = (len(files), 3, size, size) if colour else (len(files), size, size)   # the models' layout
        images = np.lib.format.open_memmap(out / f"{part}.npy", mode="w+", dtype=np.uint8, shape=shape)
        labels = []
        for file, label in files:
            try:
                with Image.open(file) as image:
                    image.load()   # decodes: a file truncated past its header fails here
                    converted += colour and not _colour_of(image)
                    picture = _square(image, size, colour)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                _refuse_bad(path, [(file, err)], skip_bad)
                skipped += 1
                continue
            images[len(labels)] = picture.transpose(2, 0, 1) if colour else picture
            labels.append(classes.index(label) if classes else 0)
        images.flush()
        del images
        if len(labels) < len(files):   # skipped files left rows unused at the end
            _shrink(out / f"{part}.npy", len(labels))
        if classes:
            np.save(out / f"{part}_labels.npy", np.asarray(labels, np.int64))
        sizes[part] = len(labels)
    _check_sizes(path, sizes["train"], sizes["test"])
    return {"channels": 3 if colour else 1, "image_size": size, "class_names": classes, "split": listing["split"],
            "skipped": skipped, "ignored": listing["ignored"], "converted": converted,
            "train_size": sizes["train"], "test_size": sizes["test"]}


def _shrink(file: Path, rows: int, chunk: int = 4096) -> None:
    """Keep the first `rows` rows of an .npy file, copied a chunk at a time."""
    old = np.load(file, mmap_mode="r")
    tmp = file.with_name(f"shrunk-{file.name}")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype, shape=(rows, *old.shape[1:]))
    for i in range(0, rows, chunk):
        new[i:i + chunk] = old[i:min(i + chunk, rows)]
    new.flush()
    del new, old
    os.replace(tmp, file)


def _refuse_bad(path: Path, bad: list, skip_bad: bool) -> None:
    if bad and not skip_bad:
        file, err = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        reason = str(err).splitlines()[0][:100] if str(err) else type(err).__name__
        raise DataError(f"dataset={path}: cannot read {file}{more} ({reason}); fix or remove it, or pass "
                        f"skip_bad_images=true to leave such files out")


def _decode_npz(path: Path, image_size: int, out: Path) -> dict:
    """An .npz is read whole (numpy cannot map a zip member), so it must fit in memory."""
    from PIL import Image
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise DataError(f"dataset={path}: no 'images' array (has: {', '.join(data.files) or 'none'})")
            images = data["images"]
            labels = data["labels"] if "labels" in data.files else None
    except (ValueError, OSError, EOFError, KeyError) as err:
        raise DataError(f"dataset={path}: not a readable .npz ({str(err).splitlines()[0][:100]})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3, 4)):
        raise DataError(f"dataset={path}: 'images' must be uint8 [N,H,W] or [N,H,W,C] with C 1, 3 or 4, "
                        f"got {images.dtype} {list(images.shape)}")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu" or
                               (len(labels) and labels.min() < 0)):
        raise DataError(f"dataset={path}: 'labels' must be integers >= 0, one per image, got "
                        f"{labels.dtype} {list(labels.shape)}")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    colour = images.ndim == 4
    size = image_size or auto_size([min(images.shape[1:3])])
    mode = {3: "RGB", 4: "RGBA"}.get(images.shape[3] if colour else 0, "L")
    if images.shape[1:3] == (size, size) and mode != "RGBA":
        squared = np.ascontiguousarray(images)
    else:
        squared = np.stack([_square(Image.fromarray(image, mode), size, colour) for image in images])
    present = np.unique(labels) if labels is not None else None
    classes = [str(c) for c in range(int(present.max()) + 1)] if present is not None and len(present) else None
    train, test = _held_out(path, len(squared))
    if colour:   # [N,H,W,3] -> [N,3,H,W], the layout the models take
        squared = squared.transpose(0, 3, 1, 2)
    np.save(out / "train.npy", np.ascontiguousarray(squared[train]))
    np.save(out / "test.npy", np.ascontiguousarray(squared[test]))
    if classes is not None:
        np.save(out / "train_labels.npy", labels[train].astype(np.int64))
        np.save(out / "test_labels.npy", labels[test].astype(np.int64))
    return {"channels": 3 if colour else 1, "image_size": size, "class_names": classes,
            "split": f"{HELD_OUT:.0%} held out at random (seed {SPLIT_SEED})", "skipped": 0, "ignored": 0,
            "converted": 0, "train_size": len(train), "test_size": len(test)}


def _held_out(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of n images: a seeded HELD_OUT share for testing, each in order."""
    n_test = max(MIN_TEST, round(HELD_OUT * n))
    if n - n_test < MIN_TRAIN:
        raise DataError(f"dataset={path}: {n} images; a held-out test share needs at least "
                        f"{MIN_TRAIN + MIN_TEST} ({MIN_TRAIN} to train, {MIN_TEST} to test)")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _check_sizes(path: Path, n_train: int, n_test: int) -> None:
    if n_train < MIN_TRAIN or n_test < MIN_TEST:
        raise DataError(f"dataset={path}: {n_train} training and {n_test} test images; need at least "
                        f"{MIN_TRAIN} and {MIN_TEST}")


def _write_cache(cache: Path, fill) -> dict:
    """fill(folder) writes the arrays there and returns the set's info; the folder is then
    renamed into place: a reader sees all of it or none."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".tmp-{cache.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        info = fill(tmp)
        (tmp / "info.json").write_text(json.dumps(info))
        try:
            os.rename(tmp, cache)
        except OSError:   # another process prepared it meanwhile: theirs is as good
            if not (cache / "info.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
