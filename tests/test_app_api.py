"""The demo page through its HTTP API, as any client can call it: every bad value gets
the page's own one-line message, and the page's image files do not pile up.

Calls go through gradio's plain REST route (POST /gradio_api/call/NAME, then read the
answer's event stream) with hand-written JSON bodies, so values a polite client
would never send (NaN, 2**64, text for a number) get through too. Needs the `app`
extra (`make test` installs it); the page runs in a child process, so this process
never imports gradio.
"""
import importlib.util
import json
import math
import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import huge_png
from sampling.serving import free_port, served

if importlib.util.find_spec("gradio") is None:
    pytest.skip("no API test here: pip install -e '.[app]'", allow_module_level=True)

CACHE_MAX_AGE = 2   # seconds: short, so that the test sees the cleanup happen
CACHE_MAX_MB = 3   # for the flood: well under what its 48 answers of 64 digits write
# Sample tab, in order: digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest
GOOD = [[], 4, 0.5, 1.0, 0, 1.0, 0, 1.0]


class Page:
    """The served page's API: call(name, inputs) -> the outputs, or raises Refused(message)."""

    def __init__(self, url):
        self.url, self.pid = url.rstrip("/"), url.pid
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback only

    def call(self, name: str, inputs: list):
        body = json.dumps({"data": inputs}, allow_nan=True).encode()   # NaN and Infinity as JS writes them
        request = urllib.request.Request(f"{self.url}/gradio_api/call/{name}", body,
                                         {"Content-Type": "application/json"})
        with self.opener.open(request, timeout=60) as answer:
            event_id = json.load(answer)["event_id"]
        with self.opener.open(f"{self.url}/gradio_api/call/{name}/{event_id}", timeout=120) as stream:
            event = None
            for line in stream.read().decode().splitlines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    data = json.loads(line[6:])
                    if event == "error":
                        raise Refused(data.get("error") if isinstance(data, dict) else str(data))
                    return data
        raise AssertionError(f"no answer from {name}")


    def fetch(self, answer: dict) -> bytes:
        """Download a file the page answered with, as a browser would."""
        with self.opener.open(answer["url"], timeout=60) as got:
            return got.read()

    def upload(self, name: str, data: bytes) -> str:
        """Upload a file as the page's canvas does; returns its path on the server."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.url}/gradio_api/upload", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with self.opener.open(request, timeout=60) as answer:
            return json.load(answer)[0]

    def rss_mb(self) -> float:
        """The page process's peak memory (VmHWM), from /proc."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


class Refused(Exception):
    pass


