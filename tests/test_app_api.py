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
import time
import urllib.request

import pytest

from sampling.serving import free_port, served

if importlib.util.find_spec("gradio") is None:
    pytest.skip("no API test here: pip install -e '.[app]'", allow_module_level=True)

CACHE_MAX_AGE = 2   # seconds: short, so that the test sees the cleanup happen
CACHE_MAX_MB = 3   # for the flood: well under what its 48 answers of 64 digits write
# Sample tab, in order: digits, n, cfg, temperature, top_k, top_p, seed, keep_likeliest
GOOD = [[], 4, 0.5, 1.0, 0, 1.0, 0, 1.0]


class Page:
    """The served page's API: call(name, inputs) -> the outputs, or raises Refused(message)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
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
    gallery, *_ = client.call("on_sample", sample_with(n=3, seed=2**63 - 1))
    assert len(gallery) == 3


def test_the_pages_image_files_are_deleted_once_old_even_under_concurrent_requests(page):
    """gradio's own delete_cache died here on the first sweep that met a request (32k files kept)."""
    from concurrent.futures import ThreadPoolExecutor
    client, cache = page
    for round_ in range(2):   # the second round checks the sweeper outlived the first
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda seed: client.call("on_sample", sample_with(n=8, seed=seed)), range(16)))
        written = list(cache.rglob("*.png"))
        assert len(written) >= 8   # the answers' images go through the cache
        deadline = time.monotonic() + 3 * CACHE_MAX_AGE + 10
        while time.monotonic() < deadline and any(p.exists() for p in written):
            time.sleep(0.5)
        assert not any(p.exists() for p in written), f"round {round_}: files older than --cache-max-age remain"
        assert not any(p.parent.exists() for p in written), "their folders remain"   # one folder per file


@pytest.fixture(scope="module")
def size_bound_page(tiny_prior_run, mnist_root, tmp_path_factory):
    """A page whose age bound never acts within the test: only the size bound deletes."""
    cache = tmp_path_factory.mktemp("gradio-cache-bounded")
    args = ["--prior", str(tiny_prior_run[0]), "--cache-max-age", "600", "--cache-max-mb", str(CACHE_MAX_MB)]
    with served(args, free_port(), env={"VQGEN_DATA": str(mnist_root), "GRADIO_TEMP_DIR": str(cache)}) as url:
        yield Page(url), cache


def test_a_flood_of_answers_never_holds_more_than_the_size_bound(size_bound_page):
    """Answers come faster than the age bound lets them go: the size bound holds the folder,
    oldest first, while every answer still arrives whole."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from sampling.page_cache import cache_size
    client, cache = size_bound_page
    sizes, flooding = [], threading.Event()

    def watch():   # the folder's bytes, sampled while the answers come
        while not flooding.wait(0.05):
            sizes.append(cache_size(cache)[2])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda seed: client.call("on_sample", sample_with(n=64, seed=seed)), range(48)))
    finally:
        flooding.set()
        watcher.join()
    assert all(len(gallery) == 64 for gallery, *_ in answers)
    files_left = cache_size(cache)[0]
    assert files_left < 48 * 64 * 0.9, f"{files_left} of {48 * 64} files left: the bound never acted"
    assert len(sizes) > 10 and max(sizes) <= CACHE_MAX_MB * 2**20, f"largest {max(sizes) / 2**20:.3f} MB"
    print(f"files left {files_left}, largest {max(sizes) / 2**20:.3f} MB")
