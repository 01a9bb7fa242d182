"""A user's own images (`dataset=PATH`): a folder of pictures or an .npz, checked once and
cached as one uint8 array.

Layouts a folder may have (image files: png, jpg, jpeg, bmp, webp, tif, tiff, any case):
- PATH/<class>/*.png ...           class subfolders: labels, in sorted folder-name order
- PATH/*.png ...                   flat: no labels (the prior is unconditional)
- PATH/train/... and PATH/test/... (or val/): the split as given, each part in either layout
Without train/test folders a fixed share (HELD_OUT) is held out, drawn with a fixed seed, and
the run records which; files that are byte-for-byte copies of one another (an icon theme's links,
copied) fall on the same side, so no held-out picture is one the model trained on. Given folders
are kept as they are, and the summary line names test pictures that copy training ones. An .npz
holds `images` uint8 [N,H,W] or [N,H,W,C] (C 1, 3 or 4) and optionally `labels` (integers),
read without unpickling and checked from its header first (rows that are copies: as files).

Every image is decoded once, when the set is first prepared, as a viewer shows it
(tokenizer/pictures.py): an unreadable file, or one declaring more than max_pixels, is named in
one line (skip_bad=True skips it and counts it instead); files that are not images by their
extension are left out and counted. Pictures become grey when every kept file is grey, else
colour (RGB; a grey picture among colour ones is repeated on three channels, and the summary
line says so). Each is resized (antialiased) so its shorter side is image_size, then
centre-cropped to a square.

The result is cached under DATA_ROOT/prepared/<key>/ (or, where that cannot be written, the
user's cache folder) as .npy files, keyed by the listing (paths, sizes, times, inodes and a
checksum of each file's first and last bytes) and the settings, so the next command starts in
seconds and reads it memory-mapped: a set larger than memory trains from the page cache. The
prepared arrays' digest is the set's identity: a tokenizer run records it, and the stages after
it refuse a set that is no longer the same. A prepared set unused for PRUNE_DAYS is removed, and
so is a preparation that was killed half-way.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.checkpoint import file_digest
from common.errors import VQGenError
from tokenizer.pictures import (MAX_PIXELS, BadPicture, pixel_limit, read_header, read_picture, reason, square,
                                to_viewed)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = ("train", ("test", "val"))
HELD_OUT = 0.1            # share held out for testing when the folder has no test/ part
MIN_TEST, MIN_TRAIN = 10, 50   # below this a held-out figure or a training run means nothing
SPLIT_SEED = 0
FORMAT = 3                # bump when the cached arrays change meaning (3: copies on one side of the split)
PRUNE_DAYS = 30           # a prepared set unused this long is removed when another is prepared
STAMP_BYTES = 4096        # the listing checksums this much of each file's start and end
ARRAY_FILES = ("train", "test", "train_labels", "test_labels")


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
    info: dict   # channels, image_size, class_names, split, sizes, skipped, ignored, converted,
                 # multi_frame, and its identity: key (the cache folder), digest, the settings

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


def user_cache() -> Path:
    """Where prepared sets go when DATA_ROOT/prepared cannot be written."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vqgen"


def cache_roots(root: Path) -> list[Path]:
    return [Path(root) / "prepared", user_cache() / "prepared"]


def _find_cache(key: str, root: Path) -> Path | None:
    return next((folder / key for folder in cache_roots(root) if (folder / key / "info.json").is_file()), None)


def _cache_key(path: Path, image_size: int, settings: dict) -> tuple[str, dict]:
    listing = _npz_listing(path) if path.is_file() else _folder_listing(path)
    key = hashlib.sha256(json.dumps([FORMAT, str(path.resolve()), image_size, settings, listing["stamp"]])
                         .encode()).hexdigest()[:20]
    return key, listing


