"""The one training loop both stages share, in the idiom of Accelerate's examples.

A stage hands `fit` a `Task` (model, optimizer factory, loss, evaluation, plots);
`fit` owns everything else: device placement, DDP sharding, the learning-rate
schedule, an optional second model stepped beside the first (a GAN's
discriminator, `SideModel`), an optional moving average of the weights
(`WeightAverage`), progress, NaN detection, metrics.jsonl, tracking, atomic checkpoints
every `save_every` steps (independent of evaluations), at the end and on
SIGINT/SIGTERM, and exact resume.

Exact resume holds because nothing random is left to chance: the data order of
an epoch is a function of (seed, epoch), and every process's RNG state is saved
with the weights, so a resumed CPU run ends with the same bits as an unbroken one,
under DDP too. Under DDP the processes also agree on which checkpoint to resume,
when to stop on a signal and when a loss went non-finite, so none is left waiting
alone in a collective.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from common.config import ConfigError, config_from_file, config_to_dict
from common.distributed import (StopSignal, TrainingError, agree_on_resume_point, agreed_stop, check_layout,
                                check_replicas_agree, raise_if_nonfinite, restore_rng, rng_states, together)
from common.runs import (CONFIG, append_metrics, read_last_metrics, read_metrics, save_run_config,
                         save_run_weights, truncate_metrics)
from common.tracking import make_accelerator, start_tracking

# Keys that may change between a run and its resumption; any other difference
# means the checkpoint belongs to a different experiment.
# decoder_*: the tokenizer's second phase, which checks its own config in its own folder
RESUMABLE_KEYS = {"epochs", "max_steps", "eval_every", "save_every", "tracker", "resume", "keep_checkpoints",
                  "out_dir", "data_root", "log_every"}
RESUMABLE_PREFIX = "decoder_"
LOG_EVERY = 25


@dataclass
class SideModel:
    """A second model trained in step with the task's (a GAN's discriminator).

    Each step, the task's loss is called as loss_fn(model, batch, side, step) with the
    side model's parameters frozen (so that loss moves the main model only) and returns
    (loss, logs, handover); then the side model takes one step of its own on
    loss_fn(side, batch, handover) -> (loss, logs). Its weights and optimizer go into the
    same checkpoints, so resume stays exact; it is never exported with the weights."""
    model: nn.Module
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...], object], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]


class WeightAverage:
    """An exponential moving average of a model's floating-point parameters (Polyak averaging,
    as in the EMA weights of GAN generators and diffusion models): it smooths the step-to-step
    noise of training, most of all an adversarial one. `swapped_in` lends it to the model for
    evaluation and export, the training weights coming back afterwards; at the end of fit it
    stays in the model, which is what the caller goes on to use (the checkpoints keep both).

    `decay` is per step of one process, i.e. per batch_size samples: a step of N processes sees
    N times the samples, so it decays by decay**N, and the average keeps the same half-life in
    samples whatever the process count (8 GPUs would otherwise ship a decoder 5x older)."""

    def __init__(self, model: nn.Module, decay: float, processes: int = 1):
        self.decay = decay ** processes
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): a for i, a in enumerate(self.average)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, a in enumerate(self.average):
            a.copy_(state[str(i)])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.average)

    @contextlib.contextmanager
    def swapped_in(self):
        trained = [p.detach().clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, trained)


@dataclass
class Task:
    stage: str                                            # "tokenizer" | "prior": tags every file
    model: nn.Module
    train_tensors: tuple[torch.Tensor, ...]               # on the host, indexed along dim 0; batches move to the device
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    evaluate: Callable[[nn.Module], dict[str, float]]     # main process, unwrapped model in eval mode
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    report: Callable[[Path, nn.Module, list[dict], list[dict]], None] | None = None  # plots
    export: Callable[[nn.Module], dict[str, torch.Tensor]] = field(default=lambda m: m.state_dict())
    # Fresh training tensors for an epoch (same length as train_tensors), e.g. augmented
    # data; must be a function of the epoch alone so that resume stays exact.
    epoch_tensors: Callable[[int], tuple[torch.Tensor, ...]] | None = None
    side: SideModel | None = None                         # a second model stepped beside this one


def warmup_for(steps: int, processes: int) -> int:
    """A warmup of `steps` steps of one process, in steps of `processes` processes: the same
    number of samples, so 8 GPUs do not spend most of a short run warming up."""
    return math.ceil(steps / processes)


def lr_at(step: int, total: int, cfg, processes: int = 1) -> float:
    """Linear warmup (warmup_steps counted in steps of one process), then a decay to
    lr * min_lr_ratio: cosine over the rest of the run, or (wsd) the peak held until
    the last cooldown_share of the steps, then linear."""
    warmup = warmup_for(cfg.warmup_steps, processes)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(total * cfg.cooldown_share))
        progress = min(1.0, max(0.0, (step - (total - cooldown)) / cooldown))
        return cfg.lr - (cfg.lr - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def epoch_steps(n_train: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch: each of `world` processes takes batch_size of its share."""
    steps = (n_train // world) // batch_size
    if steps == 0:
        raise ConfigError(f"batch_size={batch_size} x {world} processes exceeds the {n_train} training images")
    return steps


def epoch_order(n: int, seed: int, epoch: int, length: int | None = None) -> torch.Tensor:
    """The shuffled order of epoch `epoch` (`length` samples of n, n by default): the same on
    every process and after resume. An epoch longer than the set cycles through fresh shuffles."""
    length = length or n
    rounds = -(-length // n)
    orders = [torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch * rounds + r))
              for r in range(rounds)]
    return torch.cat(orders)[:length]


