"""The demo page in a child process, for the browser test and the benchmarks."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"


class PageURL(str):
    """The served page's URL, with the pid of the process serving it."""
    pid: int


@contextlib.contextmanager
def served(args: list[str], port: int, timeout: float = 120.0, env: dict | None = None):
    """The demo page (sampling/app.py) in a child process on 127.0.0.1:port for the length of a with-block
    (the browser test and the bench use it); yields its URL (a PageURL) once the page answers."""
    import urllib.request
    command = [sys.executable, str(APP), "--port", str(port), *args]
    log = tempfile.TemporaryFile("w+")   # not a pipe: a chatty child must never block on a full one
    child = subprocess.Popen(command, cwd=APP.parent.parent, env={**os.environ, **(env or {})},
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    url = PageURL(f"http://127.0.0.1:{port}/")
    url.pid = child.pid
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if child.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the app exited ({child.returncode}): {log.read()[-2000:]}")
            try:
                opener.open(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s") from None
                time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