def prepare(path: str | Path, image_size: int, root: Path, skip_bad: bool = False, quiet: bool = False,
            max_pixels: int = MAX_PIXELS) -> OwnSet:
    """The set at `path` at image_size x image_size (0: chosen from the images), from the cache
    when its listing is unchanged, else decoded, checked and cached (atomically)."""
    path = Path(path).expanduser()
    problem = describe_problem(path)
    if problem:
        raise DataError(problem)
    settings = {"skip_bad_images": skip_bad, "max_image_pixels": max_pixels}
    cache, key, listing = _cached(path, image_size, root, settings)
    if cache is None:
        cache, info = _write_cache(Path(root), key, lambda out: {**settings, **(
            _decode_npz(path, image_size, out) if path.is_file() else
            _decode_folder(path, listing, image_size, skip_bad, max_pixels, out))})
        if not quiet:
            print(summary(path, info), flush=True)
    return _load(cache)


def _cached(path: Path, image_size: int, root: Path, settings: dict) -> tuple[Path | None, str, dict]:
    """(the prepared copy of the set as listed now or None, its key, the listing)."""
    key, listing = _cache_key(path, image_size, settings)
    cache = _find_cache(key, root)
    if cache is None and image_size:   # prepared before with image_size chosen for it
        auto = _find_cache(_cache_key(path, 0, settings)[0], root)
        if auto is not None and json.loads((auto / "info.json").read_text())["image_size"] == image_size:
            cache = auto
    return cache, key, listing


def _load(cache: Path) -> OwnSet:
    info = json.loads((cache / "info.json").read_text())
    try:
        os.utime(cache / "info.json")   # marks it used: PRUNE_DAYS count from here
    except OSError:
        pass                            # a read-only cache is still a cache
    arrays = [np.load(cache / f"{name}.npy", mmap_mode="c") if (cache / f"{name}.npy").is_file() else None
              for name in ARRAY_FILES]
    return OwnSet(arrays[0], arrays[1], arrays[2], arrays[3], {**info, "key": cache.name})


def prepare_recorded(path: str | Path, recorded: dict, root: Path, run: str | Path, quiet: bool = True,
                     prepare_missing: bool = True) -> OwnSet:
    """The set a tokenizer run trained on, as its run recorded it (data.json): its prepared copy
    when it is still here, else the folder prepared again with the run's settings, and refused in
    one line when it no longer holds the same pictures."""
    path = Path(path).expanduser()
    settings = {"skip_bad_images": recorded.get("skip_bad_images", False),
                "max_image_pixels": recorded.get("max_image_pixels", MAX_PIXELS)}
    copy = _find_cache(recorded["key"], root) if "key" in recorded else None
    if copy is None and describe_problem(path) is None:   # the folder as it is now, prepared already?
        copy = _cached(path, recorded["image_size"], root, settings)[0]
    if copy is None and not prepare_missing:
        raise DataError(f"dataset={path} is not prepared on this machine (in {Path(root) / 'prepared'}); "
                        f"training its tokenizer prepares it, or pass data_root= / VQGEN_DATA of the machine "
                        f"that trained {run}")
    got = _load(copy) if copy is not None else prepare(path, recorded["image_size"], root, quiet=quiet,
                                                       skip_bad=settings["skip_bad_images"],
                                                       max_pixels=settings["max_image_pixels"])
    if "digest" not in recorded:   # a run from before sets had an identity: as it is now
        return got
    if got.info["digest"] != recorded["digest"]:
        then, now = (f"{i['train_size']} training and {i['test_size']} test images, "
                     f"{'colour' if i['channels'] == 3 else 'grey'}, {len(i['class_names'] or [])} classes"
                     for i in (recorded, got.info))
        same = " (the same counts, other pictures)" if then == now else ""
        raise DataError(f"dataset={path} has changed since {run} was trained on it (then: {then}; now: {now}"
                        f"{same}); retrain the tokenizer on it, or restore the set")
    return got


