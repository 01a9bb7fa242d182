"""Stage one end to end on real MNIST at tiny sizes: config, smoke, round trip, resume, DDP, locking."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from common.config import ConfigError, load_config
from conftest import REPO, TINY_TOKENIZER, run_cli
from tokenizer import load_tokenizer
from tokenizer.config import TokenizerConfig
from common.images import to_float
from tokenizer.data import encode_images, load_split
from tokenizer.train import main


def test_config_layers_defaults_yaml_and_cli(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("codebook_size: 64\nlr: 0.01\n")
    cfg = load_config(TokenizerConfig, ["--config", str(yaml_file), "lr=3e-4", "ema=true"])
    assert (cfg.codebook_size, cfg.lr, cfg.ema, cfg.hidden_channels) == (64, 3e-4, True, 64)
    fsq = load_config(TokenizerConfig, ["quantizer=fsq", "fsq_levels=[8,6,5]"])
    assert fsq.fsq_levels == [8, 6, 5] and fsq.shape().num_codes == 240 and fsq.shape().code_dim == 3


@pytest.mark.parametrize("arg, message", [
    ("codebook_sz=8", "did you mean codebook_size"),
    ("codebook_size=1", "codebook_size=1 must be >= 2"),
    ("lr=0", "lr must be > 0"),
    ("lr=fast", "lr='fast': expected float"),
    ("epochs=1.5", "epochs=1.5: expected int"),
    ("ema=maybe", "expected bool"),
    ("resume=/no/such/dir", "resume='/no/such/dir'"),
    ("nonsense", "use key=value"),
    ("quantizer=rvq", "expected one of vq, fsq"),
    ("fsq_levels=8", "expected a list like [8, 5, 5, 5]"),
    ("fsq_levels=[8,1]", "fsq_levels=[8, 1] must be a list of levels, each >= 2"),
    ("fsq_levels=[8,a]", "fsq_levels='a': expected int"),
    ("decoder_epochs=-1", "decoder_epochs=-1 must be >= 0"),
    ("decoder_lr=0", "decoder_lr=0.0 must be > 0"),
    ("decoder_loss=l1", "expected one of mse, gan"),
    ("decoder_gan_weight=-0.1", "decoder_gan_weight=-0.1 must be >= 0"),
    ("decoder_gan_warmup=-5", "decoder_gan_warmup=-5 must be >= 0"),
    ("decoder_disc_lr=0", "decoder_disc_lr=0.0 must be > 0"),
])
def test_bad_config_is_one_clear_error(arg, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(TokenizerConfig, [arg])


@pytest.mark.slow
def test_cli_bad_key_exits_with_one_line_before_work(tmp_path):
    result = run_cli(["tokenizer/train.py", "codebook_sze=8", f"out_dir={tmp_path}/x"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "did you mean codebook_size" in result.stderr
    assert not (tmp_path / "x").exists(), "nothing may be written for a rejected config"
    result = run_cli(["tokenizer/train.py", "dataset=cifar", f"out_dir={tmp_path}/x"])
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "dataset=cifar: no such file or folder; expected mnist, fashion, a folder of images or an .npz" \
        in result.stderr
    assert not (tmp_path / "x").exists(), "nothing may be written for a data set that cannot be one"


def test_smoke_two_steps(tmp_path, mnist_root):
    out = tmp_path / "run"
    metrics = main(TINY_TOKENIZER + ["max_steps=2", f"out_dir={out}", f"data_root={mnist_root}"])
    assert metrics["step"] == 2
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "reconstructions.png",
                 "codebook_usage.png", "loss.png"):
        assert (out / name).is_file(), name
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000000002"]


def test_trained_tiny_tokenizer_learns_and_round_trips(tiny_tokenizer_run, mnist_root):
    rows = [json.loads(l) for l in (tiny_tokenizer_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_psnr"] > rows[0]["test_psnr"] - 0.5 and rows[-1]["test_psnr"] > 12
    assert rows[-1]["codebook_usage"] > 0.5
    tok = load_tokenizer(tiny_tokenizer_run)
    images, _ = load_split(mnist_root, "mnist", train=False, subset=16)
    x = to_float(images)
    idx = tok.encode(x)
    assert idx.shape == (16, 7, 7) and idx.dtype == torch.long and idx.max() < tok.num_codes
    x_hat = tok.decode(idx)
    assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
    # The loaded model is the trained one: same codes as the weights file implies.
    again = load_tokenizer(tiny_tokenizer_run)
    assert torch.equal(again.encode(x), idx)


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True])
def test_resume_gives_bit_identical_weights(tmp_path, mnist_root, ema):
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", f"ema={str(ema).lower()}", "eval_every=20"]
    main(common + [f"out_dir={tmp_path}/straight"])
    # Stop after 83 steps (mid-epoch 2 of 64-step epochs), then resume to the end.
    main(common + [f"out_dir={tmp_path}/broken", "max_steps=83"])
    main(common + [f"out_dir={tmp_path}/broken"])
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def extend_run(trained, out, options: list[str]) -> tuple[dict, list[dict], dict]:
    """A copy of a trained run, run again with a later phase's options: (its metrics, every row of
    its metrics.jsonl, the joint phase's last row)."""
    shutil.copytree(trained, out)
    metrics = main(options + [f"out_dir={out}"])
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, rows, [r for r in rows if "phase" not in r][-1]


