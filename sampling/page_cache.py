"""The demo page's image files: in a folder of its own, bounded by age, by what the disk
holds and by their number.

gradio writes every answer's pictures (and every upload) to its cache folder and keeps
them. By default that folder is /tmp/gradio, shared by every gradio app on the machine,
so a sweeper of that folder deletes other programs' files. The page therefore makes a
folder of its own at start (`private_cache_folder`: a fresh 0700 folder, never one that
exists already, never a symlink), points gradio at it before gradio is imported, sweeps
only inside it and removes it at exit.

A file's cost is what the disk holds for it, not its length: gradio puts each file in a
folder of its own, so a 600-byte PNG costs a 4 KB block and a 4 KB folder (measured:
20.5 MB of PNGs held 254 MB). We count allocated blocks (st_blocks) of files and folders,
and the number of files, and delete oldest first. A file younger than MIN_FETCH_AGE may
not have reached its browser yet, so the size bound never deletes it: when only such files
are left, the next answer is refused with a "busy" line instead (the bound holds, and no
answer loses its pictures). The room kept free for the next answers follows what was
written between two sweeps, but never more than half the bound, so it cannot ratchet to
"delete everything".
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SWEEP_PERIOD = 0.5     # seconds between sweeps
MIN_FETCH_AGE = 30.0   # seconds a new file is kept from the size bound, so that its browser can fetch it
HEADROOM = 0.2         # share of the bounds kept free at first for the next answers ...
MAX_HEADROOM = 0.5     # ... growing with what is written between sweeps, to at most this share
BLOCK = 512            # st_blocks counts 512-byte units on Linux and macOS


def private_cache_folder(parent: str | Path | None = None) -> Path:
    """A new folder only this page writes to, under `parent` (default: the system's temp
    folder). mkdtemp creates it with O_EXCL semantics and mode 0700, so it is never a folder
    or a symlink that existed before."""
    return Path(tempfile.mkdtemp(prefix="vqgen-page-", dir=parent)).resolve()


def disk_bytes(info: os.stat_result) -> int:
    """What the disk holds for a file or folder: its allocated blocks, not its length."""
    return getattr(info, "st_blocks", 0) * BLOCK or info.st_size


@dataclass
class Listing:
    files: list[tuple[float, int, str]]   # (ctime, disk bytes, path) of deletable files, oldest first
    kept_bytes: int                       # files the page keeps for good (canvas backgrounds)
    folder_bytes: int                     # the folders under the root
    kept_files: int

    @property
    def bytes(self) -> int:
        return self.kept_bytes + self.folder_bytes + sum(f[1] for f in self.files)

    @property
    def count(self) -> int:
        return self.kept_files + len(self.files)


def list_cache(root: str | Path, keep: set[str] = frozenset()) -> Listing:
    """Every plain file under root (symlinks are never followed, and are listed to be deleted
    like files: the page never makes one), and what the folders themselves hold."""
    files, kept_bytes, folder_bytes, kept_files = [], 0, 0, 0
    for folder, dirs, names in os.walk(root):   # followlinks=False: a symlinked folder is not entered
        for name in dirs:
            with contextlib.suppress(OSError):
                folder_bytes += disk_bytes(os.lstat(os.path.join(folder, name)))
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):   # deleted under us
                info = os.lstat(path)
                if path in keep:
                    kept_bytes += disk_bytes(info)
                    kept_files += 1
                else:
                    files.append((info.st_ctime, disk_bytes(info), path))
    return Listing(sorted(files), kept_bytes, folder_bytes, kept_files)


def cache_size(root: str | Path) -> tuple[int, int]:
    """(files, bytes on disk) under root, folders included: what `du` and the bound count."""
    listing = list_cache(root)
    return listing.count, listing.bytes


def _remove(path: str, root: str) -> int:
    """Delete a file and, when that empties it, its folder (gradio gives each file one);
    returns the disk bytes freed by the folder."""
    os.remove(path)   # unlinks a symlink itself, never its target
    folder = os.path.dirname(path)
    if folder != root:
        with contextlib.suppress(OSError):   # still holds another file
            freed = disk_bytes(os.lstat(folder))
            os.rmdir(folder)
            return freed
    return 0


def sweep_cache(root: str | Path, max_age: float, max_bytes: int, max_files: int, room_bytes: int = 0,
                room_files: int = 0, keep: set[str] = frozenset(), min_fetch_age: float = MIN_FETCH_AGE
                ) -> tuple[list[str], Listing, int, int]:
    """Delete, oldest first, every file older than max_age, then files older than min_fetch_age
    while the folder holds more than max_bytes - room_bytes on disk or more than
    max_files - room_files files. Returns (paths deleted, the listing before, bytes and files left)."""
    root = str(root)
    listing = list_cache(root, keep)
    now, used, count, gone = time.time(), listing.bytes, listing.count, []
    for ctime, size, path in listing.files:
        age = now - ctime
        over = used > max_bytes - room_bytes or count > max_files - room_files
        if not (age > max_age or (over and age > min_fetch_age)):
            break   # the rest are younger still, and the folder only shrinks
        with contextlib.suppress(OSError):   # gone already
            used -= size + _remove(path, root)
            count -= 1
            gone.append(path)
    return gone, listing, used, count


class PageCache:
    """One page's cache folder and its bounds: swept by a thread of its own every SWEEP_PERIOD
    and before each answer (which `sweep` refuses while the folder is full of files too young
    to delete). Sweeps never overlap."""

    def __init__(self, folder: str | Path, max_age: float, max_bytes: int, max_files: int,
                 min_fetch_age: float = MIN_FETCH_AGE):
        self.folder = Path(folder)
        info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode):   # a symlink (or anything else) is never swept
            raise ValueError(f"{self.folder}: the page's cache must be a real folder, not a link")
        self.max_age, self.max_bytes, self.max_files = max_age, max_bytes, max_files
        self.min_fetch_age = min_fetch_age
        self.room_bytes, self.room_files = int(HEADROOM * max_bytes), int(HEADROOM * max_files)
        self.page = None
        self._left = (0, 0)   # bytes and files after the last sweep
        self._lock = threading.Lock()

    def _keep(self) -> set[str]:
        blocks = self.page.blocks.values() if self.page is not None else []
        return set().union(*(getattr(block, "keep_in_cache", set()) for block in blocks))

    def sweep(self) -> bool:
        """One sweep; True when the folder has room for the next answers."""
        with self._lock:
            gone, before, used, count = sweep_cache(self.folder, self.max_age, self.max_bytes, self.max_files,
                                                    self.room_bytes, self.room_files, self._keep(),
                                                    self.min_fetch_age)
            # what was written since the last sweep sets the room kept for the next ones, within limits
            written = before.bytes - self._left[0], before.count - self._left[1]
            self.room_bytes = min(max(self.room_bytes, written[0]), int(MAX_HEADROOM * self.max_bytes))
            self.room_files = min(max(self.room_files, written[1]), int(MAX_HEADROOM * self.max_files))
            self._left = (used, count)
            if self.page is not None:   # forget them, so gradio never serves a deleted file
                for files in self.page.temp_file_sets:
                    files.difference_update(gone)
            return used + self.room_bytes <= self.max_bytes and count + self.room_files <= self.max_files

    def keep_sweeping(self, page) -> None:
        """Sweep `page`'s folder for the life of the process (a daemon thread)."""
        self.page = page

        def loop():
            while True:
                time.sleep(SWEEP_PERIOD)
                try:
                    self.sweep()
                except Exception as err:   # a failed sweep is retried, never the end of sweeping
                    print(f"warning: cache sweep failed: {err}", file=sys.stderr)
        threading.Thread(target=loop, daemon=True, name="cache-sweeper").start()

    @staticmethod
    def remove_folder(folder: str | Path) -> None:
        """Delete the page's folder and everything in it (at exit); rmtree never follows a
        symlink inside it, so nothing outside it is touched."""
        shutil.rmtree(folder, ignore_errors=True)