def summary(path: Path, info: dict) -> str:
    classes = info["class_names"]
    kind = f"{len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})" if classes \
        else "no classes (unconditional)"
    notes = [f"{info['skipped']} unreadable file(s) skipped"] if info["skipped"] else []
    notes += [f"{info['ignored']} file(s) that are not images left out"] if info["ignored"] else []
    notes += [f"{info['converted']} grey picture(s) made colour to match the rest"] if info["converted"] else []
    notes += [f"{info['multi_frame']} file(s) with several frames: the first used"] if info.get("multi_frame") else []
    notes += [f"{info['copies']} picture(s) exact copies of others" + ("" if info.get("leaked") else
                                                                        ", none across the split")] \
        if info.get("copies") else []
    notes += [f"WARNING: {info['leaked']} test picture(s) copy training ones: held-out figures flatter the "
              f"model; take them out of the test part"] if info.get("leaked") else []
    return (f"prepared {path}: {info['train_size']} training and {info['test_size']} test images "
            f"({info['split']}), {'colour' if info['channels'] == 3 else 'grey'} at "
            f"{info['image_size']}x{info['image_size']}, {kind}" + (f"; {'; '.join(notes)}" if notes else ""))


# -- listing ------------------------------------------------------------------------

def _file_stamp(file: Path, stat: os.stat_result) -> list:
    """What says a file is unchanged: size, times, inode and a checksum of its first and last
    bytes (a picture replaced by another of the same size, its time kept, still differs)."""
    try:
        fd = os.open(file, os.O_RDONLY)
        try:
            ends = os.pread(fd, STAMP_BYTES, 0) + os.pread(fd, STAMP_BYTES, max(STAMP_BYTES, stat.st_size - STAMP_BYTES))
        finally:
            os.close(fd)
        checksum = zlib.crc32(ends)
    except OSError:
        checksum = None   # unreadable: decoding names it
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, checksum]


def _npz_listing(path: Path) -> dict:
    return {"stamp": [path.name, *_file_stamp(path, path.stat())]}


def _images_in(folder: Path) -> tuple[list[Path], int]:
    """(image files directly in folder, count of other files)."""
    images, others = [], 0
    with os.scandir(folder) as entries:   # is_file() from the listing itself: no stat per file
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file():
                if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    images.append(folder / entry.name)
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
    stamp = [[name, [[str(p.relative_to(path)), *_file_stamp(p, p.stat())] for p, _ in found]]
             for name, found in files.items()]
    return {"stamp": stamp, "files": files, "ignored": sum(part[1] for part in parts.values()),
            "labelled": labelled.pop(), "split": split}


# -- decoding -------------------------------------------------------------------------

def auto_size(sides: list[int]) -> int:
    """The image_size a set of pictures suits: 28 up to 28 pixels (MNIST's), 32 up to 48, else 64."""
    side = int(np.median(sides)) if sides else 28
    return 28 if side <= 28 else 32 if side <= 48 else 64


