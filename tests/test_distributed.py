"""Scale-out behaviour on real processes: 2 CPU processes over gloo (torchrun), as DDP runs
them on GPUs and nodes, and the schedule as 8 processes would see it."""
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from common.checkpoint import list_checkpoints
from common.config import ConfigError, load_config
from common.distributed import STOP_CHECK_EVERY
from common.training import WeightAverage, epoch_steps, lr_at, warmup_for
from conftest import REPO, TINY_PRIOR, run_cli

TWO_PROCESSES = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "VQGEN_THREADS": "1"}
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TOY = str(REPO / "tests" / "ddp_toy.py")


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli([*TORCHRUN, *args], env=TWO_PROCESSES, timeout=timeout)


@pytest.mark.distributed
def test_a_resumed_ddp_prior_run_ends_with_the_bits_of_an_unbroken_one(tmp_path, tiny_tokenizer_run, mnist_root):
    """Each process draws its own label-dropout masks; every one must get its own RNG state back."""
    common = ["prior/train.py", *TINY_PRIOR, f"tokenizer={tiny_tokenizer_run}", f"data_root={mnist_root}",
              "epochs=4", "label_dropout=0.5", "eval_every=-1"]
    for args in ([f"out_dir={tmp_path}/a"], [f"out_dir={tmp_path}/b", "max_steps=6"], [f"out_dir={tmp_path}/b"]):
        result = torchrun(common + args)
        assert result.returncode == 0, result.stderr[-2000:]
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
def test_resuming_on_another_process_count_is_refused_in_one_line(tmp_path, tiny_tokenizer_run, mnist_root):
    args = ["prior/train.py", *TINY_PRIOR, f"tokenizer={tiny_tokenizer_run}", f"data_root={mnist_root}",
            f"out_dir={tmp_path}/p", "epochs=4"]
    assert torchrun(args + ["max_steps=3"]).returncode == 0
    result = run_cli(args, env={"WANDB_MODE": "disabled"})   # one process
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "was written by 2 process(es) x batch_size 64, this run has 1; resume with --num_processes 2" \
        in result.stderr


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.distributed
@pytest.mark.parametrize("target", ["one rank", "the launcher"])
def test_a_signal_stops_every_process_with_one_checkpoint(tmp_path, target):
    """Whether the signal reaches one process or all (the launcher forwards it), they stop
    together at a step every one reaches, save once and exit, instead of hanging."""
    out = tmp_path / "toy"
    launcher = subprocess.Popen([sys.executable, *TORCHRUN, TOY, f"out_dir={out}", "step_s=0.02", "epochs=100",
                                 "batch_size=8", "save_every=10000", "eval_every=-1"],
                                cwd=REPO, env={**os.environ, **TWO_PROCESSES},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "pid-1").is_file() and (out / "config.yaml").is_file(), 120, "the run never started")
        time.sleep(1.0)   # well into the loop
        pid = launcher.pid if target == "the launcher" else int((out / "pid-1").read_text())
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        output, _ = launcher.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        launcher.kill()
    saved = list_checkpoints(out / "checkpoints")
    assert len(saved) == 1, output[-3000:]
    step = int(saved[0].name.split("_")[1])
    assert step % STOP_CHECK_EVERY == 0 and step < 100 * 32   # at a shared check, long before the end
    assert f"SIGTERM: saved a checkpoint at step {step}" in output
    assert took < 30, f"{took:.0f} s to stop"


@pytest.mark.distributed
def test_a_non_finite_loss_on_one_process_stops_every_process_with_one_line(tmp_path):
    result = torchrun([TOY, f"out_dir={tmp_path}/toy", "nan_rank=1", "nan_step=3", "epochs=4", "batch_size=8"],
                      timeout=120)
    assert result.returncode != 0
    # both processes, the same line (rank 0's progress bar may share the terminal line)
    assert result.stderr.count("error: non-finite loss at step 3;") == 2, result.stderr[-3000:]