@pytest.fixture(scope="module")
def page(tiny_prior_run, mnist_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gradio-cache")
    args = ["--prior", str(tiny_prior_run[0]), "--cache-max-age", str(CACHE_MAX_AGE)]
    with served(args, free_port(), env={"VQGEN_DATA": str(mnist_root), "GRADIO_TEMP_DIR": str(cache)}) as url:
        yield Page(url), cache


def sample_with(**changes):
    names = ["digits", "n", "cfg", "temperature", "top_k", "top_p", "seed", "keep_likeliest"]
    values = dict(zip(names, GOOD)) | changes
    return [values[name] for name in names]


def message_of(client: Page, args, name="on_sample") -> str:
    with pytest.raises(Refused) as caught:
        client.call(name, args)
    return str(caught.value)


@pytest.mark.parametrize("changes,expected", [
    ({"seed": -1}, "seed=-1: must be a whole number from 0 to 9223372036854775807"),
    ({"seed": 2**64}, "seed=18446744073709551616: must be a whole number from 0"),
    ({"seed": 1.5}, "seed: 1.5 is not a whole number"),
    ({"seed": math.nan}, "seed: nan is not a finite number"),
    ({"seed": math.inf}, "seed: inf is not a finite number"),
    ({"seed": None}, "seed: enter a number"),
    ({"seed": "seven"}, "seed: enter a number"),
    ({"cfg": math.nan}, "guidance: nan is not a finite number"),
    ({"temperature": math.nan}, "temperature: nan is not a finite number"),
    ({"top_p": math.nan}, "top-p: nan is not a finite number"),
    ({"top_k": 2.5}, "top-k: 2.5 is not a whole number"),
    ({"keep_likeliest": math.nan}, "keep the likeliest share: nan is not a finite number"),
    ({"n": math.nan}, "samples: nan is not a finite number"),
])
@pytest.mark.slow
def test_every_bad_sample_value_gets_the_pages_own_one_line_message(page, changes, expected):
    client, _ = page
    message = message_of(client, sample_with(**changes))
    assert expected in message and "\n" not in message.strip(), message
    assert "Traceback" not in message and "Overflow" not in message


def test_values_outside_a_fields_own_range_or_choices_are_refused_in_one_line(page):
    """gradio's components check these before our code runs; their message names the value and the range."""
    client, _ = page
    for changes, expected in [({"n": 65}, "greater than maximum value 64"), ({"n": 0}, "less than minimum value 1"),
                              ({"cfg": -1}, "less than minimum value 0"),
                              ({"temperature": 5}, "greater than maximum value 2.0"),
                              ({"keep_likeliest": 0.1}, "less than minimum value 0.5"),
                              ({"digits": ["3", "x"]}, "is not in the list of choices")]:
        message = message_of(client, sample_with(**changes))
        assert expected in message and "\n" not in message.strip(), message


def test_a_bad_test_digit_number_through_the_api_is_a_message(page):
    client, _ = page
    for index, expected in [(10**12, "pick an index from 0 to 9999"), (math.nan, "not a finite number"),
                            (-1, "pick an index from 0 to 9999")]:
        message = message_of(client, ["test digit", None, index, "auto"], name="on_tokenize")
        assert expected in message and "\n" not in message.strip(), message


def test_good_values_still_sample(page):
    client, _ = page
    picture, _, codes, info = client.call("on_sample", sample_with(n=3, seed=2**63 - 1))
    assert info.startswith("3 samples in") and codes.count("<td") == 49
    assert client.fetch(picture)[:8] == b"\x89PNG\r\n\x1a\n"   # one picture per answer


def page_folder(cache) -> Path:
    """The folder the page made for itself inside GRADIO_TEMP_DIR (the only one it writes to)."""
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("vqgen-page-")]
    return folder


@pytest.mark.slow
def test_the_pages_files_are_deleted_once_old_even_under_concurrent_requests(page):
    """gradio's own delete_cache died here on the first sweep that met a request (32k files kept)."""
    from concurrent.futures import ThreadPoolExecutor
    client, cache = page
    for round_ in range(2):   # the second round checks the sweeper outlived the first
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda seed: client.call("on_sample", sample_with(n=8, seed=seed)), range(16)))
        written = list(page_folder(cache).rglob("*.png"))
        assert len(written) >= 8   # the answers' pictures go through the page's folder
        deadline = time.monotonic() + 3 * CACHE_MAX_AGE + 10
        while time.monotonic() < deadline and any(p.exists() for p in written):
            time.sleep(0.5)
        assert not any(p.exists() for p in written), f"round {round_}: files older than --cache-max-age remain"
        assert not any(p.parent.exists() for p in written), "their folders remain"   # one folder per file


@pytest.mark.slow
def test_the_page_never_touches_other_programs_files(page):
    """GRADIO_TEMP_DIR (default /tmp/gradio) is shared by every gradio app: the page sweeps only the
    folder it made, so another app's old files and fresh large ones outlive its sweeps."""
    client, cache = page
    other = cache / "another-app"
    other.mkdir(exist_ok=True)
    old, large = other / "old.png", other / "large.bin"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 10_000, time.time() - 10_000))
    large.write_bytes(os.urandom(2 * 2**20))
    for seed in range(4):
        client.call("on_sample", sample_with(n=64, seed=seed))
    time.sleep(3 * CACHE_MAX_AGE)   # several sweeps, by age and by size
    assert old.read_bytes() == b"x" * 1000 and large.stat().st_size == 2 * 2**20


