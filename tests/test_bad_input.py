"""Every bad input a user (or a hostile file) can hand the loaders and the commands is one line
that names it, before any work where that is possible, and never a traceback."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.pretrained import find_run
from conftest import REPO, huge_png, run_cli, run_script


def one_line(result, says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
    assert says in result.stderr, result.stderr


@pytest.fixture
def prior_copy(tiny_prior_run, tmp_path):
    """A copy of the tiny prior run, to damage."""
    folder = tmp_path / "prior"
    shutil.copytree(tiny_prior_run[0], folder, ignore=shutil.ignore_patterns("checkpoints", "codes"))
    return folder


def edit_config(folder, **changes) -> None:
    import yaml
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, **changes}))


@pytest.mark.parametrize("changes, says", [({"n_head": 0}, "n_head=0 must divide n_embd"),
                                           ({"n_head": 3}, "n_head=3 must divide n_embd"),
                                           ({"n_layer": 3}, "weights do not match its config.yaml (Missing key")])
def test_a_saved_config_is_checked_on_load_and_names_its_file(prior_copy, changes, says):
    from prior import load_prior
    edit_config(prior_copy, **changes)
    with pytest.raises(CheckpointError) as caught:
        load_prior(prior_copy)
    assert says in str(caught.value) and str(prior_copy) in str(caught.value), caught.value


def test_a_config_that_is_not_text_names_its_file(prior_copy):
    from prior import load_prior
    (prior_copy / "config.yaml").write_bytes(b"n_layer: \xff\xfe\x00")
    with pytest.raises(CheckpointError, match=f"{prior_copy}/config.yaml is not a UTF-8 text file"):
        load_prior(prior_copy)


def test_a_run_saved_before_the_recipe_moved_into_the_defaults_loads_as_it_was_trained(prior_copy):
    """Saved configs name retired switches at their off value and lack keys added later;
    both load as the run was trained (a missing `rope` meant none then, not today's 1d)."""
    import yaml
    from common.config import config_from_file
    from prior import load_prior
    from prior.config import PriorConfig
    config = yaml.safe_load((prior_copy / "config.yaml").read_text())
    assert config.pop("rope") == "1d"
    (prior_copy / "config.yaml").write_text(yaml.safe_dump({**config, "zero_init": False, "tie_embeddings": False,
                                                            "label_smoothing": 0.0, "token_dropout": 0.0}))
    assert config_from_file(PriorConfig, prior_copy / "config.yaml").rope == "none"
    assert load_prior(prior_copy, "cpu")[0].shape.rope == "none"
    edit_config(prior_copy, zero_init=True)
    with pytest.raises(CheckpointError, match="zero_init=True .* was removed"):
        load_prior(prior_copy)


def test_the_default_prior_config_file_adds_nothing_to_the_defaults():
    """The adopted recipe lives in PriorConfig's defaults, named once."""
    from common.config import load_config
    from prior.config import PriorConfig
    assert load_config(PriorConfig, ["--config", str(REPO / "configs/prior.yaml")]) == PriorConfig()
    with pytest.raises(Exception, match="label_smoothing=0.1 in the command line: this switch was removed"):
        load_config(PriorConfig, ["label_smoothing=0.1"])


@pytest.mark.parametrize("skeleton, says", [({"__tensor__": "nope"}, "names a tensor that is not in the file"),
                                            ("deep", "nested too deeply"),
                                            ({"__dict__": "x"}, "an unknown entry")])
def test_a_tampered_checkpoint_is_refused_in_one_line(tmp_path, skeleton, says):
    path = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, "toy", keep=2)
    if skeleton == "deep":
        text = '{"stage": "toy", "step": 1, "parts": {"model": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    else:
        text = json.dumps({"stage": "toy", "step": 1, "parts": {"model": skeleton}})
    (path / "state.json").write_text(text)
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(path, "toy")


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    from common.runs import run_lock
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(CheckpointError, match="cannot take the run's lock .it is a symlink"):
        with run_lock(run):
            pass
    assert victim.read_text() == "keep me"


def test_temporary_files_are_never_written_through_a_planted_name(tmp_path):
    from common.checkpoint import atomic_write_text, open_new
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "planted").symlink_to(victim)
    with pytest.raises(OSError):
        open_new(tmp_path / "planted")
    atomic_write_text(tmp_path / "out.txt", "new")
    assert victim.read_text() == "keep me" and (tmp_path / "out.txt").read_text() == "new"


