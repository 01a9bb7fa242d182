"""Real faults on a real run: kills, signals, failing writes, corrupted files.

Faults are injected by bench/faults.py's child mode, which hooks the real code path
and then runs the user's script unchanged; the resumed run must end bit-identical
to the test run's uninterrupted tiny tokenizer (same arguments, same seed).
"""
import shutil

import pytest
import torch
from safetensors.torch import load_file

from common.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_weights, save_weights
from conftest import TINY_TOKENIZER, run_cli
from tokenizer.data import DataError, verify


@pytest.mark.parametrize("fault, exit_code, says", [
    ("kill-before-rename:2", -9, ""),                 # SIGKILL mid-checkpoint: files written, not renamed
    ("sigterm-step:70", 143, "SIGTERM: saved a checkpoint at step 70"),
    ("sigint-step:70", 130, "SIGINT: saved a checkpoint at step 70"),
    ("disk-full:2", 2, "File too large"),  # the kernel refuses the writes
])
@pytest.mark.slow
def test_fault_then_resume_ends_bit_identical(fault, exit_code, says, tmp_path, tiny_tokenizer_run, mnist_root):
    out = tmp_path / "run"
    args = [*TINY_TOKENIZER, f"data_root={mnist_root}", f"out_dir={out}"]
    hit = run_cli(["bench/faults.py", "--child", fault, "tokenizer/train.py", *args])
    assert hit.returncode == exit_code, hit.stderr[-2000:]
    assert says in hit.stdout + hit.stderr
    assert "Traceback" not in hit.stderr
    if exit_code == 2:
        assert hit.stderr.strip().splitlines()[-1].startswith("error: ") and "could not write" in hit.stderr
    found = list_checkpoints(out / "checkpoints")
    assert found, "the checkpoint before the fault is kept"
    for path in found:
        load_checkpoint(path, "tokenizer")  # every listed checkpoint is complete
    if fault.startswith(("sigterm", "sigint")):
        assert found[-1].name == "step_000000070"
    resumed = run_cli(["tokenizer/train.py", *args])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(tiny_tokenizer_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_flipped_bit_in_tensor_data_is_caught(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, {"w": torch.arange(1000.0)}, "prior")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # inside the tensor bytes: safetensors alone would load it happily
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="w.safetensors: its tensors fail their sha256 check"):
        load_weights(path, "prior")


@pytest.mark.slow
def test_a_corrupted_latest_checkpoint_is_refused_by_name(tmp_path, tiny_tokenizer_run, mnist_root):
    run = tmp_path / "run"
    shutil.copytree(tiny_tokenizer_run, run)
    victim = list_checkpoints(run / "checkpoints")[-1] / "optimizer.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    result = run_cli(["tokenizer/train.py", *TINY_TOKENIZER, "epochs=3", f"data_root={mnist_root}",
                      f"out_dir={run}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(victim) in result.stderr and result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("name, damage", [
    ("train-images-idx3-ubyte", lambda b: b[:-1]),                      # truncated
    ("t10k-labels-idx1-ubyte", lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:]),  # one bit flipped
])
def test_corrupted_mnist_files_fail_their_checksum(name, damage, tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    (raw / name).write_bytes(damage((raw / name).read_bytes()))
    with pytest.raises(DataError, match=f"{name} fails its md5 check"):
        verify(tmp_path, "mnist")
