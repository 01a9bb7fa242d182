"""What several DDP processes must agree on, and collectives that are no-ops in one process,
so that model and loop code reads the same whether it runs alone or as one of many.

The rule every piece here keeps: a question whose answer can differ between processes (did
the checkpoint save? did a signal arrive? did a loss go non-finite?) is answered on every
process together, at the same step, so that none is left waiting alone in a collective while
another one has stopped. A failure on one process becomes one line on every process.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from common.checkpoint import list_checkpoints
from common.config import ConfigError
from common.errors import VQGenError

T = TypeVar("T")
STOP_SIGNALS = ("SIGINT", "SIGTERM")


class TrainingError(VQGenError):
    """Training cannot go on (non-finite loss, a failure on another process, ...); printed as one line."""


def processes() -> int:
    """How many processes train together (1 outside torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if processes() > 1 else 0


def local_rank() -> int:
    """This process's number on its machine (torchrun and accelerate set LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if processes() > 1 else 0


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """t combined over every process, in place: op is sum, max or min."""
    if processes() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (N, D) tensor from every process (same N everywhere)."""
    if processes() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(processes())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast(t: torch.Tensor) -> torch.Tensor:
    """The main process's copy of t on every process, in place."""
    if processes() > 1:
        dist.broadcast(t, src=0)
    return t


def broadcast_object(obj):
    """The main process's copy of a picklable object on every process."""
    if processes() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- failures: one process's error, every process's line ---------------------------------

def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if isinstance(err, VQGenError) and text else f"{type(err).__name__}: {text[0] if text else ''}"


def _first_failure(error: BaseException | None) -> tuple[int, str] | None:
    """(rank, line) of the lowest-ranked process whose error is not None, seen by every process."""
    mine = None if error is None else (rank(), _one_line(error))
    if processes() == 1:
        return mine
    every = [None] * processes()
    dist.all_gather_object(every, mine)
    return next((found for found in every if found is not None), None)


def _agree(error: BaseException | None) -> None:
    """Raise on every process when any one failed: its own error where it happened, elsewhere a
    TrainingError naming the process and its line (so each process prints one line and exits)."""
    failure = _first_failure(error)
    if failure is None:
        return
    if error is not None:
        raise error
    raise TrainingError(f"process {failure[0]} failed, so this one stops too: {failure[1]}")


def together(fn: Callable[[], T], on: str = "main") -> T | None:
    """Run fn on some processes and make its success or failure known to all of them.

    on="main": global rank 0 only (checkpoints, evaluations, metrics); the others get None.
    on="local-first": each machine's first process, then (once that worked everywhere) the
    others, e.g. a data fetch that the others then find in place; every process gets fn().
    Either way every process returns or every process raises, instead of some waiting forever
    in the next collective while one has died."""
    first = rank() == 0 if on == "main" else local_rank() == 0
    result, error = None, None
    if first:
        try:
            result = fn()
        except Exception as err:   # shared with the others below, then re-raised here
            error = err
    _agree(error)
    if on == "main" or processes() == 1:
        return result
    if not first:
        try:
            result = fn()
        except Exception as err:
            error = err
    _agree(error)
    return result


# -- the stop signal -------------------------------------------------------------------

class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (agreed_stop). A second
    signal of the same kind, or any signal while the process waits in a collective outside the
    loop, is not swallowed: the handler is only installed for the loop itself."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received == name:   # asked twice: the first ask was not heard in time, stop now
            raise KeyboardInterrupt
        self.received = name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Processes agree on a signal every this many steps: at a 2 s step a signal waits at most
# 10 s for its checkpoint, inside the 30 s grace torchrun and SLURM give; each check is one
# all-reduce of a scalar (bench/stop_check.py measures its cost).
STOP_CHECK_EVERY = 5


def agreed_stop(stop: StopSignal, step: int) -> str | None:
    """The signal to stop on, the same answer on every process. A signal may reach one process
    only, or reach them at different steps; all of them ask together every STOP_CHECK_EVERY
    steps, so none enters a checkpoint's barrier while another waits in a gradient all-reduce."""
    if processes() == 1:
        return stop.received
    if step % STOP_CHECK_EVERY:
        return None
    flag = torch.tensor(STOP_SIGNALS.index(stop.received) + 1 if stop.received else 0)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    all_reduce(flag, "max")
    return STOP_SIGNALS[int(flag.item()) - 1] if flag.item() else None


# -- non-finite losses -----------------------------------------------------------------

def raise_if_nonfinite(bad_step: torch.Tensor, out_dir: Path) -> None:
    """Every process raises the same line when any one saw a non-finite loss (called at the same
    steps everywhere), instead of one raising while the others wait in an all-reduce."""
    if processes() > 1:   # the earliest bad step of any process (the rest follow from it)
        never = torch.iinfo(torch.long).max
        first = all_reduce(torch.where(bad_step < 0, never, bad_step), "min")
        bad_step = torch.where(first == never, -1, first)
    bad = int(bad_step.item())
    if bad >= 0:
        last = list_checkpoints(Path(out_dir) / "checkpoints")
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
        raise TrainingError(f"non-finite loss at step {bad}; stopped without saving it ({kept}); "
                            "try a lower lr= or grad_clip=")


# -- resume point, replicas and random states --------------------------------------------

def agree_on_resume_point(resume_from: Path | None, device) -> Path | None:
    """The main process chooses the checkpoint; every process must see that very one, or all
    stop with one line (several machines without shared storage would resume from different steps)."""
    if processes() == 1:
        return resume_from
    chosen = broadcast_object(str(resume_from) if resume_from is not None else None)
    path = Path(chosen) if chosen is not None else None
    missing = all_reduce(torch.tensor(int(path is not None and not path.is_dir()), device=device))
    if missing.item():
        raise ConfigError(f"{int(missing.item())} process(es) cannot see {path}, the checkpoint the main process "
                          f"resumes from; on several machines point out_dir= at storage they all share, "
                          f"or pass resume=never")
    return path


def check_replicas_agree(model: torch.nn.Module, device) -> str | None:
    """Under DDP every process must hold the same weights and codebook statistics; returns
    what to print when they do."""
    if processes() == 1:
        return None
    worst = torch.zeros((), device=device)
    state = model.state_dict()
    for tensor in state.values():
        reference = broadcast(tensor.detach().clone())
        worst = torch.maximum(worst, (reference.float() - tensor.float()).abs().max())
    all_reduce(worst, "max")
    if worst.item() > 0:
        raise TrainingError(f"DDP replicas disagree (max difference {worst.item():.3g}); please report this")
    return f"replicas agree: {len(state)} tensors identical on {processes()} processes"


def rng_states(accelerator) -> dict[str, torch.Tensor]:
    """Every process's RNG states, one row per rank: each draws its own dropout masks,
    so each must get its own state back on resume."""
    states = {"torch": torch.get_rng_state()}
    if accelerator.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state()
    if accelerator.num_processes == 1:
        return {k: v[None] for k, v in states.items()}
    return {k: accelerator.gather(v[None].to(accelerator.device)).cpu() for k, v in states.items()}


def restore_rng(saved: dict[str, torch.Tensor], rank_now: int, accelerator) -> None:
    def mine(t: torch.Tensor) -> torch.Tensor:   # checkpoints before per-rank states hold one row, unstacked
        return (t[rank_now] if t.dim() == 2 else t).clone()   # a fresh tensor: set_rng_state misreads a view of a row
    torch.set_rng_state(mine(saved["torch"]))
    if accelerator.device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(mine(saved["cuda"]))


def check_layout(state: dict, path: Path, processes_now: int, batch_size: int) -> None:
    """A run resumes on as many processes as it started with: the step counter, the
    schedule and each process's share of the data all depend on it."""
    saved = state.get("layout", {"processes": 1, "batch_size": batch_size})   # before layouts were saved: 1
    if saved["processes"] != processes_now:
        raise ConfigError(f"{path} was written by {saved['processes']} process(es) x batch_size "
                          f"{saved['batch_size']}, this run has {processes_now}; resume with --num_processes "
                          f"{saved['processes']}, or start afresh with another out_dir=")