@pytest.mark.parametrize("where, says", [("file", "is a file, not a folder"), ("under a file", "cannot create it")])
def test_an_out_dir_that_cannot_be_a_folder_is_one_line(tmp_path, mnist_root, where, says):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    result = run_script(["tokenizer/train.py", "max_steps=1", f"out_dir={out}", f"data_root={mnist_root}"])
    one_line(result, says)


def test_resume_from_a_checkpoint_of_another_experiment_is_refused(tmp_path, tiny_prior_run, tiny_tokenizer_run,
                                                                  mnist_root):
    from common.checkpoint import list_checkpoints
    from conftest import TINY_PRIOR
    checkpoint = list_checkpoints(tiny_prior_run[0] / "checkpoints")[-1]
    result = run_script(["prior/train.py", *TINY_PRIOR, "n_embd=64", f"tokenizer={tiny_tokenizer_run}",
                      f"data_root={mnist_root}", f"out_dir={tmp_path}/p", f"resume={checkpoint}"])
    one_line(result, "holds a run with a different config (n_embd: 32 -> 64)")


@pytest.mark.parametrize("flags, says", [(["--device", "bogus"], "--device bogus: not a device name"),
                                         (["--device", "cuda"], "--device cuda: this machine has no CUDA GPU")])
def test_a_device_this_machine_lacks_is_one_line(tiny_prior_run, tmp_path, flags, says):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")   # the message is for machines without one
    result = run_script(["sampling/generate.py", "--n", "2", "--prior", str(tiny_prior_run[0]),
                      "--out", str(tmp_path / "s"), *flags])
    one_line(result, says)


@pytest.mark.slow
def test_completing_a_bomb_or_an_empty_file_is_one_line(tiny_prior_run, tmp_path):
    bomb, empty, truncated = tmp_path / "bomb.png", tmp_path / "empty.npz", tmp_path / "cut.npz"
    bomb.write_bytes(huge_png(13000, 13000))
    np.savez(empty, images=np.zeros((0, 28, 28), np.uint8))
    np.savez(truncated, images=np.zeros((40, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:500])
    for source, says in [(bomb, "13000x13000 pixels"), (empty, "its 'images' array is empty"),
                         (truncated, "not a readable .npz")]:
        result = run_cli(["sampling/generate.py", "--n", "2", "--prior", str(tiny_prior_run[0]),
                          "--out", str(tmp_path / "s"), "--complete", str(source)])
        one_line(result, says)


def test_a_leftover_temporary_file_does_not_block_the_next_generate(tiny_prior_run, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / ".tmp-samples.npz").write_bytes(b"half a file")   # an older version's write that died
    (out / ".tmp-samples.npz-123-abcd").write_bytes(b"half a file")
    result = run_script(["sampling/generate.py", "--n", "2", "--prior", str(tiny_prior_run[0]), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]


def test_evaluate_refuses_a_truncated_npz_and_an_unwritable_json_before_any_work(tmp_path):
    cut = tmp_path / "cut.npz"
    np.savez(cut, images=np.zeros((40, 28, 28), np.uint8))
    cut.write_bytes(cut.read_bytes()[:300])
    one_line(run_script(["sampling/evaluate.py", str(cut)]), "not a readable .npz")
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((40, 28, 28), np.uint8))
    one_line(run_script(["sampling/evaluate.py", str(good), "--json", str(tmp_path / "no" / "such" / "t.json")]),
             "--json")


def test_evaluate_resolves_run_names_like_every_other_command(tmp_path):
    from sampling.evaluate import tokenizer_dataset
    if not find_run("fashion", "tokenizer").is_dir():
        pytest.skip("no shipped fashion run")
    assert tokenizer_dataset("fashion") == "fashion" and tokenizer_dataset("mnist") == "mnist"
    np.savez(tmp_path / "good.npz", images=np.zeros((20, 28, 28), np.uint8))
    one_line(run_script(["sampling/evaluate.py", str(tmp_path / "good.npz"), "--tokenizer", "nothing-here"]),
             "--tokenizer nothing-here: no trained tokenizer there")


def test_a_stale_judge_is_one_line_that_says_how_to_renew_it(tmp_path):
    from common.checkpoint import save_weights
    from sampling.judge import load_classifier
    save_weights(tmp_path / "model.safetensors", {"head.weight": torch.zeros(3, 3)}, "classifier")
    with pytest.raises(CheckpointError, match=f"delete {tmp_path} and the judge is retrained"):
        load_classifier(cache_dir=tmp_path)


def test_a_shipped_name_never_climbs_out_of_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_run("mnist/../fashion", "prior") == type(find_run("x", "prior"))("mnist/../fashion")
    assert os.path.basename(find_run("fashion", "prior")) == "prior"
