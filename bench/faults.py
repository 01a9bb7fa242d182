"""Fault injection: kill, corrupt and misuse vqgen for real, then print what survived.

    python bench/faults.py                 # every section (~8 min on a 2-core CPU)
    python bench/faults.py kills files     # some sections: kills, files, inputs

kills:  each stage is trained tiny on real MNIST once without interruption; then,
        for every fault, a fresh run is hit (SIGKILL at a step, inside a tensor file,
        between a checkpoint's files and its rename, while pruning an old checkpoint,
        inside model.safetensors; SIGTERM; SIGINT; writes failing as on a full disk),
        every checkpoint left behind must load, and the plain command run again
        (resume=auto) must end with weights equal bit for bit to the unbroken run's.
files:  damaged, foreign and malicious files must be refused by the CLI in one line
        that names the file, with no traceback, and a pickle payload must never run.
inputs: bad flags, config keys and tensors must be refused in one line before work.

The faults are injected by a child process (`--child FAULT SCRIPT ARGS...`) that
installs a hook in the real code path, then runs the user's script unchanged.
"""
from __future__ import annotations

import json
import os
import pickle
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = ["hidden_channels=16", "embedding_dim=8", "codebook_size=32", "train_subset=2048", "batch_size=32",
             "epochs=2", "warmup_steps=10", "dead_code_steps=5", "lr=0.003", "eval_every=20", "save_every=20"]
PRIOR = ["n_layer=2", "n_head=2", "n_embd=32", "train_subset=1024", "batch_size=64", "epochs=2",
         "warmup_steps=2", "eval_every=5", "save_every=5"]
# fault -> what it does. N counts from 1 within the killed run.
FAULTS = {
    "kill-step:30": "SIGKILL after optimizer step 30",
    "kill-in-optimizer-file:2": "SIGKILL halfway through writing checkpoint 2's optimizer state",
    "kill-before-rename:2": "SIGKILL with checkpoint 2's files written, before its rename",
    "kill-in-prune:1": "SIGKILL halfway through deleting the oldest checkpoint",
    "kill-in-run-weights:2": "SIGKILL halfway through rewriting model.safetensors (evaluation 2)",
    "sigterm-step:25": "SIGTERM after step 25 (must save, exit 143)",
    "sigint-step:25": "SIGINT after step 25 (Ctrl-C: must save, exit 130)",
    "disk-full:3": "writes fail from checkpoint 3 on (RLIMIT_FSIZE: the kernel refuses them)",
}
EXPECTED_EXIT = {"kill": -9, "sigterm": 143, "sigint": 130, "disk": 2}


# -- the child: install one fault, then run the user's script -------------------------