@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["checkpoint folder is a file", "disk full at the metrics append"])
def test_a_failure_on_the_main_process_alone_stops_every_process_with_one_line(tmp_path, fault):
    """Only the main process writes checkpoints and metrics; when that fails, the other process
    must not be left waiting in the next collective: both exit, each with one line."""
    out = tmp_path / "toy"
    out.mkdir()
    if fault == "checkpoint folder is a file":
        (out / "checkpoints").write_text("in the way")
        says = "checkpoints: could not write (File exists)"
    else:
        (out / "metrics.jsonl").symlink_to("/dev/full")   # every write: ENOSPC, as on a full disk
        says = "metrics.jsonl: could not write (No space left on device)"
    started = time.monotonic()
    result = torchrun([TOY, f"out_dir={out}", "epochs=2", "batch_size=16"], timeout=120)
    assert time.monotonic() - started < 60 and result.returncode != 0
    ours = result.stderr.split("failed (exitcode")[0]   # then torchrun's own report of the exit codes
    lines = [line[line.index("error: "):] for line in ours.splitlines() if "error: " in line]   # after a bar's \r
    assert len(lines) == 2 and "Traceback" not in ours, result.stderr[-3000:]
    assert sum(says in line for line in lines) == 2, lines
    assert any(line.startswith("error: process 0 failed, so this one stops too") for line in lines), lines


def test_a_non_finite_discriminator_loss_stops_training_without_saving_it(tmp_path):
    from torch import nn
    from common.config import TrainConfig
    from common.distributed import TrainingError
    from common.training import SideModel, Task, fit
    calls = {"n": 0}

    def side_loss(side, batch, handover):
        calls["n"] += 1
        loss = side(batch[0]).pow(2).mean()
        return (loss * float("nan") if calls["n"] == 4 else loss), {}

    task = Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(torch.randn(32, 2),),
                loss_fn=lambda m, batch, side, step: (m(batch[0]).pow(2).mean(), {}, None), evaluate=lambda m, limit: {},
                side=SideModel(nn.Linear(2, 1), side_loss, lambda d: torch.optim.SGD(d.parameters(), lr=0.1)))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=2, batch_size=4, save_every=2, warmup_steps=0)
    with pytest.raises(TrainingError, match="non-finite loss at step 3.*step_000000002"):
        fit(cfg, task)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000000002"]


