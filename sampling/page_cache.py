"""The demo page's image files, bounded by age and by size.

gradio writes every answer's images to its cache folder (GRADIO_TEMP_DIR) and keeps
them. Its own delete_cache walks the same file sets without copying them, so under
concurrent requests it dies on "Set changed size during iteration" and the files pile
up (measured: 32k files after 512 requests). An age bound alone is not enough either:
issue 26 saw 500 requests of 64 digits in 5 minutes leave 254 MB inside the 600 s
window. So we delete,
oldest first, every file past the age bound and as many more as it takes to bring
the folder under the size bound: twice a second, and before each request.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

SWEEP_PERIOD = 0.5   # seconds between sweeps: what the page writes in that time needs room below the bound
TRIM_TO = 0.8        # a sweep keeps the folder under this share of the bound until it has seen a burst


def cache_size(folder) -> tuple[int, int, int]:
    """(files, folders, bytes) under folder; what the page deletes while we count is not counted
    (os.walk skips a folder that vanishes under it)."""
    files = folders = size = 0
    for root, dirs, names in os.walk(folder):
        folders += len(dirs)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
    return files, folders, size


def list_cache(page) -> tuple[list[tuple[float, int, str]], int]:
    """(ctime, bytes, path) of each file in the page's cache folder (page.GRADIO_CACHE) that may
    be deleted, oldest first, and the bytes of those the page keeps for good (the canvases'
    backgrounds), which fill the folder too. The folder is walked, not gradio's lists of its
    files, which miss the files it is still writing (measured: 3% over the bound)."""
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in page.blocks.values()))
    found, kept_bytes = [], 0
    for root, _, names in os.walk(page.GRADIO_CACHE):
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):   # deleted under us
                info = os.lstat(path)
                if path in keep:
                    kept_bytes += info.st_size
                else:
                    found.append((info.st_ctime, info.st_size, path))
    return sorted(found), kept_bytes


def sweep_cache(page, max_age: float, max_bytes: int, trim_to: float | None = None,
                listed: tuple[list, int] | None = None) -> tuple[int, int]:
    """Delete the page's cached files (each answer's images), oldest first: all older than
    max_age seconds, then more while the folder holds over trim_to bytes (default TRIM_TO of
    max_bytes), leaving room below max_bytes for what is written before the next sweep.
    Returns (files deleted, bytes left)."""
    found, kept_bytes = listed or list_cache(page)
    now, total, gone = time.time(), kept_bytes + sum(f[1] for f in found), []
    trim_to = TRIM_TO * max_bytes if trim_to is None else trim_to
    for ctime, size, path in found:
        if now - ctime <= max_age and total <= trim_to:
            break
        with contextlib.suppress(OSError):   # gone already, or a folder that still holds another file
            os.remove(path)
            gone.append(path)
            os.rmdir(os.path.dirname(path))   # gradio puts each file in a folder of its own
        total -= size
    for files in page.temp_file_sets:   # forget them, so gradio never serves a deleted file
        files.difference_update(gone)
    return len(gone), total


class PageCache:
    """The bounds of one page's cache: swept by a thread of its own every SWEEP_PERIOD, and
    before each request (the page's handlers call sweep()). Sweeps never overlap. Each keeps
    the folder below the size bound by the most that was ever written between two sweeps
    (at first a fifth of it), so that the next writes fit too."""

    def __init__(self, max_age: float, max_bytes: int):
        self.max_age, self.max_bytes = max_age, max_bytes
        self.page = None
        self.headroom = (1 - TRIM_TO) * max_bytes
        self._left = 0   # bytes after the last sweep
        self._lock = threading.Lock()

    def sweep(self) -> int:
        if self.page is None:
            return 0
        with self._lock:
            found, kept_bytes = listed = list_cache(self.page)
            written = kept_bytes + sum(f[1] for f in found) - self._left   # since the last sweep
            self.headroom = min(max(self.headroom, written), self.max_bytes)
            deleted, self._left = sweep_cache(self.page, self.max_age, self.max_bytes,
                                              trim_to=self.max_bytes - self.headroom, listed=listed)
            return deleted

    def keep_sweeping(self, page) -> None:
        """Start sweeping `page` for the life of the process (a daemon thread)."""
        self.page = page

        def loop():
            while True:
                time.sleep(SWEEP_PERIOD)
                try:
                    self.sweep()
                except Exception as err:   # a failed sweep is retried, never the end of sweeping
                    print(f"warning: cache sweep failed: {err}", file=sys.stderr)
        threading.Thread(target=loop, daemon=True, name="cache-sweeper").start()