@pytest.fixture(scope="module")
def size_bound_page(tiny_prior_run, mnist_root, tmp_path_factory):
    """A page whose age bound never acts within the test: only the size bound deletes."""
    cache = tmp_path_factory.mktemp("gradio-cache-bounded")
    args = ["--prior", str(tiny_prior_run[0]), "--cache-max-age", "600", "--cache-max-mb", str(CACHE_MAX_MB),
            "--cache-fetch-time", "2"]
    with served(args, free_port(), env={"VQGEN_DATA": str(mnist_root), "GRADIO_TEMP_DIR": str(cache)}) as url:
        yield Page(url), cache


@pytest.mark.slow
def test_a_flood_of_answers_stays_under_the_bound_on_disk_and_every_answer_can_be_downloaded(size_bound_page):
    """Answers come faster than the age bound lets them go: the size bound, counted as `du`
    counts (blocks of files and of their folders), holds the folder, oldest first, while every
    answer's picture can still be downloaded when it arrives."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from sampling.page_cache import cache_size
    client, cache = size_bound_page
    folder = page_folder(cache)
    sizes, flooding = [], threading.Event()

    def watch():   # the folder's bytes on disk, sampled while the answers come
        while not flooding.wait(0.05):
            sizes.append(cache_size(folder)[1])

    def ask(seed):
        for _ in range(60):
            try:
                picture, *_ = client.call("on_sample", sample_with(n=64, seed=seed))
                return client.fetch(picture)
            except Refused as busy:   # the bound holds by refusing while every file is still young
                assert "the page is busy" in str(busy), busy
                time.sleep(0.5)
        raise AssertionError("the page stayed busy")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            pictures = list(pool.map(ask, range(96)))
    finally:
        flooding.set()
        watcher.join()
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    files_left = cache_size(folder)[0]
    assert files_left < 96, f"{files_left} of 96 answers' files left: the bound never acted"
    assert len(sizes) > 10 and max(sizes) <= CACHE_MAX_MB * 2**20, f"largest {max(sizes) / 2**20:.3f} MB"
    print(f"files left {files_left}, largest {max(sizes) / 2**20:.3f} MB on disk")


def test_a_picture_declaring_too_many_pixels_is_refused_before_decoding(page):
    """A 13000x13000 PNG compresses to ~200 KB; decoding it would cost gigabytes."""
    client, _ = page
    bomb = huge_png(13000, 13000)
    assert len(bomb) < 300_000
    path = client.upload("bomb.png", bomb)
    drawing = {"background": file_data(path), "layers": [], "composite": file_data(path), "id": None}
    message = message_of(client, ["drawing", drawing, 0, "auto"], name="on_tokenize")
    assert "has 169 megapixels; the most taken is 4.2" in message and "scale it down" in message, message
    assert "\n" not in message.strip()
    assert client.rss_mb() < 1500, "the server decoded it"


def test_loading_runs_changes_nothing_for_other_visitors(page):
    """A load is per visitor (session state): a bad path leaves the page serving its runs."""
    client, _ = page
    answer = client.call("on_load", ["/no/such/run", ""])
    status = next(a for a in answer if isinstance(a, str))   # the visitor's state comes back as null
    assert "Cannot load those runs" in status and "accelerate launch prior/train.py" in status
    picture, _, codes, info = client.call("on_sample", sample_with(n=2))
    assert info.startswith("2 samples in") and "codes of 32 in this grid" in codes   # the tiny tokenizer's
    answer = client.call("on_load", ["mnist/prior-default", ""])   # a good load, in another session
    assert any("prior-default" in a for a in answer if isinstance(a, str))
    _, _, codes, _ = client.call("on_sample", sample_with(n=2))
    assert "codes of 32 in this grid" in codes, "one visitor's load changed the runs another one sees"


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}
