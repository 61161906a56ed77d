"""Two `python run.py --mode=train` processes on localhost == one process with the same mesh.

The real command line end to end, the way a two-host job runs it: `jax.distributed` from
`--coordinator_address/--num_processes/--process_id`, one CPU device per process, the char
Shakespeare config reading Tiny Shakespeare, the real loop and per-process data iterator,
metrics on process 0 only, Orbax saves from both processes and the multi-host HF export
gather. Both processes get SIGTERM mid-run: they save the same step and exit 0; the same
commands run again resume from it and finish. Every logged loss, the final validation loss
and the exported HF weights must equal those of `run.py` in one process with
`--cpu_devices=2` (the same global mesh, data=2), which runs alongside the first phase.

Timing: process 1 is frozen (SIGSTOP) while both get SIGTERM, so the run cannot finish
before JAX's preemption service has seen the signal, however fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 30
SIGNAL_AFTER_STEP = 3   # SIGTERM once process 0 has logged this step
PHASE_TIMEOUT_S = 300   # a hang fails the test instead of blocking CI
PROCESS0_FILES = ("config.json", "tokenizer.json", "shardings.txt", "metrics.jsonl",
                  "tensorboard", "hf")  # training/loop.py workdir layout, checkpoints aside
TINY = [  # a 2-layer char model, batch 4 x 32 tokens; every step logged; no sample text
    "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
    "--config.model.n_positions=32", "--config.train.block_size=32",
    "--config.train.batch_size=4", f"--config.train.num_steps={NUM_STEPS}",
    f"--config.train.lr_decay_steps={NUM_STEPS}", "--config.train.warmup_steps=5",
    "--config.train.log_every=1", f"--config.train.eval_every={NUM_STEPS}",
    "--config.train.eval_batches=2", "--config.train.sample_tokens=0",
    "--config.train.peak_flops=1e9", "--config.train.progress_bar=False",
    "--config.checkpoint.save_every=0",  # saves: the preemption one and the last step
    "--verbosity=0",  # absl INFO on: the jax.distributed and mesh lines this test reads
]

# Imported at start-up by every run.py process (PYTHONPATH): records each file or directory
# that Python code of the process creates or opens for writing under the workdir.
AUDIT = textwrap.dedent("""
    import os, sys
    _root = os.environ["AUDIT_ROOT"]
    _out = open(os.environ["AUDIT_LOG"], "a", buffering=1)
    _writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) \\
                and args[2] & _writes or event == "os.mkdir":
            paths = args[:1]
        elif event == "os.rename":
            paths = args[:2]
        else:
            return
        for path in map(os.path.abspath, map(os.fsdecode, paths)):
            if path.startswith(_root):
                _out.write(os.path.relpath(path, _root) + "\\n")

    sys.addaudithook(_hook)
""")


def _env(audit_dir: Path, audit_log: Path, root: Path) -> dict:
    """One CPU device per process unless --cpu_devices says otherwise (no test XLA_FLAGS)."""
    path = os.pathsep.join(p for p in (str(audit_dir), os.environ.get("PYTHONPATH")) if p)
    # One XLA compilation cache for the test's runs (beside the workdirs, outside the audit):
    # the resumed pair reuses the first pair's compiles (only process 0 writes entries).
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, PYTHONFAULTHANDLER="1",
               AUDIT_ROOT=str(root), AUDIT_LOG=str(audit_log),
               JAX_COMPILATION_CACHE_DIR=str(audit_dir.parent / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("XLA_FLAGS", None)
    return env


class Job:
    """Processes of one phase, their logs and the files they wrote (audited)."""

    def __init__(self, tmp: Path, tag: str, text_file: Path):
        self.tmp, self.tag, self.procs = tmp, tag, []
        self.base = [sys.executable, "run.py", "--mode=train",
                     "--config=configs/shakespeare_char.py:cpu",
                     f"--config.data.train_file={text_file}", *TINY]
        (tmp / "audit").mkdir(exist_ok=True)
        (tmp / "audit" / "sitecustomize.py").write_text(AUDIT)

    def start(self, name: str, workdir: Path, *flags: str) -> subprocess.Popen:
        log = self.tmp / f"{self.tag}_{name}"
        env = _env(self.tmp / "audit", log.with_suffix(".writes"), workdir)
        with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
            proc = subprocess.Popen(self.base + [f"--workdir={workdir}", *flags], env=env,
                                    cwd=REPO, stdout=out, stderr=err)
        self.procs.append((name, proc))
        return proc

    def start_pair(self, workdir: Path) -> list[subprocess.Popen]:
        address = f"--coordinator_address=127.0.0.1:{free_port()}"
        return [self.start(f"p{i}", workdir, address, "--num_processes=2", f"--process_id={i}")
                for i in range(2)]

    def output(self, name: str, kind: str = "out") -> str:
        return (self.tmp / f"{self.tag}_{name}.{kind}").read_text()

    def writes(self, name: str) -> set[str]:
        path = self.tmp / f"{self.tag}_{name}.writes"
        return set(path.read_text().split()) if path.exists() else set()

    def check_alive(self) -> None:
        for name, proc in self.procs:
            assert proc.poll() is None, self.failure(name, proc)

    def failure(self, name: str, proc: subprocess.Popen) -> str:
        return (f"{self.tag} {name} exited {proc.returncode}:\n{self.output(name)[-2000:]}\n"
                f"{self.output(name, 'err')[-4000:]}")

    def wait(self, deadline: float) -> None:
        """Waits for every process until `deadline`; a process still alive then is killed."""
        try:
            for _, proc in self.procs:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        for name, proc in self.procs:
            assert proc.returncode == 0, self.failure(name, proc)

    def kill(self) -> None:
        """Stops what still runs: SIGABRT first, so that a hang leaves its Python stacks."""
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGABRT)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _train_losses(records: list[dict]) -> dict[int, float]:
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _wait_for_step(job: Job, workdir: Path, step: int, deadline: float) -> None:
    while max(_train_losses(_records(workdir)), default=0) < step:
        job.check_alive()
        assert time.monotonic() < deadline, f"step {step} not logged in {PHASE_TIMEOUT_S} s"
        time.sleep(0.02)


def _preempt(p0: subprocess.Popen, p1: subprocess.Popen) -> None:
    """SIGTERM to both while process 1 is frozen: process 0 blocks in the next collective,
    so the run cannot end before JAX's preemption notifier (which polls) has seen it."""
    os.kill(p1.pid, signal.SIGSTOP)
    try:
        p0.send_signal(signal.SIGTERM)
        p1.send_signal(signal.SIGTERM)  # delivered when it continues
        time.sleep(2.0)
    finally:
        os.kill(p1.pid, signal.SIGCONT)


