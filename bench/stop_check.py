"""What agreeing on a stop signal costs: one all-reduce of a scalar flag, read back on the host.

    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 bench/stop_check.py [--checks 2000]

common.distributed.agreed_stop runs it every STOP_CHECK_EVERY steps under DDP. Prints the
microseconds of one check (median of --checks, after 100 warm-up ones) and what checking every
step or every STOP_CHECK_EVERY steps would add to a step of the default prior on this CPU and to
a 2 s step, and how long a signal can then wait for its checkpoint at a 2 s step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from common.distributed import STOP_CHECK_EVERY, StopSignal, agreed_stop  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=2000)
    p.add_argument("--step-ms", type=float, default=30.0, help="a training step to compare with (ms)")
    args = p.parse_args()
    dist.init_process_group("gloo")
    stop = StopSignal()
    times = []
    for i in range(args.checks + 100):
        started = time.perf_counter()
        agreed_stop(stop, 0)   # step 0: a check step for every STOP_CHECK_EVERY
        if i >= 100:
            times.append(time.perf_counter() - started)
    us = statistics.median(times) * 1e6
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} processes ({dist.get_backend()}): one stop check {us:.0f} us (median of "
              f"{args.checks})")
        for step_ms in (args.step_ms, 2000.0):
            print(f"  at a {step_ms:.0f} ms step: every step +{us / 1e3 / step_ms:.2%}, every {STOP_CHECK_EVERY} "
                  f"steps +{us / 1e3 / step_ms / STOP_CHECK_EVERY:.3%}")
        print(f"  a signal waits at most {STOP_CHECK_EVERY} steps for its checkpoint: {STOP_CHECK_EVERY * 2} s at 2 s a step")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
