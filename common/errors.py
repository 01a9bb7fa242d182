"""The base of every error a user can fix, and the wrapper that prints it as one line."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class VQGenError(Exception):
    pass


def run_main(main: Callable[[list[str]], object], argv: list[str], also: tuple[type, ...] = ()) -> None:
    """Entry-script wrapper: user errors (VQGenError and `also`) become one line on stderr, exit 2."""
    try:
        main(argv)
    except (VQGenError, *also) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # One of several processes, done and its files written: leave without the interpreter's
        # teardown, where gloo's worker threads can still be alive and abort the process
        # ("terminate called without an active exception", 1 run in ~7 of the 2-process test
        # here, after destroy_process_group; pytorch/pytorch#179291 describes the race).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (usage stays in --help), exit 2 as usual;
    --help shows every flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