def _finalized_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _hf_state(hf_dir: Path) -> dict[str, np.ndarray]:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(hf_dir)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_two_run_py_processes_preempted_and_resumed_equal_one_process(tmp_path, data_dir):
    text_file = data_dir / "tinyshakespeare" / "input.txt"
    multi, single = tmp_path / "multi", tmp_path / "single"
    first, second = Job(tmp_path, "first", text_file), Job(tmp_path, "second", text_file)
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        p0, p1 = first.start_pair(multi)
        first.start("single", single, "--cpu_devices=2")
        _wait_for_step(first, multi, SIGNAL_AFTER_STEP, deadline)
        _preempt(p0, p1)
        first.wait(deadline)
        stopped = _finalized_steps(multi)
        second.start_pair(multi)
        second.wait(time.monotonic() + PHASE_TIMEOUT_S)
    finally:
        first.kill()
        second.kill()

    # Preempted mid-run: both processes stopped at the same step, saved it and exited 0.
    assert len(stopped) == 1 and SIGNAL_AFTER_STEP <= stopped[0] < NUM_STEPS, stopped
    for name in ("p0", "p1"):
        assert f"preemption notice at step {stopped[0]}:" in first.output(name), name
    # Resumed from it and finished; losses, val loss, HF weights equal the one-process run.
    assert f"Resumed from {multi / 'checkpoints'} at step {stopped[0]}." in second.output("p0")
    assert _finalized_steps(multi) == [stopped[0], NUM_STEPS]
    for name in ("p0", "p1"):
        assert f"done: step {NUM_STEPS}," in second.output(name)
    assert "process 0 of 2: 1 local / 2 global cpu devices" in first.output("p0", "err")
    assert (multi / "shardings.txt").read_text() == (single / "shardings.txt").read_text()
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in first.output("single", "err")
    reference, records = _records(single), _records(multi)
    want, got = _train_losses(reference), _train_losses(records)
    assert sorted(got) == sorted(want) == list(range(1, NUM_STEPS + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-6, atol=0)
    assert want[NUM_STEPS] < want[1]  # it trains
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    val_ref = [(r["step"], r["val_loss"]) for r in reference if "val_loss" in r]
    assert [s for s, _ in val] == [s for s, _ in val_ref] == [NUM_STEPS]
    np.testing.assert_allclose(val[0][1], val_ref[0][1], rtol=1e-6, atol=0)
    exported, expected = _hf_state(multi / "hf"), _hf_state(single / "hf")
    assert sorted(exported) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(exported[key], value, rtol=1e-6, atol=0, err_msg=key)

    # Files other than checkpoints are process 0's: process 1 wrote none of them.
    hf_files = {"hf", "hf/gpt2jax_tokenizer.json"}  # hf/model.safetensors: written by Rust
    for job, expect in ((first, {"metrics.jsonl"}), (second, {"metrics.jsonl", *hf_files})):
        main_files = {f for f in job.writes("p0") if f != "." and not f.startswith("checkpoints")}
        assert expect <= main_files, main_files  # the audit sees them
        assert any(f.startswith("tensorboard/events.out.tfevents") for f in main_files)
        top = {f.split("/")[0] for f in main_files} | set(PROCESS0_FILES)
        assert not {f for f in job.writes("p1") if f.split("/")[0] in top}, job.writes("p1")
    # ... and printed no metrics: the console is process 0's too.
    evaluated = f"step {NUM_STEPS}: train loss"  # the evaluation's console line
    assert evaluated in second.output("p0") and evaluated in first.output("single")
    assert evaluated not in second.output("p1"), second.output("p1")