@pytest.mark.parametrize("processes", [2, 8])
def test_the_weight_average_keeps_its_half_life_in_samples_whatever_the_process_count(processes):
    """64 batches of samples seen as 64 steps of one process or 64/N steps of N processes: the
    starting weights keep the same share of the average (decay 0.999 per step made 8 GPUs ship
    a decoder holding 79% of its weights before the adversarial phase, one process 15%)."""
    from torch import nn

    def start_share(world: int) -> float:
        model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        average = WeightAverage(model, 0.99, processes=world)
        with torch.no_grad():
            model.weight.fill_(1.0)   # trained weights at 1 from the first step on
        for _ in range(64 // world):
            average.update()
        return 1 - average.average[0].item()   # what is left of the starting 0

    assert start_share(processes) == pytest.approx(start_share(1), rel=1e-4)
    assert start_share(1) == pytest.approx(0.99 ** 64, rel=1e-4)


@pytest.mark.parametrize("config", ["configs/tokenizer.yaml", "configs/prior.yaml", "configs/prior-large.yaml"])
def test_every_warmup_ends_early_on_eight_processes(config):
    """`accelerate launch` on an 8-GPU machine: 8 processes, each with the per-process batch."""
    from prior.config import PriorConfig
    from tokenizer.config import TokenizerConfig
    kind = TokenizerConfig if "tokenizer" in config else PriorConfig
    cfg = load_config(kind, ["--config", str(REPO / config)])   # the defaults, then the file (may hold none)
    steps = cfg.epochs * epoch_steps(60_000, 8, cfg.batch_size)
    assert warmup_for(cfg.warmup_steps, 8) <= 0.2 * steps
    assert lr_at(warmup_for(cfg.warmup_steps, 8), steps, cfg, processes=8) == pytest.approx(cfg.lr, rel=1e-3)
    if kind is TokenizerConfig and cfg.decoder_epochs:
        assert warmup_for(cfg.decoder_gan_warmup, 8) <= 0.2 * cfg.decoder_epochs * epoch_steps(60_000, 8, cfg.batch_size)
    # one process: the warmup is what the config says
    one_process_steps = cfg.epochs * epoch_steps(60_000, 1, cfg.batch_size)
    assert lr_at(cfg.warmup_steps - 1, one_process_steps, cfg, processes=1) == pytest.approx(cfg.lr)
    assert lr_at(cfg.warmup_steps - 2, one_process_steps, cfg, processes=1) < cfg.lr


def test_the_prior_runs_and_samples_on_any_device_it_is_given():
    """On the meta device any tensor or generator born on the wrong device fails loudly;
    the uniforms come from a CPU generator, so a seed gives the same draws everywhere."""
    from prior.model import GPT, PriorShape
    for switches in ({}, {"rope": "2d", "qk_norm": True}):
        model = GPT(PriorShape(num_codes=16, grid=7, n_layer=1, n_head=2, n_embd=16, **switches)).to("meta").eval()
        codes, labels = torch.zeros(2, 49, dtype=torch.long, device="meta"), torch.zeros(2, dtype=torch.long,
                                                                                              device="meta")
        assert model(codes, labels)[0].device.type == "meta"
        drawn = model.generate(labels, cfg=1.0, generator=torch.Generator().manual_seed(0))
        assert drawn.shape == (2, 49) and drawn.device.type == "meta"


def test_codes_chosen_under_bf16_autocast_are_the_codes_encode_gives():
    """Training under bf16 autocast picks codes in the quantizer's fp32 from an fp32 encoder,
    so a prior reads (through encode) the codes the decoder was trained on."""
    from tokenizer.model import VQVAE, VQVAEShape
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(hidden_channels=16, embedding_dim=8, codebook_size=64, image_size=28, channels=1)).eval()
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        in_training = model(images * 2 - 1)
    assert in_training.reconstruction.dtype == torch.bfloat16   # the decoder did run in bf16
    assert torch.equal(in_training.indices, model.encode(images))


@pytest.mark.distributed
def test_both_stages_train_under_bf16(tmp_path, mnist_root):
    env = {"ACCELERATE_MIXED_PRECISION": "bf16", "WANDB_MODE": "disabled"}
    tok = run_cli(["tokenizer/train.py", "hidden_channels=16", "embedding_dim=8", "codebook_size=32",
                   "train_subset=512", "batch_size=32", "epochs=1", "decoder_epochs=1", "decoder_loss=gan",
                   "decoder_weight_average=0", f"data_root={mnist_root}", f"out_dir={tmp_path}/tok"], env=env)
    assert tok.returncode == 0, tok.stderr[-2000:]
    prior = run_cli(["prior/train.py", *TINY_PRIOR, "max_steps=4", f"tokenizer={tmp_path}/tok",
                     f"data_root={mnist_root}", f"out_dir={tmp_path}/prior"], env=env)
    assert prior.returncode == 0, prior.stderr[-2000:]
    rows = [yaml.safe_load(l) for l in (tmp_path / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[-1]["test_nll_bits_per_token"])


class HostSyncs(torch.overrides.TorchFunctionMode):
    """Counts the calls that make a GPU stop and wait for the host to read a value back."""
    SYNCS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
             torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.bincount, torch.Tensor.bincount}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS:
            self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dead_code_steps, allowed", [(0, []), (50, ["nonzero"])])
def test_a_tokenizer_step_reads_nothing_back_but_the_dead_code_check(dead_code_steps, allowed):
    from tokenizer.model import VQVAE, VQVAEShape
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(hidden_channels=16, embedding_dim=8, codebook_size=32, image_size=28, channels=1,
                             dead_code_steps=dead_code_steps)).train()
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    model(images).loss.backward()   # the first step initialises the codebook (k-means: syncs allowed)
    with HostSyncs() as syncs:
        out = model(images)
        out.loss.backward()
    assert syncs.seen == allowed