def _decode_folder(path: Path, listing: dict, image_size: int, skip_bad: bool, max_pixels: int, out: Path) -> dict:
    """Decode every picture straight into memory-mapped .npy files in `out`, one at a time:
    preparing never holds the set in memory, so a folder larger than memory prepares too."""
    opened, bad, headers = {}, [], {}
    with pixel_limit():
        for part, files in listing["files"].items():   # one pass over the headers: colour? sizes?
            kept = []
            for file, label in files:
                try:
                    headers[file] = read_header(file, max_pixels)
                    kept.append((file, label))
                except BadPicture as err:
                    bad.append((file, err))
            opened[part] = kept
        _refuse_bad(path, bad, skip_bad)
        contents = {file: file_digest(file) for files in opened.values() for file, _ in files}   # copies: same bytes
        if "all" in opened:   # no train/test folders: hold out a seeded share of the files
            train, test = _held_out(path, _copy_groups([contents[file] for file, _ in opened["all"]]))
            opened = {"train": [opened["all"][i] for i in train], "test": [opened["all"][i] for i in test]}
        _check_sizes(path, len(opened["train"]), len(opened["test"]))   # before the long decode
        colour = any(header.colour for header in headers.values())
        size = image_size or auto_size([header.side for header in headers.values()])
        classes = sorted({label for files in opened.values() for _, label in files}) if listing["labelled"] else None
        skipped, sizes, kept_colour, multi_frame, kept = len(bad), {}, 0, 0, {}
        for part, files in opened.items():
            shape = (len(files), 3, size, size) if colour else (len(files), size, size)   # the models' layout
            images = np.lib.format.open_memmap(out / f"{part}.npy", mode="w+", dtype=np.uint8, shape=shape)
            labels, kept[part] = [], []
            for file, label in files:
                try:
                    picture = square(read_picture(file, colour, max_pixels), size)
                except BadPicture as err:
                    _refuse_bad(path, [(file, err)], skip_bad)
                    skipped += 1
                    continue
                images[len(labels)] = picture.transpose(2, 0, 1) if colour else picture
                labels.append(classes.index(label) if classes else 0)
                kept[part].append(contents[file])
                kept_colour += headers[file].colour
                multi_frame += headers[file].frames > 1
            images.flush()
            del images
            if len(labels) < len(files):   # skipped files left rows unused at the end
                _rewrite(out / f"{part}.npy", len(labels))
            if classes:
                np.save(out / f"{part}_labels.npy", np.asarray(labels, np.int64))
            sizes[part] = len(labels)
    if colour and not kept_colour:   # the colour files were all skipped: the set is grey (exactly: R=G=B)
        for part in sizes:
            _rewrite(out / f"{part}.npy", sizes[part], lambda rows: rows[:, 0])
        colour = False
    _check_sizes(path, sizes["train"], sizes["test"])
    return {"channels": 3 if colour else 1, "image_size": size, "class_names": classes, "split": listing["split"],
            "skipped": skipped, "ignored": listing["ignored"],
            "converted": sizes["train"] + sizes["test"] - kept_colour if colour else 0,
            "multi_frame": multi_frame, "train_size": sizes["train"], "test_size": sizes["test"],
            **_copy_counts(kept["train"], kept["test"])}


def _rewrite(file: Path, rows: int, change=lambda rows: rows, chunk: int = 4096) -> None:
    """Keep the first `rows` rows of an .npy file, each chunk passed through `change`."""
    old = np.load(file, mmap_mode="r")
    tmp = file.with_name(f"rewritten-{file.name}")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=old.dtype, shape=(rows, *change(old[:1]).shape[1:]))
    for i in range(0, rows, chunk):
        new[i:i + chunk] = change(old[i:min(i + chunk, rows)])
    new.flush()
    del new, old
    os.replace(tmp, file)


def _refuse_bad(path: Path, bad: list, skip_bad: bool) -> None:
    if bad and not skip_bad:
        file, err = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"dataset={path}: cannot read {file}{more} ({err}); fix or remove it, or pass "
                        f"skip_bad_images=true to leave such files out")