def _check_resume_config(out_dir: Path, cfg) -> None:
    saved_file = out_dir / CONFIG
    if not saved_file.is_file():
        return
    saved = config_to_dict(config_from_file(type(cfg), saved_file))
    now = config_to_dict(cfg)
    changed = [k for k in now if k not in RESUMABLE_KEYS and not k.startswith(RESUMABLE_PREFIX)
               and saved.get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"{out_dir} holds a run with a different config ({diffs}); "
                          f"use another out_dir= or delete {out_dir} to start afresh")


def find_resume_point(cfg, stage: str) -> Path | None:
    """Which checkpoint to resume from, checked before any heavy work."""
    out_dir = Path(cfg.out_dir)
    found = list_checkpoints(out_dir / "checkpoints")
    if cfg.resume == "never":
        if found:
            raise ConfigError(f"{out_dir} already holds checkpoints; pass resume=auto to continue that run, "
                              f"or choose another out_dir= (nothing is deleted for you)")
        return None
    if cfg.resume == "auto":
        if found:
            _check_resume_config(out_dir, cfg)
        return found[-1] if found else None
    chosen = Path(cfg.resume)   # checkpoints/step_N of some run: that run's config must match too
    _check_resume_config(chosen.parent.parent, cfg)
    if found:
        _check_resume_config(out_dir, cfg)
    return chosen