@pytest.mark.slow
def test_decoder_phase_keeps_the_codes_and_sharpens_the_images(tmp_path, tiny_tokenizer_run, mnist_root):
    """A trained run gets a decoder phase by running it again with decoder_epochs: codes stay, PSNR rises."""
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", "decoder_epochs=2", "decoder_loss=mse"]
    metrics, rows, joint = extend_run(tiny_tokenizer_run, tmp_path / "extended", common)
    assert rows[-1] == metrics and metrics["phase"] == "decoder"
    assert (joint["step"], metrics["step"]) == (128, 256) and metrics["epoch"] == 4.0
    assert metrics["test_psnr"] > joint["test_psnr"] + 0.3
    assert metrics["perplexity"] == joint["perplexity"] and metrics["train_s"] > joint["train_s"]

    x = to_float(load_split(mnist_root, "mnist", train=False, subset=256)[0])
    before, after = load_tokenizer(tiny_tokenizer_run), load_tokenizer(tmp_path / "extended")
    assert torch.equal(before.encode(x), after.encode(x)), "the prior's inputs must not change"
    codes = before.encode(x)
    assert ((after.decode(codes) - x) ** 2).mean() < ((before.decode(codes) - x) ** 2).mean()
    # The second phase's folder is a tokenizer run of its own, with the same weights.
    inner = load_file(tmp_path / "extended" / "decoder" / "model.safetensors")
    outer = load_file(tmp_path / "extended" / "model.safetensors")
    assert all(torch.equal(inner[k], outer[k]) for k in outer)

    # Trained in one go, or stopped inside the second phase and resumed: the same weights.
    main(common + [f"out_dir={tmp_path}/straight"])
    main(common + [f"out_dir={tmp_path}/broken", "max_steps=150"])
    stopped = json.loads((tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (stopped["step"], stopped["phase"]) == (150, "decoder"), "max_steps counts the steps of both phases"
    main(common + [f"out_dir={tmp_path}/broken"])
    main(common + [f"out_dir={tmp_path}/broken"])   # a finished run run again changes nothing
    for other in ("straight", "broken"):
        weights = load_file(tmp_path / other / "model.safetensors")
        assert all(torch.equal(weights[k], outer[k]) for k in outer), other
    again = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l).get("phase") for l in again].count("decoder") == 1