def _npz_header(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """{array name: (shape, dtype)} of the images and labels in an .npz, from the headers alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
            if "images" not in members:
                raise DataError(f"dataset={path}: no 'images' array (has: {', '.join(members) or 'none'}); "
                                f"write it with numpy.savez(path, images=..., labels=...)")
            headers = {}
            for name in ("images", "labels"):
                if name in members:
                    with archive.open(members[name]) as f:
                        version = np.lib.format.read_magic(f)
                        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                            np.lib.format.read_array_header_2_0
                        shape, _, dtype = read(f)
                    headers[name] = (shape, dtype)
            return headers
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as err:
        raise DataError(f"dataset={path}: not a readable .npz ({reason(err)}); write it with "
                        f"numpy.savez(path, images=..., labels=...)") from None


def _check_npz(path: Path) -> None:
    """Shapes, types and size from the headers, before a byte of pixels is read."""
    headers = _npz_header(path)
    shape, dtype = headers["images"]
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise DataError(f"dataset={path}: 'images' must be uint8 [N,H,W] or [N,H,W,C] with C 1, 3 or 4, "
                        f"got {dtype} {list(shape)}")
    if shape[0] == 0 or 0 in shape[1:3]:
        raise DataError(f"dataset={path}: 'images' holds no pictures ({list(shape)}); expected [N,H,W] with "
                        f"N, H and W at least 1")
    if "labels" in headers:
        label_shape, label_dtype = headers["labels"]
        if label_shape != (shape[0],) or label_dtype.kind not in "iu":
            raise DataError(f"dataset={path}: 'labels' must be integers >= 0, one per image, got "
                            f"{label_dtype} {list(label_shape)}")
    size = int(np.prod(shape))
    import psutil
    free = psutil.virtual_memory().available
    if 3 * size > free:   # the array, its squared copy and the split written out
        raise DataError(f"dataset={path}: 'images' is {size / 1e9:.1f} GB; preparing an .npz reads it whole "
                        f"and needs ~{3 * size / 1e9:.0f} GB of memory, {free / 1e9:.0f} GB is free: save it "
                        f"as a folder of pictures instead (prepared one at a time)")


def _decode_npz(path: Path, image_size: int, out: Path) -> dict:
    """An .npz is read whole (numpy cannot map a zip member), so it must fit in memory."""
    from PIL import Image
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["images"]
            labels = data["labels"] if "labels" in data.files else None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"dataset={path}: not a readable .npz ({reason(err)})") from None
    if labels is not None and len(labels) and labels.min() < 0:
        raise DataError(f"dataset={path}: 'labels' must be integers >= 0, one per image, got {labels.min()}")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    colour = images.ndim == 4
    size = image_size or auto_size([min(images.shape[1:3])])
    mode = {3: "RGB", 4: "RGBA"}.get(images.shape[3] if colour else 0, "L")
    if images.shape[1:3] == (size, size) and mode != "RGBA":
        squared = np.ascontiguousarray(images)
    else:
        squared = np.stack([square(to_viewed(Image.fromarray(image, mode), colour), size) for image in images])
    present = np.unique(labels) if labels is not None else None
    classes = [str(c) for c in range(int(present.max()) + 1)] if present is not None and len(present) else None
    contents = [hashlib.sha256(image.tobytes()).hexdigest() for image in squared]   # copies: the same pixels
    train, test = _held_out(path, _copy_groups(contents))
    if colour:   # [N,H,W,3] -> [N,3,H,W], the layout the models take
        squared = squared.transpose(0, 3, 1, 2)
    np.save(out / "train.npy", np.ascontiguousarray(squared[train]))
    np.save(out / "test.npy", np.ascontiguousarray(squared[test]))
    if classes is not None:
        np.save(out / "train_labels.npy", labels[train].astype(np.int64))
        np.save(out / "test_labels.npy", labels[test].astype(np.int64))
    return {"channels": 3 if colour else 1, "image_size": size, "class_names": classes,
            "split": f"{HELD_OUT:.0%} held out at random (seed {SPLIT_SEED})", "skipped": 0, "ignored": 0,
            "converted": 0, "multi_frame": 0, "train_size": len(train), "test_size": len(test),
            **_copy_counts([contents[i] for i in train], [contents[i] for i in test])}


def _copy_groups(contents: list[str]) -> np.ndarray:
    """For each item, the index of the first item with the same contents (its own where none)."""
    first: dict[str, int] = {}
    return np.asarray([first.setdefault(c, i) for i, c in enumerate(contents)], dtype=np.int64)


def _copy_counts(train: list[str], test: list[str]) -> dict:
    """{copies: pictures that copy an earlier one, leaked: test pictures that copy a training one}."""
    seen = set(train)
    return {"copies": len(train) + len(test) - len(seen | set(test)), "leaked": sum(c in seen for c in test)}


def _held_out(path: Path, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of len(groups) images: a seeded HELD_OUT share for testing, each in
    order; `groups` (_copy_groups) puts the copies of a picture wherever the first of them is drawn."""
    n = len(groups)
    n_test = max(MIN_TEST, round(HELD_OUT * n))
    if n - n_test < MIN_TRAIN:
        raise DataError(f"dataset={path}: {n} images; a held-out test share needs at least "
                        f"{MIN_TRAIN + MIN_TEST} ({MIN_TRAIN} to train, {MIN_TEST} to test)")
    drawn = np.zeros(n, dtype=bool)
    drawn[np.random.default_rng(SPLIT_SEED).permutation(n)[:n_test]] = True
    test = drawn[groups]   # without copies every group is its own: the draw of the code before
    return np.flatnonzero(~test), np.flatnonzero(test)


def _check_sizes(path: Path, n_train: int, n_test: int) -> None:
    if n_train < MIN_TRAIN or n_test < MIN_TEST:
        raise DataError(f"dataset={path}: {n_train} training and {n_test} test images; need at least "
                        f"{MIN_TRAIN} and {MIN_TEST}")


# -- the cache ------------------------------------------------------------------------

def digest(folder: Path, class_names) -> str:
    """The prepared set's identity: its arrays and class names (the same pictures, labels and
    split give the same digest, wherever and whenever they were prepared)."""
    parts = [class_names] + [file_digest(folder / f"{name}.npy") if (folder / f"{name}.npy").is_file() else None
                             for name in ARRAY_FILES]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _writable_folder(root: Path) -> Path:
    """DATA_ROOT/prepared, or the user's cache folder where that cannot be written (said once)."""
    first, fallback = cache_roots(root)
    problems = []
    for folder in (first, fallback):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            problems.append(f"{folder}: {err.strerror or reason(err)}")
            continue
        if folder == fallback:
            print(f"note: {first} cannot be written ({problems[0]}); the prepared set goes to {fallback}", flush=True)
        return folder
    raise DataError(f"cannot write a prepared set to {first} or {fallback} ({'; '.join(problems)}); pass "
                    f"data_root= a writable folder (or set VQGEN_DATA)")


def _write_cache(root: Path, key: str, fill) -> tuple[Path, dict]:
    """fill(folder) writes the arrays there and returns the set's info; the folder is then
    renamed into place: a reader sees all of it or none. Returns (the cache folder, info)."""
    folder = _writable_folder(root)
    cache = folder / key
    tmp = folder / f".tmp-{key}-{os.getpid()}@{socket.gethostname()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        info = fill(tmp)
        info["digest"] = digest(tmp, info["class_names"])
        (tmp / "info.json").write_text(json.dumps(info))
        try:
            os.rename(tmp, cache)
        except OSError:   # another process prepared it meanwhile: theirs is as good
            if not (cache / "info.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(folder)
    return cache, {**info, "key": key}


KEY = re.compile(r"[0-9a-f]{20}")
TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{20}-(\d+)@(.+)")   # .tmp-<key>-<pid>@<host>, as _write_cache names them


def _prune(folder: Path) -> None:
    """Remove what nobody will read: prepared sets unused for PRUNE_DAYS, and the temporaries
    of preparations whose process died (on this machine; elsewhere, after a day). Only entries
    named as this module names them are touched."""
    now, host = time.time(), socket.gethostname()
    for entry in folder.iterdir():
        try:
            temporary = TEMPORARY.fullmatch(entry.name)
            if temporary:
                dead = temporary.group(2) == host and not _alive(int(temporary.group(1)))
                if dead or now - entry.stat().st_mtime > 86_400:
                    shutil.rmtree(entry, ignore_errors=True)
            elif KEY.fullmatch(entry.name) and (entry / "info.json").is_file() and \
                    now - (entry / "info.json").stat().st_mtime > PRUNE_DAYS * 86_400:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue   # removed by another process meanwhile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
