"""The one training loop both stages share, in the idiom of Accelerate's examples.

A stage hands `fit` a `Task` (model, optimizer factory, loss, evaluation, plots);
`fit` owns everything else: device placement, DDP sharding, the learning-rate
schedule, an optional second model stepped beside the first (a GAN's
discriminator, `SideModel`), an optional moving average of the weights
(`WeightAverage`), progress, NaN detection, metrics.jsonl, tracking, atomic checkpoints
every `save_every` steps (independent of evaluations), at the end and on
SIGINT/SIGTERM, and exact resume.

Held-out data is watched while training: about EVALS_PER_RUN evaluations a run on bounded
subsets (`eval_samples`), the weights that scored best there kept (`BestWeights`) and shipped,
a run stopped after `patience` evaluations without improvement, and one warning line when
training and held-out loss part. The final evaluation measures the shipped weights on the
whole held-out set, and warns again where they part.

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from common.config import ConfigError, config_from_file, config_to_dict
from common.distributed import (StopSignal, TrainingError, agree_on_resume_point, agreed_stop, broadcast_object,
                                check_layout, check_replicas_agree, raise_if_nonfinite, restore_rng, rng_states,
                                together)
from common.runs import (CONFIG, append_metrics, read_last_metrics, read_metrics, save_run_config,
                         save_run_weights, truncate_metrics)
from common.tracking import make_accelerator, start_tracking

# Keys that may change between a run and its resumption; any other difference
# means the checkpoint belongs to a different experiment.
# decoder_*, refiner_*: the tokenizer's later phases, which check their own config in their own folders
RESUMABLE_KEYS = {"epochs", "max_steps", "eval_every", "save_every", "tracker", "resume", "keep_checkpoints",
                  "out_dir", "data_root", "log_every", "patience", "eval_samples"}
RESUMABLE_PREFIX = ("decoder_", "refiner_")
LOG_EVERY = 25
EVALS_PER_RUN = 10   # eval_every=0: held-out loss measured about this often, whatever the run's length
ETA_STEPS, ETA_SECONDS = 50, 20.0   # the run says how long it will take after this many steps or seconds


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
    # Main process, unwrapped model in eval mode: held-out (and training) metrics on at most
    # `limit` items of each (None: all of the held-out set, the final evaluation).
    evaluate: Callable[[nn.Module, int | None], dict[str, float]]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    report: Callable[[Path, nn.Module, list[dict], list[dict]], None] | None = None  # plots
    export: Callable[[nn.Module], dict[str, torch.Tensor]] = field(default=lambda m: m.state_dict())
    # Fresh training tensors for each pass over the set (same length as train_tensors), e.g.
    # augmented data; a function of the pass's number alone, so that resume stays exact.
    pass_tensors: Callable[[int], tuple[torch.Tensor, ...]] | None = None
    side: SideModel | None = None                         # a second model stepped beside this one
    score: str | None = None          # the held-out metric (lower is better) that picks the weights that ship
                                      # and stops a run that no longer improves it; None: the last weights ship
    evaluate_first: bool = False      # also measure (and offer) the weights it starts from: a phase that may
                                      # be better not taken at all
    overfit_warning: Callable[[dict], str | None] | None = None   # a line when training and held-out loss part
    load_export: Callable[[nn.Module, dict[str, torch.Tensor]], None] = field(
        default=lambda m, weights: m.load_state_dict(weights))   # the inverse of export
    after: str = ""                   # what the run does once this fit is done, for the time estimate


def evaluation_subset(n: int, limit: int | None) -> torch.Tensor | slice:
    """Which of n items an evaluation measures: all (limit None or >= n), else `limit` evenly
    spaced, the same ones at every evaluation (a set stored in class order is sampled across
    its classes)."""
    if limit is None or limit >= n:
        return slice(None)
    return torch.linspace(0, n - 1, limit).round().long()


# A short run (a small set's: 114 steps for 738 icons) warmed up for 100 steps and began its decay
# before it reached its peak rate; capped, it reads 6% better held out (docs/EXPERIMENTS.md).
MAX_WARMUP_SHARE = 0.2


def warmup_for(steps: int, processes: int) -> int:
    """A warmup of `steps` steps of one process, in steps of `processes` processes: the same
    number of samples, so 8 GPUs do not spend most of a short run warming up."""
    return math.ceil(steps / processes)


def lr_at(step: int, total: int, cfg, processes: int = 1) -> float:
    """Linear warmup (warmup_steps counted in steps of one process, at most MAX_WARMUP_SHARE of
    the run), then a decay to lr * min_lr_ratio: cosine over the rest of the run, or (wsd) the
    peak held until the last cooldown_share of the steps, then linear."""
    warmup = min(warmup_for(cfg.warmup_steps, processes), max(1, int(total * MAX_WARMUP_SHARE)))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(total * cfg.cooldown_share))
        progress = min(1.0, max(0.0, (step - (total - cooldown)) / cooldown))
        return cfg.lr - (cfg.lr - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def may_stop_early(step: int, total: int, cfg) -> bool:
    """Whether a run may stop for lack of held-out progress at `step`: under wsd only once its
    decay has begun (a plateau at the peak rate is what the decay is for: a run stopped on it
    misses the drop the decay gives), under cosine at any step."""
    return cfg.lr_schedule != "wsd" or step >= total - max(1, round(total * cfg.cooldown_share))


def epoch_steps(n_train: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch: each of `world` processes takes batch_size of its share."""
    steps = (n_train // world) // batch_size
    if steps == 0:
        raise ConfigError(f"batch_size={batch_size} x {world} processes exceeds the {n_train} training images")
    return steps


def run_steps(cfg, n_train: int, world: int) -> int:
    """Optimizer steps of a whole run of cfg on n_train items: its schedule's length (max_steps aside)."""
    return cfg.epochs * epoch_steps(cfg.epoch_samples or n_train, world, cfg.batch_size)


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
    """Train `task.model` under `cfg`; returns the final evaluation's metrics.
    last=False keeps the accelerator (and its process group) for another fit."""
    resume_from = find_resume_point(cfg, task.stage)
    trainer = Trainer(cfg, task, accelerator or make_accelerator(cfg.tracker))
    trainer.resume(resume_from)
    if task.evaluate_first and trainer.step == 0 and trainer.evaluate_and_keep_best():
        trainer.stop_early()
    with StopSignal() as stop, trainer.progress:  # the bar is closed on errors too, so they print last
        while trainer.step < trainer.stop_at:
            trainer.train_step()
            due_eval = trainer.step % trainer.eval_every == 0 or trainer.step == trainer.total_steps
            due_save = trainer.step % trainer.save_every == 0 or trainer.step == trainer.stop_at
            if trainer.step == trainer.stop_at and not due_eval:
                # Stopped by max_steps off the schedule: checkpoint before evaluating, so a resumed
                # run does not count toward patience an evaluation an unbroken run never made.
                trainer.save()
                trainer.evaluate_and_keep_best()
                break
            if due_eval and trainer.evaluate_and_keep_best():
                trainer.stop_early()   # held-out loss stopped improving: what is left is not worth training
                due_save = True
            if due_save:
                trainer.save()
            trainer.stop_on_signal(stop)
    return trainer.finish(last)


class Trainer:
    """The loop's state and its steps, as `fit` calls them: train a step, evaluate and keep the
    best weights, save, stop on a signal or when held-out loss stops improving, finish."""

    def __init__(self, cfg, task: Task, accelerator):
        self.cfg, self.task, self.accelerator = cfg, task, accelerator
        self.out_dir = Path(cfg.out_dir)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        optimizer = (task.make_optimizer or _default_optimizer(cfg))(task.model)
        self.model, self.optimizer = accelerator.prepare(task.model, optimizer)
        self.raw_model = accelerator.unwrap_model(self.model)
        self.side = _prepare_side(task.side, accelerator)
        self.average = WeightAverage(self.raw_model, cfg.weight_average, self.world) if cfg.weight_average > 0 else None
        self.best = BestWeights()
        self.trained = _TrainedState(self.raw_model, self.optimizer, self.side, self.average, self.best)
        # The training set stays on the host (a user's set may be a memory map larger than memory,
        # or than the GPU's): each batch is gathered there and moved to the device.
        self.data = task.train_tensors
        self.n_train = self.data[0].shape[0]
        self.per_epoch = cfg.epoch_samples or self.n_train
        self.steps_per_epoch = epoch_steps(self.per_epoch, self.world, cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # An evaluation costs seconds, a checkpoint almost nothing: separate cadences.
        self.eval_every = {0: -(-self.total_steps // EVALS_PER_RUN), -1: self.total_steps}.get(
            cfg.eval_every, cfg.eval_every)
        self.save_every = cfg.save_every or self.steps_per_epoch
        self.step, self.history, self.metrics, self.warned = 0, [], {}, False
        self.stop_at = min(self.total_steps, cfg.max_steps) if cfg.max_steps else self.total_steps
        self.bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)   # first non-finite step
        self.sums, self.n_logged = {}, 0
        self.order_epoch, self.order, self.data_pass = -1, None, -1
        self.time_before = self.train_before = self.paused = 0.0
        self.t_start = time.perf_counter()
        self.first_step, self.eta_said = 0, False   # for the one line that says how long the run will take

    # -- start --------------------------------------------------------------------------
    def resume(self, resume_from: Path | None) -> None:
        cfg, accelerator, stage = self.cfg, self.accelerator, self.task.stage
        resume_from = agree_on_resume_point(resume_from, accelerator.device)
        if resume_from is not None:
            state = together(lambda: _load_resume_state(resume_from, stage, self.trained), on="local-first")
            check_layout(state, resume_from, self.world, cfg.batch_size)
            restore_rng(state["rng"], self.rank, accelerator)
            self.step, self.history = state["step"], state["history"]
            accelerator.print(f"resuming {stage} from {resume_from} (step {self.step}/{self.total_steps})")
            if self.best.stopped_early:   # nothing left to train
                self.stop_at = self.step
        else:
            torch.manual_seed(cfg.seed + self.rank)
        # Evaluations logged after the checkpoint (all of them, starting afresh) are redone
        together(lambda: truncate_metrics(self.out_dir / "metrics.jsonl", self.step))
        together(lambda: save_run_config(self.out_dir, cfg))
        # Plain `accelerate launch` on a machine with several GPUs uses them all: say so.
        accelerator.print(f"{stage}: {self.world} process(es) on {accelerator.device.type}, batch {cfg.batch_size} "
                          f"each ({self.world * cfg.batch_size} a step), {accelerator.mixed_precision} mixed "
                          f"precision, {self.total_steps} steps, held-out loss measured every {self.eval_every}")
        start_tracking(accelerator, cfg.tracker, stage, config_to_dict(cfg), str(self.out_dir))
        if self.step >= self.stop_at:
            self.metrics = read_last_metrics(self.out_dir / "metrics.jsonl")
        # time_s: wall time of the run; train_s: the part spent in training steps
        # (evaluation, plots and checkpoints excluded), the figure benchmarks compare.
        self.time_before = self.history[-1]["time_s"] if self.history else 0.0
        self.train_before = self.history[-1].get("train_s", 0.0) if self.history else 0.0
        self.t_start = time.perf_counter()
        self.first_step, self.eta_said = self.step, self.step >= self.stop_at
        self.progress = _progress(accelerator.is_main_process, self.stop_at, self.step, stage)
        self.model.train()

    def clock(self) -> dict:
        now = time.perf_counter() - self.t_start
        return {"time_s": round(now + self.time_before, 2), "train_s": round(now - self.paused + self.train_before, 2)}

    # -- train ----------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, ...]:
        epoch, index = divmod(self.step, self.steps_per_epoch)
        if epoch != self.order_epoch:  # each process takes its own stride of the shared order
            self.order_epoch = epoch
            self.order = epoch_order(self.n_train, self.cfg.seed, epoch, self.per_epoch)[self.rank::self.world]
        if self.task.pass_tensors is not None:   # a pass over the set begins: its data (the cost counts in train_s)
            passes = -(-self.per_epoch // self.n_train)   # epoch_order's shuffles, one a pass
            this_pass = epoch * passes + index * self.cfg.batch_size * self.world // self.n_train
            if this_pass != self.data_pass:
                self.data_pass, self.data = this_pass, self.task.pass_tensors(this_pass)
        ids = self.order[index * self.cfg.batch_size:(index + 1) * self.cfg.batch_size]
        return tuple(t[ids].to(self.accelerator.device, non_blocking=True) for t in self.data)

    def train_step(self) -> None:
        cfg, accelerator, side = self.cfg, self.accelerator, self.side
        batch = self.next_batch()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, cfg, self.world)
        if side is None:
            loss, logs = self.task.loss_fn(self.model, batch)
        else:
            side.raw.requires_grad_(False)   # the main loss moves the main model only
            loss, logs, handover = self.task.loss_fn(self.model, batch, side.raw, self.step)
            side.raw.requires_grad_(True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update()
        finite = torch.isfinite(loss.detach())
        if side is not None:
            side_loss, side_logs = side.step(batch, handover, accelerator, cfg.grad_clip)
            logs = {**logs, **side_logs}
            finite = finite & torch.isfinite(side_loss.detach())   # a NaN discriminator must not be saved
        # Remember the first bad step on the device: no host sync per step.
        self.bad_step = torch.where(~finite & (self.bad_step < 0), torch.full_like(self.bad_step, self.step),
                                    self.bad_step)
        for k, v in {"loss": loss, **logs}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n_logged += 1
        self.step += 1
        self.progress.update(1)
        self.say_how_long()
        if self.step % LOG_EVERY == 0 or self.step == self.stop_at:
            raise_if_nonfinite(self.bad_step, self.out_dir)
            means = {f"train_{k}": (v / self.n_logged).item() for k, v in self.sums.items()}
            self.history.append({"step": self.step, **self.clock(), **means})
            self.progress.set_postfix(loss=f"{means['train_loss']:.4f}")
            self.sums, self.n_logged = {}, 0

    def say_how_long(self) -> None:
        """Once, after ETA_STEPS steps or ETA_SECONDS of training: how long the rest will take."""
        if self.eta_said:
            return
        done, seconds = self.step - self.first_step, self.clock()["train_s"] - self.train_before
        if done >= ETA_STEPS or seconds >= ETA_SECONDS or self.step == self.stop_at:
            self.eta_said = True
            left = (self.stop_at - self.step) * seconds / max(done, 1)
            self.accelerator.print(f"{self.task.stage}: {seconds / max(done, 1):.2f} s a step; the {self.stop_at - self.step} "
                                   f"steps left take about {left / 60:.1f} min of training (evaluations besides)"
                                   + (f"; then {self.task.after}" if self.task.after else ""))

    # -- evaluate -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def evaluating(self, swap_average: bool = True):
        """The model in eval mode, as it would ship (the weight average swapped in, unless the
        model already holds the weights that ship), its time kept out of train_s. Under mixed
        precision every phase evaluates under the same autocast (accelerate wraps only the
        prepared module's forward)."""
        started = time.perf_counter()
        self.raw_model.eval()
        average = self.average.swapped_in() if swap_average and self.average is not None else contextlib.nullcontext()
        try:
            with average, torch.no_grad(), self.accelerator.autocast():
                yield self.raw_model
        finally:
            self.raw_model.train()
            self.paused += time.perf_counter() - started

    def measure(self, model, limit: int | None) -> dict:
        """A metrics row: the counters, the clock, the last training logs and the task's evaluation."""
        return {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3), **self.clock(),
                **self.last_train_logs(), **self.task.evaluate(model, limit)}

    def evaluate_and_keep_best(self) -> bool:
        """Held-out (and training) loss on bounded subsets; the best weights so far kept, and
        written as the run's weights. Returns, the same on every process, whether the held-out
        loss has not improved for `patience` evaluations."""
        raise_if_nonfinite(self.bad_step, self.out_dir)

        def on_main() -> dict:
            with self.evaluating() as model:
                result = self.measure(model, self.cfg.eval_samples)
                if self.task.score is not None and self.best.offer(result[self.task.score], self.step,
                                                                    self.task.export(model)):
                    save_run_weights(self.out_dir, self.best.weights, self.task.stage)
            result["best_step"] = self.best.step if self.task.score is not None else self.step
            append_metrics(self.out_dir / "metrics.jsonl", result)
            self.say(result)
            return result

        result = together(on_main) or {}
        self.accelerator.log({k: v for k, v in result.items() if isinstance(v, (int, float))}, step=self.step)
        stop = self.task.score is not None and self.best.stopped(self.cfg.patience) and \
            may_stop_early(self.step, self.total_steps, self.cfg)
        return bool(broadcast_object(stop))

    def last_train_logs(self) -> dict:
        return {k: v for k, v in self.history[-1].items() if k.startswith("train_")} if self.history else {}

    def say(self, result: dict) -> None:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
        self.accelerator.print(f"[{self.task.stage}] " + " ".join(f"{k}={v}" for k, v in shown.items()))
        final = result.get("final", False)
        if self.task.overfit_warning is None or (self.warned and not final):   # once while training: the
            return                                     # figures go on in metrics.jsonl; again for what ships
        warning = self.task.overfit_warning({**result, "step": result["best_step"]} if final else result)
        if warning:
            self.warned = True
            shipped = " (the weights that ship)" if final else ""
            print(f"WARNING: {self.task.stage}{shipped}: {warning}", file=sys.stderr, flush=True)

    def stop_early(self) -> None:
        self.accelerator.print(f"{self.task.stage}: held-out {self.task.score} has not improved for "
                               f"{self.cfg.patience} evaluations; stopping at step {self.step} with the weights of "
                               f"step {self.best.step}")
        self.stop_at = self.best.stopped_early = self.step

    # -- save and stop --------------------------------------------------------------------------
    def save(self) -> None:
        raise_if_nonfinite(self.bad_step, self.out_dir)
        started = time.perf_counter()
        rng = rng_states(self.accelerator)   # a collective: every process takes part
        parts = lambda: {**self.trained.state_dict(), "rng": rng, "history": self.history,  # noqa: E731
                         "layout": {"processes": self.world, "batch_size": self.cfg.batch_size}}
        # main only; a failure there (a full disk, a folder in the way) stops every process in one line
        together(lambda: save_checkpoint(self.out_dir / "checkpoints", self.step, parts(), self.task.stage,
                                         self.cfg.keep_checkpoints))
        self.paused += time.perf_counter() - started

    def stop_on_signal(self, stop: StopSignal) -> None:
        signal_name = agreed_stop(stop, self.step)
        if signal_name and self.step < self.stop_at:
            self.save()
            self.progress.close()
            self.accelerator.print(f"{signal_name}: saved a checkpoint at step {self.step} in {self.out_dir}/checkpoints; "
                                   f"run the same command again to resume")
            self.accelerator.end_training()
            raise SystemExit(130 if signal_name == "SIGINT" else 143)

    # -- finish ---------------------------------------------------------------------------------
    def finish(self, last: bool) -> dict:
        """The weights that ship (the best by held-out loss, else the average or the last) in the
        model, measured on the whole held-out set, written with the plots."""
        for model_now in [self.raw_model] + ([self.side.raw] if self.side is not None else []):
            said = check_replicas_agree(model_now, self.accelerator.device)
            if said:
                self.accelerator.print(said)
        if self.average is not None:
            self.average.copy_to_model()
        best = broadcast_object(self.best.weights)   # kept on the main process, where it was measured
        if best is not None:
            self.task.load_export(self.raw_model, best)
        if not self.metrics.get("final"):   # not a finished run run again
            self.metrics = together(self.final_evaluation) or {}
        if last:
            self.accelerator.end_training()
        return self.metrics

    def final_evaluation(self) -> dict:
        with self.evaluating(swap_average=False) as model:   # finish put the weights that ship in the model
            result = {**self.measure(model, None), "final": True,
                      "best_step": self.best.step if self.task.score is not None else self.step}
            append_metrics(self.out_dir / "metrics.jsonl", result)
            save_run_weights(self.out_dir, self.task.export(model), self.task.stage)
            if self.task.report is not None:
                self.task.report(self.out_dir, model, self.history, read_metrics(self.out_dir / "metrics.jsonl"))
        self.say(result)
        return result


class BestWeights:
    """The exported weights that scored best on held-out data so far, their step, and how many
    evaluations have passed without a better score (in every checkpoint: resume stays exact)."""

    def __init__(self):
        self.score, self.step, self.since, self.weights = math.inf, 0, 0, None
        self.stopped_early = 0   # the step the run stopped at for lack of progress; 0 while it goes on

    def offer(self, score: float, step: int, weights: dict[str, torch.Tensor]) -> bool:
        """Keep these weights if they score as well or better (a tie: the later, further trained
        weights); returns whether they did."""
        if score <= self.score:
            self.score, self.step, self.since = score, step, 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
            return True
        self.since += 1
        return False

    def stopped(self, patience: int) -> bool:
        return patience > 0 and self.since >= patience

    def state_dict(self) -> dict:
        return {"score": self.score if math.isfinite(self.score) else None, "step": self.step, "since": self.since,
                "weights": self.weights, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        score = state["score"]
        self.score, self.step, self.since = math.inf if score is None else score, state["step"], state["since"]
        self.weights, self.stopped_early = state["weights"], state["stopped_early"]


@dataclass
class _TrainedState:
    """What training changes besides the counters and the RNG: one place knows the keys
    a checkpoint stores them under, for saving and for resuming alike."""
    model: nn.Module             # unwrapped
    optimizer: torch.optim.Optimizer
    side: _PreparedSide | None
    average: WeightAverage | None
    best: BestWeights

    def state_dict(self) -> dict:
        parts = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "best": self.best.state_dict()}
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
        if "best" in state:   # checkpoints from before best weights were kept have none
            self.best.load_state_dict(state["best"])


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