def fit(cfg, task: Task, accelerator=None, last: bool = True) -> dict:
    """Train `task.model` under `cfg`; returns the last evaluation's metrics.
    last=False keeps the accelerator (and its process group) for another fit."""
    resume_from = find_resume_point(cfg, task.stage)
    accelerator = accelerator or make_accelerator(cfg.tracker)
    out_dir = Path(cfg.out_dir)
    is_main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes

    model = task.model
    optimizer = (task.make_optimizer or _default_optimizer(cfg))(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    side = _prepare_side(task.side, accelerator)
    average = WeightAverage(raw_model, cfg.weight_average, world) if cfg.weight_average > 0 else None
    # The training set stays on the host (a user's set may be a memory map larger than memory,
    # or than the GPU's): each batch is gathered there and moved to the device.
    data = task.train_tensors

    n_train = data[0].shape[0]
    per_epoch = cfg.epoch_samples or n_train
    steps_per_epoch = epoch_steps(per_epoch, world, cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    # An evaluation (full test set, plots) costs seconds, a checkpoint almost nothing:
    # the two cadences are separate so a run can checkpoint often and evaluate rarely.
    eval_every = {0: steps_per_epoch, -1: total_steps}.get(cfg.eval_every, cfg.eval_every)
    save_every = cfg.save_every or steps_per_epoch

    trained = _TrainedState(raw_model, optimizer, side, average)
    step, history = 0, []
    resume_from = agree_on_resume_point(resume_from, accelerator.device)
    if resume_from is not None:
        state = together(lambda: _load_resume_state(resume_from, task.stage, trained), on="local-first")
        check_layout(state, resume_from, world, cfg.batch_size)
        restore_rng(state["rng"], rank, accelerator)
        step, history = state["step"], state["history"]
        together(lambda: truncate_metrics(out_dir / "metrics.jsonl", step))
        accelerator.print(f"resuming {task.stage} from {resume_from} (step {step}/{total_steps})")
    else:
        torch.manual_seed(cfg.seed + rank)
    together(lambda: save_run_config(out_dir, cfg))
    # Plain `accelerate launch` on a machine with several GPUs uses them all: say so.
    accelerator.print(f"{task.stage}: {world} process(es) on {accelerator.device.type}, batch {cfg.batch_size} each "
                      f"({world * cfg.batch_size} a step), {accelerator.mixed_precision} mixed precision, "
                      f"{total_steps} steps")
    start_tracking(accelerator, cfg.tracker, task.stage, config_to_dict(cfg), str(out_dir))

    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    metrics = read_last_metrics(out_dir / "metrics.jsonl") if step >= stop_at else {}

    def save(step_now: int):
        raise_if_nonfinite(bad_step, out_dir)
        rng = rng_states(accelerator)   # a collective: every process takes part
        parts = lambda: {**trained.state_dict(), "rng": rng, "history": history,  # noqa: E731
                         "layout": {"processes": world, "batch_size": cfg.batch_size}}
        # main only; a failure there (a full disk, a folder in the way) stops every process in one line
        together(lambda: save_checkpoint(out_dir / "checkpoints", step_now, parts(), task.stage,
                                         cfg.keep_checkpoints))

    def evaluate_on_main(step_now: int, train_logs: dict) -> dict:
        raw_model.eval()
        # Under mixed precision, every phase evaluates under the same autocast (accelerate
        # wraps only the prepared module's forward: phase one's decode would run in fp32).
        with average.swapped_in() if average is not None else contextlib.nullcontext(), torch.no_grad(), \
                accelerator.autocast():
            result = {"step": step_now, "epoch": round(step_now / steps_per_epoch, 3), **clock(),
                      **train_logs, **task.evaluate(raw_model)}
            append_metrics(out_dir / "metrics.jsonl", result)
            save_run_weights(out_dir, task.export(raw_model), task.stage)
            if task.report is not None:
                task.report(out_dir, raw_model, history, read_metrics(out_dir / "metrics.jsonl"))
        raw_model.train()
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
        accelerator.print(f"[{task.stage}] " + " ".join(f"{k}={v}" for k, v in shown.items()))
        return result

    def evaluate(step_now: int, train_logs: dict) -> dict:
        raise_if_nonfinite(bad_step, out_dir)
        result = together(lambda: evaluate_on_main(step_now, train_logs)) or {}
        accelerator.log({k: v for k, v in result.items() if isinstance(v, (int, float))}, step=step_now)
        return result

    bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    # time_s: wall time of the run; train_s: the part spent in training steps
    # (evaluation, plots and checkpoints excluded), the figure benchmarks compare.
    time_before = history[-1]["time_s"] if history else 0.0
    train_before = history[-1].get("train_s", 0.0) if history else 0.0
    t_start, paused = time.perf_counter(), 0.0

    def clock() -> dict:
        now = time.perf_counter() - t_start
        return {"time_s": round(now + time_before, 2), "train_s": round(now - paused + train_before, 2)}

    sums, n_logged = {}, 0
    progress = _progress(is_main, stop_at, step, task.stage)
    model.train()
    order_epoch, order = -1, None
    with StopSignal() as stop, progress:  # the bar is closed on errors too, so they print last
        while step < stop_at:
            epoch, index = divmod(step, steps_per_epoch)
            if epoch != order_epoch:  # each process takes its own stride of the shared order
                order_epoch = epoch
                order = epoch_order(n_train, cfg.seed, epoch, per_epoch)[rank::world]
                if task.epoch_tensors is not None:   # its cost counts in train_s
                    data = task.epoch_tensors(epoch)
            batch_ids = order[index * cfg.batch_size:(index + 1) * cfg.batch_size]
            batch = tuple(t[batch_ids].to(accelerator.device, non_blocking=True) for t in data)

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, cfg, world)
            if side is None:
                loss, logs = task.loss_fn(model, batch)
            else:
                side.raw.requires_grad_(False)   # the main loss moves the main model only
                loss, logs, handover = task.loss_fn(model, batch, side.raw, step)
                side.raw.requires_grad_(True)
            accelerator.backward(loss)
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            finite = torch.isfinite(loss.detach())
            if side is not None:
                side_loss, side_logs = side.step(batch, handover, accelerator, cfg.grad_clip)
                logs = {**logs, **side_logs}
                finite = finite & torch.isfinite(side_loss.detach())   # a NaN discriminator must not be saved

            # Remember the first bad step on the device: no host sync per step.
            bad_step = torch.where(~finite & (bad_step < 0), torch.full_like(bad_step, step), bad_step)
            for k, v in {"loss": loss, **logs}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_logged += 1
            step += 1
            progress.update(1)

            if step % LOG_EVERY == 0 or step == stop_at:
                raise_if_nonfinite(bad_step, out_dir)
                means = {f"train_{k}": (v / n_logged).item() for k, v in sums.items()}
                history.append({"step": step, **clock(), **means})
                progress.set_postfix(loss=f"{means['train_loss']:.4f}")
                sums, n_logged = {}, 0
            due_eval = step % eval_every == 0 or step == stop_at
            due_save = step % save_every == 0 or step == stop_at
            if due_eval or due_save:
                pause_start = time.perf_counter()
                if due_eval:
                    train_logs = {k: v for k, v in history[-1].items() if k.startswith("train_")} if history else {}
                    metrics = evaluate(step, train_logs)
                if due_save:
                    save(step)
                paused += time.perf_counter() - pause_start
            signal_name = agreed_stop(stop, step)
            if signal_name and step < stop_at:
                save(step)
                progress.close()
                accelerator.print(f"{signal_name}: saved a checkpoint at step {step} in {out_dir}/checkpoints; "
                                  f"run the same command again to resume")
                accelerator.end_training()
                raise SystemExit(130 if signal_name == "SIGINT" else 143)
    for model_now in [raw_model] + ([side.raw] if side is not None else []):
        said = check_replicas_agree(model_now, accelerator.device)
        if said:
            accelerator.print(said)
    if average is not None:
        average.copy_to_model()
    if last:
        accelerator.end_training()
    return metrics


@dataclass
class _TrainedState:
    """What training changes besides the counters and the RNG: one place knows the keys
    a checkpoint stores them under, for saving and for resuming alike."""
    model: nn.Module             # unwrapped
    optimizer: torch.optim.Optimizer
    side: _PreparedSide | None
    average: WeightAverage | None

    def state_dict(self) -> dict:
        parts = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.side is not None:
            parts.update(side_model=self.side.raw.state_dict(), side_optimizer=self.side.optimizer.state_dict())
        if self.average is not None:
            parts["weight_average"] = self.average.state_dict()
        return parts

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.side is not None:
            self.side.raw.load_state_dict(state["side_model"])
            self.side.optimizer.load_state_dict(state["side_optimizer"])
        if self.average is not None:
            self.average.load_state_dict(state["weight_average"])


@dataclass
class _PreparedSide:
    model: nn.Module             # as prepared (DDP-wrapped when distributed)
    raw: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable

    def step(self, batch, handover, accelerator, grad_clip: float) -> tuple[torch.Tensor, dict]:
        """One optimizer step of the side model; returns its loss and logs."""
        loss, logs = self.loss_fn(self.model, batch, handover)
        accelerator.backward(loss)
        if grad_clip > 0:
            accelerator.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, logs


def _prepare_side(side: SideModel | None, accelerator) -> _PreparedSide | None:
    if side is None:
        return None
    model, optimizer = accelerator.prepare(side.model, side.make_optimizer(side.model))
    return _PreparedSide(model, accelerator.unwrap_model(model), optimizer, side.loss_fn)


def _default_optimizer(cfg):
    def make(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return make


def _load_resume_state(path: Path, stage: str, trained: _TrainedState) -> dict:
    """A checkpoint's state, loaded into the model and optimizers; one line when it does not fit."""
    state = load_checkpoint(path, stage)
    try:
        trained.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path}: does not fit this run's model or optimizer "
                              f"({str(err).splitlines()[0][:200]}); resume=never or another out_dir= "
                              "starts afresh") from None
    if not isinstance(state.get("step"), int) or not isinstance(state.get("history"), list) or "rng" not in state:
        raise CheckpointError(f"{path}: its counters are missing or damaged; delete it to resume from an older one")
    return state


def _progress(enabled: bool, total: int, initial: int, stage: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc=stage, dynamic_ncols=True,
                mininterval=1.0)
