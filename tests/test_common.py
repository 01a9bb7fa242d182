"""Checkpoint I/O and the training loop's guards: no pickle, no torn files, NaN stops."""
import os
import pickle
import shutil

import pytest
import torch
from torch import nn

from common.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, load_weights,
                               save_checkpoint, save_weights)
from common.config import TrainConfig
from common.training import Task, TrainingError, fit
from conftest import run_cli, run_script


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 7, {"optimizer": opt.state_dict(), "history": [{"step": 1, "x": 0.5}]}, "tok", keep=2)
    state = load_checkpoint(tmp_path / "step_000000007", "tok")
    fresh = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(state["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert state["step"] == 7 and state["history"] == [{"step": 1, "x": 0.5}]


def test_weights_files_get_the_same_permissions_as_any_file(tmp_path):
    old_mask = os.umask(0o022)
    try:
        save_weights(tmp_path / "w.safetensors", {"a": torch.ones(3)}, "prior")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old_mask)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777
    assert mode("w.safetensors") == mode("plain.txt") == 0o644   # safetensors alone gives 0600


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        load_weights(path, "tokenizer")
    assert not (tmp_path / "PWNED").exists()


def test_wrong_stage_truncated_and_empty_files_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.ones(100)}, "prior")
    with pytest.raises(CheckpointError, match="holds a prior checkpoint, expected a tokenizer one"):
        load_weights(path, "tokenizer")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_weights(path, "prior")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_weights(path, "prior")


def test_failing_writer_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(3)}}, "tok", keep=2)
    import common.checkpoint as ck

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="step_000000002: could not write .No space left on device.*resume"):
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(3)}}, "tok", keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000001"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000001"], "no temporary leftovers"
    assert torch.equal(load_checkpoint(tmp_path / "step_000000001", "tok")["model"]["w"], torch.ones(3))


def test_half_written_checkpoint_dirs_are_never_listed(tmp_path):
    (tmp_path / ".tmp-step_000000009-123").mkdir()
    save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(1)}}, "tok", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000003"]


def test_non_finite_loss_stops_with_its_step_and_keeps_the_good_checkpoint(tmp_path):
    model = nn.Linear(2, 1)
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = m(batch[0].float()).pow(2).mean()
        return (loss * float("nan") if calls["n"] == 7 else loss), {}

    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=3, batch_size=4, save_every=5, warmup_steps=0)
    task = Task(stage="toy", model=model, train_tensors=(torch.randn(16, 2),), loss_fn=loss_fn,
                evaluate=lambda m, limit: {})
    with pytest.raises(TrainingError, match="non-finite loss at step 6.*step_000000005"):
        fit(cfg, task)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000000005"]


@pytest.mark.parametrize("save_every, expected", [(3, [3, 6, 8]), (0, [4, 8])])   # 0: once per epoch
def test_checkpoints_follow_save_every_not_evaluations(tmp_path, save_every, expected):
    evaluated = []
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=2, batch_size=4, eval_every=100, save_every=save_every,
                      warmup_steps=0, keep_checkpoints=10)
    task = Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(torch.randn(16, 2),),
                loss_fn=lambda m, batch: (m(batch[0]).pow(2).mean(), {}),
                evaluate=lambda m, limit: evaluated.append(limit) or {})
    fit(cfg, task)
    assert [int(p.name.split("_")[1]) for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == expected
    assert evaluated == [cfg.eval_samples, None]   # at the end only (eval_every=100 is past the 8 steps), then the final one on all held out


def test_fresh_training_tensors_come_each_pass_over_the_set_and_again_on_resume(tmp_path):
    """An epoch of three passes over the set draws three times; a run resumed mid-epoch draws
    the pass it stopped in again (a function of the pass alone), not the epoch's first."""
    data = torch.randn(8, 2)

    def run(max_steps, drawn):
        cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=2, epoch_samples=24, batch_size=4, eval_every=-1,
                          warmup_steps=0, max_steps=max_steps, save_every=1)
        task = Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(data,),
                    loss_fn=lambda m, batch: (m(batch[0]).pow(2).mean(), {}), evaluate=lambda m, limit: {},
                    pass_tensors=lambda n: drawn.append(n) or (data + n,))
        fit(cfg, task)

    straight, first, second = [], [], []
    run(0, straight)
    assert straight == [0, 1, 2, 3, 4, 5]      # 12 steps of 4 over 8 items: a pass every 2 steps
    shutil.rmtree(tmp_path / "run")
    run(7, first)
    run(0, second)
    assert first == [0, 1, 2, 3] and second == [3, 4, 5]