def child(fault: str, script: str, args: list[str]) -> None:
    kind, n = fault.rsplit(":", 1)
    n = int(n)
    calls = {"n": 0}

    def nth() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    def die(sig=signal.SIGKILL):
        sys.stdout.flush()
        os.kill(os.getpid(), sig)

    import common.checkpoint as ck
    if kind in ("kill-step", "sigterm-step", "sigint-step"):
        from torch.optim.optimizer import register_optimizer_step_post_hook
        sig = {"kill-step": signal.SIGKILL, "sigterm-step": signal.SIGTERM, "sigint-step": signal.SIGINT}[kind]
        register_optimizer_step_post_hook(lambda *a: nth() and die(sig))
    elif kind in ("kill-in-optimizer-file", "kill-in-run-weights"):
        real_save_file = ck.save_file

        def targeted(filename: Path) -> bool:
            if kind == "kill-in-optimizer-file":
                return "optimizer.safetensors" in filename.name
            return "model.safetensors" in filename.name and not filename.parent.name.startswith(".tmp-step_")

        def torn_save_file(tensors, filename, metadata=None):
            real_save_file(tensors, filename, metadata=metadata)
            if targeted(Path(filename)) and nth():
                data = Path(filename).read_bytes()
                Path(filename).write_bytes(data[: len(data) // 2])
                die()
        ck.save_file = torn_save_file
    elif kind == "kill-before-rename":
        real_rename = os.rename

        def rename(src, dst, *a, **kw):
            if Path(src).name.startswith(".tmp-step_") and nth():
                die()
            return real_rename(src, dst, *a, **kw)
        os.rename = rename
    elif kind == "kill-in-prune":
        real_rmtree = shutil.rmtree

        def rmtree(path, *a, **kw):
            path = Path(path)
            if path.name.startswith(".tmp-old-") and nth():
                next(f for f in path.iterdir() if f.is_file()).unlink()  # one file gone, then dead
                die()
            return real_rmtree(path, *a, **kw)
        shutil.rmtree = rmtree
    elif kind == "disk-full":
        import resource
        real_save_checkpoint = ck.save_checkpoint

        def full_disk_save(*a, **kw):
            if nth():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a dead process
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return real_save_checkpoint(*a, **kw)
        import common.training
        common.training.save_checkpoint = full_disk_save
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    sys.argv = [script, *args]
    runpy.run_path(str(REPO / script), run_name="__main__")


# -- helpers for the parent --------------------------------------------------------------

def run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def checkpoints_all_load(run_dir: Path, stage: str) -> tuple[int, bool]:
    from common.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
    found = list_checkpoints(run_dir / "checkpoints")
    try:
        for path in found:
            load_checkpoint(path, stage)
    except CheckpointError:
        return len(found), False
    return len(found), True


def one_line_error(result: subprocess.CompletedProcess, must_contain: str) -> tuple[bool, str]:
    """Exit 2 and the error as one line; a progress bar may precede it once training ran."""
    err = result.stderr.strip()
    line = err.splitlines()[-1] if err else ""
    ok = (result.returncode == 2 and "Traceback" not in err and line.startswith("error: ")
          and must_contain in line and "error: " not in err[:-len(line)])
    return ok, line[:110]


ROWS: list[tuple[str, str, str, bool]] = []


def report(section: str, case: str, outcome: str, ok: bool) -> None:
    ROWS.append((section, case, outcome, ok))
    print(f"[{'ok' if ok else 'FAIL'}] {section} | {case} | {outcome}", flush=True)


# -- sections ----------------------------------------------------------------------------

def kills(work: Path, mnist: Path) -> dict[str, Path]:
    runs = {}
    for stage, base in (("tokenizer", TOKENIZER), ("prior", PRIOR)):
        script = f"{stage}/train.py"
        extra = [f"data_root={mnist}"] + ([f"tokenizer={runs['tokenizer']}"] if stage == "prior" else [])
        reference = work / f"{stage}-reference"
        start = time.perf_counter()
        result = run([script, *base, *extra, f"out_dir={reference}"])
        assert result.returncode == 0, result.stderr[-2000:]
        runs[stage] = reference
        print(f"{stage}: reference run {time.perf_counter() - start:.1f} s", flush=True)
        for fault, what in FAULTS.items():
            out = work / f"{stage}-{fault.replace(':', '-')}"
            hit = run([__file__, "--child", fault, script, *base, *extra, f"out_dir={out}"])
            expected = EXPECTED_EXIT[fault.split("-")[0]]
            n_ckpt, all_load = checkpoints_all_load(out, stage)
            resumed = run([script, *base, *extra, f"out_dir={out}"])
            identical = resumed.returncode == 0 and same_weights(reference / "model.safetensors",
                                                                 out / "model.safetensors")
            metrics_equal = _final_metrics(reference) == _final_metrics(out)
            saved_note = ""
            if fault.startswith(("sigterm", "sigint")):
                saved_note = ", saved" if "saved a checkpoint" in hit.stderr + hit.stdout else ", NOT saved"
            if fault.startswith("disk"):
                saved_note = ", one-line error" if one_line_error(hit, "could not write")[0] else ", BAD error"
            ok = (hit.returncode == expected and all_load and identical and metrics_equal
                  and "NOT" not in saved_note and "BAD" not in saved_note)
            report("kill/resume", f"{stage}: {what}",
                   f"exit {hit.returncode}{saved_note}; {n_ckpt} checkpoints left, "
                   f"{'all load' if all_load else 'A TORN ONE IS LISTED'}; resumed: "
                   f"{'weights bit-identical' if identical else 'WEIGHTS DIFFER'}"
                   f"{', metrics equal' if metrics_equal else ', METRICS DIFFER'}", ok)
    return runs


def _final_metrics(run_dir: Path) -> dict:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: v for k, v in rows[-1].items() if k not in ("time_s", "train_s")} | {"n_rows": len(rows)}


def files(work: Path, mnist: Path, runs: dict[str, Path]) -> None:
    tok, prior = runs["tokenizer"], runs["prior"]

    def damaged_tokenizer(name: str, damage) -> Path:
        bad = work / "files" / name
        shutil.copytree(tok, bad, ignore=shutil.ignore_patterns("checkpoints"))
        damage(bad / "model.safetensors")
        return bad

    def flip(offset_from_end: int):
        def apply(path: Path):
            data = bytearray(path.read_bytes())
            data[-offset_from_end] ^= 0xFF
            path.write_bytes(bytes(data))
        return apply

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(work / 'PWNED')!r}, 'w').write('ran')",))

    cases = [
        ("truncated model.safetensors", damaged_tokenizer(
            "truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])), "truncated"),
        ("one flipped bit in the tensor data", damaged_tokenizer("flipped", flip(100)), "sha256"),
        ("garbage header", damaged_tokenizer("header", lambda p: p.write_bytes(b"\xff" * 64 + p.read_bytes()[64:])),
         "model.safetensors"),
        ("empty model.safetensors", damaged_tokenizer("empty", lambda p: p.write_bytes(b"")), "model.safetensors"),
        ("a prior's weights where the tokenizer's belong",
         damaged_tokenizer("foreign", lambda p: shutil.copy(prior / "model.safetensors", p)), "holds a prior"),
        ("pickle payload (runs code if unpickled)",
         damaged_tokenizer("pickle", lambda p: p.write_bytes(pickle.dumps(Payload()))), "model.safetensors"),
        ("config.yaml is not YAML", damaged_tokenizer(
            "yaml", lambda p: (p.parent / "config.yaml").write_text("{{{ not: [yaml")), "config.yaml"),
    ]
    for case, bad_dir, must in cases:
        result = run(["sampling/generate.py", "--n", "4", "--prior", str(prior), "--tokenizer", str(bad_dir),
                      "--out", str(work / "files" / "out")])
        ok, line = one_line_error(result, must)
        named = str(bad_dir) in result.stderr
        report("bad file", f"tokenizer run: {case}", line, ok and named and not (work / "PWNED").exists())

    # A prior whose vocabulary is not the tokenizer's.
    other = work / "files" / "tokenizer-k16"
    run(["tokenizer/train.py", *TOKENIZER, "codebook_size=16", "max_steps=2", f"data_root={mnist}",
         f"out_dir={other}"])
    result = run(["sampling/generate.py", "--n", "4", "--prior", str(prior), "--tokenizer", str(other),
                  "--out", str(work / "files" / "out")])
    ok, line = one_line_error(result, "num_codes=32")
    report("bad file", "prior vocab 32 vs a K=16 tokenizer", line, ok)

    # Damaged resume checkpoints: refused by name, never silently skipped.
    for case, target, damage in [("flipped bit in a checkpoint's optimizer state", "optimizer.safetensors", flip(50)),
                                 ("truncated state.json", "state.json",
                                  lambda p: p.write_text(p.read_text()[:20]))]:
        bad = work / "files" / f"resume-{target}"
        shutil.copytree(tok, bad)
        from common.checkpoint import list_checkpoints
        damage(list_checkpoints(bad / "checkpoints")[-1] / target)
        result = run(["tokenizer/train.py", *TOKENIZER, "epochs=3", f"data_root={mnist}", f"out_dir={bad}"])
        ok, line = one_line_error(result, target)
        report("bad file", f"resume from a {case}", line, ok)

    # MNIST itself: a damaged copy is caught by its md5 before training.
    for case, name, damage in [("truncated train images", "train-images-idx3-ubyte",
                                lambda p: p.write_bytes(p.read_bytes()[:1000])),
                               ("one flipped byte in test labels", "t10k-labels-idx1-ubyte", flip(7))]:
        root = work / "files" / f"mnist-{name}"
        shutil.copytree(mnist / "MNIST" / "raw", root / "MNIST" / "raw")
        damage(root / "MNIST" / "raw" / name)
        result = run(["tokenizer/train.py", f"data_root={root}", f"out_dir={work / 'files' / 'never'}"])
        ok, line = one_line_error(result, "md5")
        report("bad file", f"MNIST: {case}", line, ok and not (work / "files" / "never").exists())


def inputs(work: Path, runs: dict[str, Path]) -> None:
    out = work / "inputs-out"
    prior = ["--prior", str(runs["prior"]), "--out", str(out)]
    np_image = work / "wide.npz"
    import numpy as np
    np.savez(np_image, images=np.zeros((2, 28, 30), dtype=np.uint8))
    np.savez(work / "object.npz", images=np.array([{"a": 1}], dtype=object))
    cli = [
        (["tokenizer/train.py", "lr=-1"], "lr must be > 0"),
        (["tokenizer/train.py", "epochs=two"], "expected int"),
        (["tokenizer/train.py", "batch_size=0"], "batch_size must be >= 1"),
        (["tokenizer/train.py", "codebok_size=64"], "did you mean codebook_size"),
        (["tokenizer/train.py", "dataset=cifar10"], "no such file or folder; expected mnist, fashion"),
        (["tokenizer/train.py", "codebook_size=1"], "codebook_size=1"),
        (["tokenizer/train.py", "beta=-0.5"], "beta"),
        (["tokenizer/train.py", "grad_clip=-1"], "grad_clip"),
        (["tokenizer/train.py", "resume=/no/such/checkpoint"], "resume="),
        (["tokenizer/train.py", "--config", "/no/such.yaml"], "/no/such.yaml"),
        (["tokenizer/train.py", "lr"], "key=value"),
        (["prior/train.py", "n_embd=30", "n_head=4"], "n_embd"),
        (["prior/train.py", "label_dropout=1.5"], "label_dropout"),
        (["prior/train.py", "tokenizer=/no/such/run"], "no trained tokenizer"),
        (["sampling/generate.py", "--n", "0", *prior], "n=0"),
        (["sampling/generate.py", "--n", "-5", *prior], "n=-5"),
        (["sampling/generate.py", "--temperature", "0", *prior], "temperature=0"),
        (["sampling/generate.py", "--top-k", "0", *prior], "top_k=0"),
        (["sampling/generate.py", "--top-p", "1.5", *prior], "top_p=1.5"),
        (["sampling/generate.py", "--digit", "10", *prior], "has 10 classes"),
        (["sampling/generate.py", "--digit", "seven", *prior], "give a class number"),
        (["sampling/generate.py", "--batch-size", "0", *prior], "batch_size=0"),
        (["sampling/generate.py", "--keep-rows", "9", "--complete", str(np_image), *prior], "keep-rows"),
        (["sampling/generate.py", "--complete", str(np_image), *prior], "takes 28x28 grey images"),
        (["sampling/generate.py", "--complete", str(work / "object.npz"), *prior], "object.npz"),
        (["sampling/generate.py", "--complete", "/no/such.png", *prior], "file not found"),
        (["sampling/evaluate.py", "/no/such.npz"], "/no/such.npz"),
    ]
    for args, must in cli:
        if args[0].endswith("train.py"):
            args = [*args, f"out_dir={out}"]
        result = run(args)
        ok, line = one_line_error(result, must)
        hidden = {"--out", "--prior", str(out), str(runs["prior"]), f"out_dir={out}"}
        shown = " ".join(a.replace(f"{work}/", "") for a in args if a not in hidden)
        report("bad input", shown, line, ok and not out.exists())

    import torch
    from tokenizer import load_tokenizer
    tok = load_tokenizer(runs["tokenizer"])
    api = [("encode(a 32x32 batch)", lambda: tok.encode(torch.zeros(2, 1, 32, 32)), "28"),
           ("encode(pixels in 0..255)", lambda: tok.encode(torch.full((2, 1, 28, 28), 255.0)), "[0,1]"),
           ("decode(token 32 of K=32)", lambda: tok.decode(torch.full((1, 7, 7), 32)), "32"),
           ("decode(a 6x6 grid)", lambda: tok.decode(torch.zeros(1, 6, 6, dtype=torch.long)), "7")]
    for case, call, must in api:
        try:
            call()
            report("bad input", f"API {case}", "ACCEPTED", False)
        except (ValueError, TypeError) as err:
            text = str(err)
            report("bad input", f"API {case}", text[:110], must in text and "\n" not in text)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2], argv[3:])
    sections = argv or ["kills", "files", "inputs"]
    unknown = set(sections) - {"kills", "files", "inputs"}
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}: choose from kills, files, inputs")
    from tokenizer.data import data_root, ensure_dataset
    mnist = data_root()
    ensure_dataset(mnist, "mnist")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vqgen-faults-") as tmp:
        work = Path(tmp)
        runs = kills(work, mnist) if "kills" in sections else _references(work, mnist)
        if "files" in sections:
            files(work, mnist, runs)
        if "inputs" in sections:
            inputs(work, runs)
    failed = [r for r in ROWS if not r[3]]
    print(f"\n| | what | outcome |\n|---|---|---|")
    for section, case, outcome, ok in ROWS:
        print(f"| {'ok' if ok else '**FAIL**'} | {section}: {case} | {outcome.replace('|', '/')} |")
    print(f"\n{len(ROWS) - len(failed)}/{len(ROWS)} passed in {time.perf_counter() - start:.0f} s")
    raise SystemExit(1 if failed else 0)


def _references(work: Path, mnist: Path) -> dict[str, Path]:
    tok, prior = work / "tokenizer-reference", work / "prior-reference"
    for args in ([f"tokenizer/train.py", *TOKENIZER, f"out_dir={tok}"],
                 [f"prior/train.py", *PRIOR, f"tokenizer={tok}", f"out_dir={prior}"]):
        result = run([*args, f"data_root={mnist}"])
        assert result.returncode == 0, result.stderr[-2000:]
    return {"tokenizer": tok, "prior": prior}


if __name__ == "__main__":
    main(sys.argv[1:])