@pytest.mark.slow
def test_refiner_phase_keeps_the_codes_and_the_decoder(tmp_path, tiny_tokenizer_run, mnist_root):
    """A trained run gets a refiner by running it again with refiner_epochs: codes and decoder
    stay, the refiner's weights join the tokenizer's, draw() samples with them; stopped inside
    the phase and resumed, the same weights as straight through."""
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", "refiner_epochs=1", "refiner_width=8"]
    metrics, rows, joint = extend_run(tiny_tokenizer_run, tmp_path / "extended", common)
    assert rows[-1] == metrics and metrics["phase"] == "refiner"
    assert (joint["step"], metrics["step"], metrics["epoch"]) == (128, 192, 3.0)
    assert metrics["test_psnr"] == joint["test_psnr"], "the decoder's own figures are kept"
    refiner_rows = [json.loads(l) for l in (tmp_path / "extended" / "refiner" / "metrics.jsonl").read_text().splitlines()]
    assert refiner_rows[-1]["refiner_test_loss"] < refiner_rows[0]["refiner_test_loss"]
    assert metrics["refiner_test_loss"] == refiner_rows[-1]["refiner_test_loss"] and "refiner_train_loss" in metrics

    x = to_float(load_split(mnist_root, "mnist", train=False, subset=64)[0])
    before, after = load_tokenizer(tiny_tokenizer_run), load_tokenizer(tmp_path / "extended")
    assert before.refiner is None and after.refiner is not None
    codes = before.encode(x)
    assert torch.equal(after.encode(x), codes) and torch.equal(after.decode(codes), before.decode(codes))
    drawn = after.draw(codes, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(drawn, after.decode(codes)) and torch.equal(after.draw(codes, steps=0), after.decode(codes))

    main(common + [f"out_dir={tmp_path}/straight"])
    main(common + [f"out_dir={tmp_path}/broken", "max_steps=160"])
    stopped = json.loads((tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (stopped["step"], stopped["phase"]) == (160, "refiner"), "max_steps counts the steps of every phase"
    main(common + [f"out_dir={tmp_path}/broken"])
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    broken = load_file(tmp_path / "broken" / "model.safetensors")
    assert straight.keys() == broken.keys() and any(k.startswith("refiner.") for k in straight)
    assert all(torch.equal(straight[k], broken[k]) for k in straight)


WHOLE_IMAGE_R1_AVERAGE = ["decoder_disc_whole_image=true", "decoder_r1=1.0", "decoder_weight_average=0.9"]


@pytest.mark.parametrize("options", [[], WHOLE_IMAGE_R1_AVERAGE], ids=["patch", "whole-image-r1-average"])
def test_adversarial_phase_moves_the_decoder_only(tiny_tokenizer_run, mnist_root, options):
    """The decoder's loss reaches neither the encoder, the codebook nor the discriminator;
    the discriminator's loss (R1 penalty included) reaches only the discriminator."""
    from tokenizer.train import decoder_task, make_task
    cfg = load_config(TokenizerConfig, TINY_TOKENIZER + ["image_size=28", "channels=1", "decoder_loss=gan", "decoder_gan_warmup=0",
                                                         "decoder_gan_weight=0.1", "ema=false", *options])   # a codebook that could take a gradient
    images = load_split(mnist_root, "mnist", train=True, subset=64)[0]
    joint = make_task(cfg, images, images)
    task = decoder_task(joint, encode_images(joint.model, images), images, images, cfg)
    batch = tuple(t[:16] for t in task.train_tensors)
    vqvae, disc = joint.model, task.side.model
    assert vqvae.quantizer.codebook.requires_grad

    disc.requires_grad_(False)   # as fit does around the main loss
    loss, logs, fake = task.loss_fn(task.model, batch, disc, 10)
    disc.requires_grad_(True)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vqvae.decoder.parameters())
    assert all(p.grad is None for p in [*vqvae.encoder.parameters(), *vqvae.quantizer.parameters()])
    assert all(p.grad is None for p in disc.parameters())
    assert logs["adversarial"].abs() > 0 and not fake.requires_grad

    vqvae.zero_grad(set_to_none=True)
    disc_loss, disc_logs = task.side.loss_fn(disc, batch, fake)
    disc_loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert all(p.grad is None for p in vqvae.parameters())
    assert 0 <= disc_logs["disc_real_acc"] <= 1
    assert ("r1" in disc_logs) == bool(options) and len(disc(batch[1][:, None].float())) == 1 + bool(options)


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], WHOLE_IMAGE_R1_AVERAGE], ids=["patch", "whole-image-r1-average"])
def test_adversarial_phase_keeps_the_codes_and_resumes_exactly(tmp_path, tiny_tokenizer_run, mnist_root, options):
    """decoder_loss=gan: same codes, a loadable tokenizer without the discriminator, and a run
    stopped inside the phase resumes bit-identically (the discriminator and its Adam state
    are in the checkpoints)."""
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", "decoder_epochs=2", "decoder_loss=gan",
                               "decoder_gan_warmup=20", *options]
    for name in ("straight", "broken"):
        shutil.copytree(tiny_tokenizer_run, tmp_path / name)
    metrics = main(common + [f"out_dir={tmp_path}/straight"])
    assert metrics["phase"] == "decoder" and metrics["step"] == 256
    rows = [json.loads(l) for l in (tmp_path / "straight" / "decoder" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train_disc" in r]   # evaluations before the first logged steps have none
    assert len(logged) >= len(rows) - 2 and "train_disc" in rows[-1]
    assert all(0 <= r["train_disc_real_acc"] <= 1 and r["train_disc"] > 0 for r in logged)

    x = to_float(load_split(mnist_root, "mnist", train=False, subset=256)[0])
    before, after = load_tokenizer(tiny_tokenizer_run), load_tokenizer(tmp_path / "straight")
    assert torch.equal(before.encode(x), after.encode(x)), "the prior's inputs must not change"
    weights = load_file(tmp_path / "straight" / "model.safetensors")
    assert set(weights) == set(before.state_dict()), "the saved tokenizer carries no discriminator"
    assert not torch.equal(weights["decoder.net.0.weight"], before.state_dict()["decoder.net.0.weight"])
    if "decoder_weight_average=0.9" in options:   # what ships is the average, not the last step's weights
        last = sorted((tmp_path / "straight" / "decoder" / "checkpoints").iterdir())[-1]
        from common.checkpoint import load_checkpoint
        state = load_checkpoint(last, "tokenizer")
        average, trained = state["weight_average"], state["model"]
        names = [f"decoder.{name}" for name, _ in before.decoder.named_parameters()]
        assert all(torch.equal(average[str(i)], weights[name]) for i, name in enumerate(names))
        assert not torch.equal(trained["net.0.weight"], weights["decoder.net.0.weight"])

    main(common + [f"out_dir={tmp_path}/broken", "max_steps=170"])   # stopped inside phase two
    checkpoint = sorted((tmp_path / "broken" / "decoder" / "checkpoints").iterdir())[-1]
    parts = {"side_model.safetensors", "side_optimizer.safetensors"} | ({"weight_average.safetensors"} if options else set())
    assert parts <= {p.name for p in checkpoint.iterdir()}
    main(common + [f"out_dir={tmp_path}/broken"])
    resumed = load_file(tmp_path / "broken" / "model.safetensors")
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


@pytest.mark.slow
def test_a_phase_beyond_its_psnr_budget_ships_the_decoder_it_started_from_and_resumes_exactly(
        tmp_path, tiny_tokenizer_run, mnist_root):
    """An adversarial term strong enough to cost more held-out PSNR than the budget from its first
    evaluation on: the phase stops after `patience` evaluations and ships the joint phase's
    decoder, and a run stopped inside the phase resumes to the same end."""
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", "decoder_epochs=2", "decoder_loss=gan",
                               "decoder_gan_warmup=0", "decoder_gan_weight=5", "decoder_psnr_budget=0.01"]
    for name in ("straight", "broken"):
        shutil.copytree(tiny_tokenizer_run, tmp_path / name)
    metrics = main(common + [f"out_dir={tmp_path}/straight"])
    rows = [json.loads(l) for l in (tmp_path / "straight" / "decoder" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["adversarial_cost_db"] == 0   # the starting weights, measured
    assert all(r["over_budget_db"] > 0 for r in rows[1:-1]) and len(rows) == 5   # 3 evaluations beyond, then the final
    assert metrics["best_step"] == 128 and metrics["step"] == 128 + 39 < 256   # stopped early, the start shipped
    shipped, before = load_file(tmp_path / "straight" / "model.safetensors"), load_tokenizer(tiny_tokenizer_run)
    assert all(torch.equal(shipped[k], v) for k, v in before.state_dict().items())

    # stopped inside phase two at one of its evaluations (a stop elsewhere adds one, which patience counts)
    main(common + [f"out_dir={tmp_path}/broken", f"max_steps={128 + 13}"])
    resumed = main(common + [f"out_dir={tmp_path}/broken"])
    assert (resumed["step"], resumed["best_step"]) == (metrics["step"], metrics["best_step"])
    assert all(torch.equal(v, shipped[k]) for k, v in load_file(tmp_path / "broken" / "model.safetensors").items())


def test_resume_refuses_a_run_with_a_different_config(tmp_path, mnist_root):
    common = TINY_TOKENIZER + [f"data_root={mnist_root}", f"out_dir={tmp_path}/r", "max_steps=1"]
    main(common)
    with pytest.raises(ConfigError, match="codebook_size: 32 -> 64"):
        main(common + ["codebook_size=64"])
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        main(common + ["resume=never"])


@pytest.mark.distributed
def test_two_process_cpu_run_agrees_with_one(tmp_path, mnist_root):
    """A real 2-process gloo run: same total batch as one process, replicas stay identical,
    in the decoder phase too (its own DDP wrapper around the decoder alone, and one around
    the default's discriminator) and in the refiner's."""
    args = [f"data_root={mnist_root}", "hidden_channels=16", "embedding_dim=8", "codebook_size=32",
            "train_subset=2048", "epochs=2", "warmup_steps=10", "dead_code_steps=5", "lr=0.003",
            "decoder_epochs=1", "decoder_loss=gan"]
    result = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tokenizer/train.py",
                      # warmups count samples of the per-process batch: twice the steps at half the batch
                      *args, "batch_size=16", "warmup_steps=20", "decoder_gan_warmup=400", f"out_dir={tmp_path}/ddp"],
                     env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    single = main(args + ["batch_size=32", f"out_dir={tmp_path}/one"])
    ddp = [json.loads(l) for l in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()][-1]
    assert ddp["step"] == single["step"], "same total batch -> same number of optimizer steps"
    assert abs(ddp["test_psnr"] - single["test_psnr"]) < 1.5
    assert ddp["codebook_usage"] > 0.8 * single["codebook_usage"]
    # joint model, the decoder and the discriminator of its phase, then the refiner
    assert ddp["phase"] == "refiner" and (result.stdout + result.stderr).count("replicas agree") == 4


@pytest.mark.slow
def test_one_writer_per_run_folder_and_a_killed_holder_never_blocks(tmp_path, mnist_root):
    out = tmp_path / "run"
    args = ["tokenizer/train.py", *TINY_TOKENIZER, "epochs=6", f"data_root={mnist_root}", f"out_dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").is_file() and (out / ".lock").read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        second = run_cli(args)
        assert first.poll() is None, "the first run ended too soon for this test"
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.strip().count("\n") == 0
        assert f"{out} is in use by another training (pid {first.pid})" in second.stderr
    finally:
        first.kill()   # SIGKILL: no clean-up, the lock file and its pid stay behind
        first.wait()
    third = run_cli(args)   # a dead holder's lock never blocks: it resumes and finishes
    assert third.returncode == 0, third.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if not r.get("final")]   # the final row repeats the last step
    assert steps == sorted(set(steps)) and rows[-1]["final"] and rows[-1]["step"] == steps[-1] == 6 * 64