@pytest.mark.parametrize("script", ["tokenizer/train.py", "prior/train.py"])
def test_training_help_lists_every_key_with_its_default_and_meaning(script):
    from dataclasses import fields
    from common.config import field_docs
    from prior.config import PriorConfig
    from tokenizer.config import TokenizerConfig
    cls = TokenizerConfig if script.startswith("tokenizer") else PriorConfig
    result = run_script([script, "--help"])
    assert result.returncode == 0 and result.stderr == ""
    assert f"accelerate launch {script}" in result.stdout
    docs = field_docs(cls)
    for f in fields(cls):
        line = next((l for l in result.stdout.splitlines() if l.split()[:1] == [f.name]), None)
        assert line is not None, f.name
        assert docs.get(f.name) and docs[f.name] in line, f"{f.name} has no meaning in its dataclass"


@pytest.mark.parametrize("script, flags", [
    ("sampling/generate.py", ["--n", "--seed", "--temperature", "--top-k", "--top-p", "--label", "--digit", "--cfg",
                              "--cfg-schedule", "--out", "--device", "--batch-size", "--prior", "--tokenizer",
                              "--complete", "--keep-rows", "--keep-likeliest", "--refine"]),
    ("sampling/evaluate.py", ["--tokenizer", "--json"]),
    ("sampling/app.py", ["--prior", "--tokenizer", "--host", "--port"]),
])
def test_sampling_help_shows_each_flag_with_its_default(script, flags):
    result = run_script([script, "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in flags:
        assert flag in text
    assert text.count("(default:") >= len(flags)


def test_learning_rate_schedules_warm_up_hold_and_end_at_the_floor():
    from common.config import TrainConfig
    from common.training import lr_at
    cosine = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    wsd = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, lr_schedule="wsd", cooldown_share=0.2)
    for cfg in (cosine, wsd):
        assert lr_at(0, 100, cfg) == pytest.approx(0.1) and lr_at(9, 100, cfg) == pytest.approx(1.0)
        assert lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert lr_at(50, 100, cosine) < 0.9 * 1.0                          # cosine decays from the peak on
    assert [lr_at(s, 100, wsd) for s in (10, 50, 80)] == [1.0, 1.0, 1.0]  # wsd holds until the last 20 steps
    assert lr_at(90, 100, wsd) == pytest.approx(0.55)                   # then falls linearly
    # A run too short for its warmup warms up over a fifth of it, then holds its peak before the decay
    assert [lr_at(s, 20, wsd) for s in (0, 3, 10, 15)] == pytest.approx([0.25, 1.0, 1.0, 1.0])


def test_the_best_held_out_weights_ship_and_a_run_that_stops_improving_stops(tmp_path, capsys):
    """Held-out loss falls until step 6, then rises: with patience 2 the run stops at step 8,
    ships step 6's weights, warns once while training that training and held-out loss part and
    again where the weights that ship part (the figures a user keeps), and the same command run
    again trains no further."""
    from safetensors.torch import load_file
    snapshots = {}

    def evaluate(m, limit):
        step = len(snapshots) + 1
        snapshots[step] = m.weight.detach().clone()
        return {"held_out": abs(step - 6) + 1.0, "seen": 1.0}

    def make_task():
        torch.manual_seed(0)
        return Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(torch.randn(16, 2),),
                    loss_fn=lambda m, batch: (m(batch[0]).pow(2).mean(), {}), evaluate=evaluate, score="held_out",
                    overfit_warning=lambda r: f"parted at step {r['step']}" if r["held_out"] - r["seen"] > 1.5 else None)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=5, batch_size=4, eval_every=1, patience=2,
                      warmup_steps=0, lr=0.1)
    metrics = fit(cfg, make_task())
    assert metrics["final"] and metrics["step"] == 8 and metrics["best_step"] == 6
    assert torch.equal(load_file(tmp_path / "run" / "model.safetensors")["weight"], snapshots[6])
    assert torch.equal(snapshots[9], snapshots[6])   # the final evaluation measured step 6's weights
    err = capsys.readouterr().err
    assert err.count("WARNING: toy: parted") == 1 and err.count("parted") == 2
    assert "WARNING: toy (the weights that ship): parted at step 6" in err   # the step of the weights, not the last
    snapshots.clear()
    again = fit(cfg, make_task())   # the stopped run, run again: nothing left to train
    assert again["step"] == 8 and again["best_step"] == 6 and not snapshots


