"""The browser demo under load, on loopback only, bounded in count and in time.

    python bench/app_load.py [--prior mnist] [--clients 32] [--requests 512] [--n 64]
                             [--max-seconds 600] [--cache-max-age 60] [--cache-max-mb 50] [--no-settle]

Serves the page in a child process with a gradio cache folder of its own, then sends
`--requests` Sample calls (n digits each, a new seed each) from `--clients` threads
through gradio's Python client, the page's own API. Prints requests/s, median and
max latency, errors, and the cache's files and bytes: before the first call, at
its largest while serving (sampled every second), right after the last, and once
the page's age rule has had time to run (age + 2 s; --no-settle skips that wait).
Needs the app extra (`make app` installs it).
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

    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from sampling.page_cache import cache_size
    from sampling.serving import free_port, served

    cache = Path(tempfile.mkdtemp(prefix="vqgen-app-cache-"))
    with served(["--prior", args.prior, "--cache-max-age", str(args.cache_max_age),
                 "--cache-max-mb", str(args.cache_max_mb)], free_port(),
                env={"GRADIO_TEMP_DIR": str(cache)}) as url:
        before = cache_size(cache)
        numbers, lock = itertools.count(), threading.Lock()
        latencies, errors = [], []
        started = time.perf_counter()

        def client_loop(_):
            client = Client(url, verbose=False, download_files=False)
            while True:
                with lock:
                    i = next(numbers)
                if i >= args.requests or time.perf_counter() - started > args.max_seconds:
                    return
                t = time.perf_counter()
                try:
                    client.predict([], args.n, 0.5, 1.0, 0, 1.0, i, 1.0, api_name="/on_sample")
                    latencies.append(time.perf_counter() - t)
                except (AppError, OSError) as err:
                    errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)

        peak, sending = [before], threading.Event()

        def watch_cache():   # the most bytes the cache holds while the requests come in
            while not sending.wait(1.0):
                peak.append(max(peak[-1], cache_size(cache), key=lambda s: s[2]))   # by bytes

        watcher = threading.Thread(target=watch_cache)
        watcher.start()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, range(args.clients)))
        seconds = time.perf_counter() - started
        sending.set()
        watcher.join()
        after = cache_size(cache)
        if not args.no_settle:
            time.sleep(args.cache_max_age + 2)
        settled = cache_size(cache)

    done = len(latencies)
    print(f"{done + len(errors)} requests of {args.n} digits from {args.clients} clients in {seconds:.1f} s: "
          f"{done / seconds:.2f} requests/s")
    if latencies:
        print(f"latency: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s "
              "(queued behind the other clients: the page answers one request at a time)")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    for name, (files, folders, size) in [("before", before), ("at its largest while serving", peak[-1]),
                                ("after the last request", after),
                                *([] if args.no_settle else [(f"{args.cache_max_age}+ s later", settled)])]:
        print(f"cache {name}: {files} files in {folders} folders, {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
