"""The browser demo under load, on loopback only, bounded in count and in time.

    python bench/app_load.py [--prior mnist] [--clients 32] [--requests 512] [--n 64]
                             [--max-seconds 600] [--cache-max-age 60] [--cache-max-mb 50] [--no-settle]

Serves the page in a child process, GRADIO_TEMP_DIR a fresh folder that also holds another
app's file (which must survive), then sends `--requests` Sample calls (n digits each, a new
seed each) from `--clients` threads through gradio's Python client, the page's own API, and
downloads each answer's picture as soon as it arrives, as a browser would. An answer refused
as "busy" (the cache full of pictures not yet fetched) is retried after a second and counted.
Prints requests/s, median and max latency, errors, failed downloads, and the page's folder
by files and bytes on disk (what `du` counts): before the first call, at its largest while
serving (sampled every 0.2 s), right after the last, and once the page's age rule has had
time to run (age + 2 s; --no-settle skips that wait). Needs the app extra (`make app`).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="mnist", help="a run folder or a shipped run's name")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--n", type=int, default=64, help="digits per request")
    p.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long")
    p.add_argument("--cache-max-age", type=int, default=60, help="the page's --cache-max-age")
    p.add_argument("--cache-max-mb", type=float, default=50, help="the page's --cache-max-mb")
    p.add_argument("--no-settle", action="store_true", help="do not wait for the age rule after the last request")
    args = p.parse_args()

    import urllib.request
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from sampling.page_cache import cache_size
    from sampling.serving import free_port, served

    shared = Path(tempfile.mkdtemp(prefix="vqgen-app-shared-"))
    other_app = shared / "another-app" / "their.bin"
    other_app.parent.mkdir()
    other_app.write_bytes(bytes(2 * 2**20))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with served(["--prior", args.prior, "--cache-max-age", str(args.cache_max_age),
                 "--cache-max-mb", str(args.cache_max_mb)], free_port(),
                env={"GRADIO_TEMP_DIR": str(shared)}) as url:
        (folder,) = shared.glob("vqgen-page-*")
        before = cache_size(folder)
        numbers, lock = itertools.count(), threading.Lock()
        latencies, errors, busy, failed_downloads = [], [], [], []
        started = time.perf_counter()

        def client_loop(_):
            client = Client(url, verbose=False, download_files=False)
            while True:
                with lock:
                    i = next(numbers)
                if i >= args.requests or time.perf_counter() - started > args.max_seconds:
                    return
                t = time.perf_counter()
                while True:
                    try:
                        picture, *_ = client.predict([], args.n, 0.5, 1.0, 0, 1.0, i, 1.0, api_name="/on_sample")
                        break
                    except (AppError, OSError) as err:
                        if "the page is busy" not in str(err):
                            errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                            return
                        busy.append(i)
                        time.sleep(1.0)
                latencies.append(time.perf_counter() - t)
                try:
                    with opener.open(picture["url"], timeout=60) as got:
                        if got.read(8) != b"\x89PNG\r\n\x1a\n":
                            failed_downloads.append(i)
                except OSError:
                    failed_downloads.append(i)

        peak, sending = [before], threading.Event()

        def watch_cache():   # the most bytes the page's folder holds while the requests come in
            while not sending.wait(0.2):
                peak.append(max(peak[-1], cache_size(folder), key=lambda s: s[1]))

        watcher = threading.Thread(target=watch_cache)
        watcher.start()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, range(args.clients)))
        seconds = time.perf_counter() - started
        sending.set()
        watcher.join()
        after = cache_size(folder)
        if not args.no_settle:
            time.sleep(args.cache_max_age + 2)
        settled = cache_size(folder)
    removed = not folder.exists()
    intact = other_app.is_file() and other_app.stat().st_size == 2 * 2**20
    import shutil
    shutil.rmtree(shared, ignore_errors=True)   # the bench's own stand-in for /tmp/gradio

    done = len(latencies)
    print(f"{done + len(errors)} requests of {args.n} digits from {args.clients} clients in {seconds:.1f} s: "
          f"{done / seconds:.2f} requests/s; 'busy' answers retried: {len(busy)}")
    if latencies:
        print(f"latency: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s "
              "(queued behind the other clients: the page answers one request at a time)")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else "")
          + f"; pictures that could not be downloaded on arrival: {len(failed_downloads)}")
    for name, (files, size) in [("before", before), ("at its largest while serving", peak[-1]),
                                ("after the last request", after),
                                *([] if args.no_settle else [(f"{args.cache_max_age}+ s later", settled)])]:
        print(f"page folder {name}: {files} files, {size / 2**20:.1f} MB on disk")
    print(f"another app's file in GRADIO_TEMP_DIR intact: {intact}; "
          f"the page's folder removed at exit: {removed}")


if __name__ == "__main__":
    main()