def test_a_run_stopped_by_max_steps_off_the_schedule_resumes_to_where_an_unbroken_run_stops(tmp_path):
    """Held-out loss is best at step 6 and evaluated every 2 steps with patience 2: an unbroken
    run stops at step 10. One stopped at step 7 evaluates there (it reports what it ships);
    resumed, it must not count that evaluation toward patience (the code before did, and stopped
    at step 8), so it stops at step 10 too."""
    def make_task(trained: int):
        steps = [trained]

        def loss_fn(m, batch):
            steps[0] += 1
            return m(batch[0]).pow(2).mean(), {}
        torch.manual_seed(0)
        return Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(torch.randn(16, 2),), loss_fn=loss_fn,
                    evaluate=lambda m, limit: {"held_out": abs(steps[0] - 6) + 1.0}, score="held_out")

    def run(name: str, **keys) -> TrainConfig:
        return TrainConfig(out_dir=str(tmp_path / name), epochs=5, batch_size=4, eval_every=2, patience=2,
                           warmup_steps=0, lr=0.1, **keys)
    unbroken = fit(run("unbroken"), make_task(0))
    assert unbroken["step"] == 10 and unbroken["best_step"] == 6
    stopped = fit(run("broken", max_steps=7), make_task(0))
    assert stopped["step"] == 7
    resumed = fit(run("broken"), make_task(7))
    assert (resumed["step"], resumed["best_step"]) == (10, 6)


@pytest.mark.parametrize("within, shipped", [(3, 3), (0, 0)], ids=["last-within", "none-within"])
def test_a_budget_ships_the_last_weights_within_it_or_those_it_started_from(tmp_path, within, shipped):
    """A score that is 0 while within a budget and grows beyond it (the adversarial phase's
    PSNR budget): the starting weights are measured and offered, a tie goes to the later
    weights, and a phase beyond its budget from the first step ships what it started from."""
    from safetensors.torch import load_file
    snapshots = []

    def evaluate(m, limit):
        snapshots.append(m.weight.detach().clone())
        step = len(snapshots) - 1   # the first evaluation is of the starting weights, step 0
        return {"over_budget": max(0.0, step - within) * 0.1}

    torch.manual_seed(0)
    task = Task(stage="toy", model=nn.Linear(2, 1), train_tensors=(torch.randn(16, 2),),
                loss_fn=lambda m, batch: (m(batch[0]).pow(2).mean(), {}), evaluate=evaluate, score="over_budget",
                evaluate_first=True)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=5, batch_size=4, eval_every=1, patience=2,
                      warmup_steps=0, lr=0.1)
    metrics = fit(cfg, task)
    assert metrics["best_step"] == shipped and metrics["step"] == shipped + 2
    assert torch.equal(load_file(tmp_path / "run" / "model.safetensors")["weight"], snapshots[shipped])
    assert not torch.equal(snapshots[shipped], snapshots[shipped + 1])   # training moved the weights on


def test_evaluation_subsets_are_spread_over_the_set_and_fixed():
    from common.training import evaluation_subset
    rows = evaluation_subset(1000, 10)
    assert rows.tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert evaluation_subset(1000, None) == slice(None) and evaluation_subset(5, 10) == slice(None)


def test_pictures_convert_both_ways_in_the_stored_layouts_and_batch_in_pixels():
    from common.images import batch_for_pixels, in_batches, psnr, quantized, to_float, to_uint8
    grey = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    colour = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert to_float(grey).shape == (5, 1, 28, 28) and torch.equal(to_uint8(to_float(grey)), grey)
    assert torch.equal(to_uint8(to_float(colour)), colour.permute(0, 2, 3, 1))   # stored [N,H,W,C]
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(quantized(x), to_float(to_uint8(x)))
    assert psnr(0.01) == pytest.approx(20.0) and psnr(0.0) == pytest.approx(100.0)
    assert batch_for_pixels(grey, 500) == 500 and batch_for_pixels(colour, 500) == 500 * 784 // 3072
    twice = in_batches(lambda b: b * 2, torch.arange(10.0), 3)
    assert torch.equal(twice, torch.arange(10.0) * 2)
    assert in_batches(lambda b: b * 2, torch.zeros(0, 4), 3).shape == (0, 4)   # an empty set, not an error


def test_a_renamed_key_reads_under_its_new_name_and_both_at_once_is_one_line(tmp_path):
    from common.config import ConfigError, config_from_file, load_config
    from tokenizer.config import TokenizerConfig
    from tokenizer.discriminator import PatchDiscriminator
    (tmp_path / "config.yaml").write_text("decoder_disc_whole_digit: false\n")
    assert config_from_file(TokenizerConfig, tmp_path / "config.yaml").decoder_disc_whole_image is False
    assert load_config(TokenizerConfig, ["decoder_disc_whole_digit=false"]).decoder_disc_whole_image is False
    with pytest.raises(ConfigError, match="one setting"):
        load_config(TokenizerConfig, ["decoder_disc_whole_digit=false", "decoder_disc_whole_image=true"])
    old = {k.replace("image_head", "digit_head"): v
           for k, v in PatchDiscriminator(1, 28, 8, whole_image=True).state_dict().items()}
    disc = PatchDiscriminator(1, 28, 8, whole_image=True)
    disc.load_state_dict(old)   # a checkpoint saved when the head had the other name
    assert torch.equal(disc.image_head[1].weight, old["digit_head.1.weight"])
