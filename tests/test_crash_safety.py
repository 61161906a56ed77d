"""Crash safety of training: SIGKILL at random moments, SIGTERM preemption, partial checkpoints.

A "zygote" subprocess imports jax + gpt2jax once, then forks one child per training run; a
child runs `gpt2jax.training.loop.train_and_evaluate` on a tiny char-level model (2 simulated CPU
devices, a checkpoint every 2 steps, asynchronous Orbax saves) with a hook that appends
`step sha256(params)` to a log after every step. The zygote kills children at seeded random
moments (after a random number of steps plus a random delay; every other kill waits until
an Orbax temporary checkpoint directory exists, i.e. during an asynchronous write). Forking
skips the import cost of a fresh `python` (the jit compile cache is persistent too), so ten
kills fit the CI budget on 2 cores; a SIGKILLed fork is killed exactly as a process is.

What must hold (Orbax's promise: a checkpoint is written under a temporary name and renamed
into `<step>/` when complete; readers ignore temporary names):
- after every kill, the next run resumes from the newest *finalized* checkpoint present at
  the moment of the kill: its first step is that step + 1;
- every step any run logs has exactly the params of the uninterrupted reference run at that
  step (restored params, optimizer state, rng and data position are all exact);
- a copy of a real checkpoint under Orbax's temporary name with a newer step (its largest
  file truncated) is ignored by `latest_step()` and by the last run;
- the run finishes with the reference's final params.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TMP_MARK = "orbax-checkpoint-tmp"
NUM_KILLS = int(os.environ.get("GPT2JAX_CRASH_KILLS", "10"))
TOTAL_STEPS = 40
SEED = 20261128
CHILD_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- child side


def tiny_config(text_file: str, num_steps: int, learning_rate: float = 1e-3,
                save_every: int = 2, nan_policy: str | None = None):
    """A 1-layer char model on `text_file`: every field comes from configs/common.py."""
    import ml_collections

    from configs import common

    c = ml_collections.ConfigDict()
    c.model = common.model_config(n_layer=1, n_embd=16, n_head=2, n_positions=32,
                                  vocab_size=65, embd_pdrop=0.0, attn_pdrop=0.0,
                                  resid_pdrop=0.0)
    c.train = common.train_config(
        batch_size=4, grad_accum_steps=1, block_size=16, num_steps=num_steps,
        learning_rate=learning_rate, min_learning_rate=learning_rate / 10, warmup_steps=2,
        lr_decay_steps=100, log_every=1, eval_every=0, peak_flops=1e12, export_hf=False,
        progress_bar=False)
    if nan_policy is not None and "on_nonfinite" in c.train:
        c.train.on_nonfinite = nan_policy
    c.data = common.data_config(train_file=text_file, tokenizer="char", prefetch=0)
    c.checkpoint = common.checkpoint_config(save_every=save_every, keep=3, keep_best=0,
                                            async_save=True)
    c.mesh = common.mesh_config()
    c.seed = 0
    c.init_from = ""
    return c


def params_hash(params) -> str:
    """sha256 over the bytes of every leaf of a params pytree (host copy), in tree order."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _child(job: dict) -> int:
    """Runs one training job in a forked child; returns its exit status."""
    from gpt2jax.errors import GPT2JaxError
    from gpt2jax.training.loop import train_and_evaluate

    log = open(job["log"], "a", buffering=1)

    def hook(step, run):
        log.write(f"{step} {params_hash(run.state.params)}\n")
        log.flush()

    config = tiny_config(job["text"], job["num_steps"], job.get("lr", 1e-3),
                         job.get("save_every", 2), job.get("nan_policy"))
    try:
        train_and_evaluate(config, job["workdir"], hooks=[hook])
    except GPT2JaxError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def _listing(workdir: str) -> list[str]:
    d = Path(workdir) / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _log_lines(log: str) -> int:
    """Number of complete lines in the hook log (cheap: one read of a small file)."""
    try:
        with open(log, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _steps_logged(log: str) -> list[int]:
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [int(ln.split()[0]) for ln in lines if ln.strip() and len(ln.split()) == 2]


def _cpu(usage) -> float:
    return round(usage.ru_utime + usage.ru_stime, 2)


def _moment_reached(job: dict, steps_before: int, old: set[str]) -> bool:
    """The child ran `after_steps` new steps and finalized `after_saves` new checkpoints."""
    kill = job["kill"]
    saves = [n for n in _listing(job["workdir"]) if n.isdigit() and n not in old]
    return (_log_lines(job["log"]) - steps_before >= kill["after_steps"]
            and len(saves) >= kill["after_saves"])


def _new_tmp(workdir: str, old: set[str]) -> bool:
    return any(TMP_MARK in n and n not in old for n in _listing(workdir))


def _supervise(pid: int, job: dict, steps_before: int, old: set[str]) -> dict:
    """Waits for the kill moment of `job["kill"]`, sends the signal, reaps the child.

    `steps_before` / `old`: the log length and checkpoint listing before the child started
    (temporary directories left by earlier crashes are not "a write in progress").
    """
    kill, start = job.get("kill"), time.monotonic()
    state = {"signal": None, "tmp_at_kill": False, "listing_at_kill": []}
    while kill is not None:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return dict(state, exit=os.waitstatus_to_exitcode(status), finished_early=True,
                        cpu_s=_cpu(usage), listing_after=_listing(job["workdir"]))
        if time.monotonic() - start > CHILD_TIMEOUT_S:
            break
        if _moment_reached(job, steps_before, old):
            time.sleep(kill["delay"])
            deadline = time.monotonic() + 3.0
            while (kill["wait_tmp"] and time.monotonic() < deadline
                   and not _new_tmp(job["workdir"], old)):
                time.sleep(0.002)
            os.kill(pid, getattr(signal, kill["signal"]))
            state["signal"] = kill["signal"]
            if kill["signal"] == "SIGKILL":
                _, _, usage = os.wait4(pid, 0)  # dead: the directory is what a crash leaves
                return dict(state, exit=-9, tmp_at_kill=_new_tmp(job["workdir"], old),
                            listing_at_kill=_listing(job["workdir"]), finished_early=False,
                            cpu_s=_cpu(usage))
            break
        time.sleep(0.02)  # polling is the parent's only cost: keep it light
    deadline = start + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return dict(state, exit=os.waitstatus_to_exitcode(status), finished_early=False,
                        listing_after=_listing(job["workdir"]), cpu_s=_cpu(usage))
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return dict(state, exit="timeout", finished_early=False)


def zygote_main() -> None:
    """Reads one JSON job per stdin line, forks a child per job, answers one JSON line."""
    import jax

    cache = os.environ.get("GPT2JAX_TEST_JIT_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import gpt2jax.training.loop  # noqa: F401  (imported once, before any fork)
    import tensorboardX  # noqa: F401  (the loop imports it lazily; it pulls in torch: seconds)

    for line in sys.stdin:
        job = json.loads(line)
        steps_before, old = _log_lines(job["log"]), set(_listing(job["workdir"]))
        out = open(job["log"] + ".out", "ab")
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            code = 1
            try:
                code = _child(job)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        out.close()
        t0 = time.monotonic()
        result = _supervise(pid, job, steps_before, old)
        result["seconds"] = round(time.monotonic() - t0, 2)
        print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- test side


class Zygote:
    """The zygote subprocess, one JSON job in, one JSON result out."""

    def __init__(self, cache_dir: Path):
        env = dict(os.environ, JAX_PLATFORMS="cpu", GPT2JAX_TEST_JIT_CACHE=str(cache_dir),
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        code = ("import sys; sys.path[:0] = [%r, %r]; import test_crash_safety as t; "
                "t.zygote_main()" % (str(REPO), str(REPO / "tests")))
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, **job) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"zygote died (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_ZYGOTES: dict[str, Zygote] = {}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    """One zygote per pytest session, shared by the modules that import this fixture (its
    imports and the jit cache are paid once); closed when the session ends."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _ZYGOTES:
        _ZYGOTES[key] = Zygote(tmp_path_factory.getbasetemp() / "jit_cache")
        atexit.register(_ZYGOTES[key].close)
    return _ZYGOTES[key]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, data_dir) -> str:
    """20,000 characters of Tiny Shakespeare (tokenizing the whole file per run is waste)."""
    path = tmp_path_factory.mktemp("text") / "shakespeare_20k.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20000])
    return str(path)


def read_log(log: Path) -> list[tuple[int, str]]:
    return [(int(a), b) for a, b in (ln.split() for ln in log.read_text().splitlines() if ln)]


@pytest.fixture(scope="module")
def reference(zygote, text_file, tmp_path_factory) -> dict[int, str]:
    """step -> params hash of an uninterrupted run."""
    work = tmp_path_factory.mktemp("reference")
    res = zygote.run(workdir=str(work / "run"), log=str(work / "log"), text=text_file,
                     num_steps=TOTAL_STEPS, save_every=10 * TOTAL_STEPS)  # only the last
    assert res["exit"] == 0, (work / "log.out").read_text()[-3000:]
    ref = dict(read_log(work / "log"))
    assert sorted(ref) == list(range(1, TOTAL_STEPS + 1))
    return ref


def _plant_unfinalized_newer_checkpoint(work: Path, latest: int, fake_step: int) -> None:
    """Copies finalized checkpoint `latest` to `<fake_step>.orbax-checkpoint-tmp-...` (a newer
    step under Orbax's temporary name, its largest file cut in half) and checks that Orbax
    does not list it."""
    ckpts = work / "checkpoints"
    fake = ckpts / f"{fake_step}.{TMP_MARK}-1764370000000000"
    shutil.copytree(ckpts / str(latest), fake)
    biggest = max((p for p in fake.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    from gpt2jax.training.checkpoint import Checkpointer

    ck = Checkpointer(work, keep=3, keep_best=0)
    try:
        assert ck.latest_step() == latest and fake_step not in ck.all_steps()
    finally:
        ck.close()


def _finalized(listing: list[str]) -> list[int]:
    return sorted(int(n) for n in listing if n.isdigit())


def test_sigkill_at_random_moments_resumes_from_last_complete_checkpoint(
        zygote, reference, text_file, tmp_path, record_property):
    rng = random.Random(SEED)
    work, log = tmp_path / "run", tmp_path / "log"
    kills, runs = [], 0
    expected_first = 1
    while len(kills) < NUM_KILLS and runs < NUM_KILLS + 6:
        kill = {"after_saves": rng.randint(0, 2), "after_steps": rng.randint(0, 3),
                "delay": round(rng.uniform(0.0, 0.15), 3), "wait_tmp": len(kills) % 2 == 1,
                "signal": "SIGKILL"}
        n_before = len(read_log(log)) if log.exists() else 0
        res = zygote.run(workdir=str(work), log=str(log), text=text_file,
                         num_steps=TOTAL_STEPS, kill=kill)
        runs += 1
        new = read_log(log)[n_before:]
        if new:  # the run resumed exactly after the newest finalized checkpoint
            assert new[0][0] == expected_first, (new[0], expected_first, kills[-1:])
        if res["finished_early"]:
            assert res["exit"] == 0
            break
        assert res["exit"] == -9, res
        done = _finalized(res["listing_at_kill"])
        expected_first = (done[-1] if done else 0) + 1
        moment = ("during an async checkpoint write" if res["tmp_at_kill"] else
                  "during a step" if new else "during start-up / restore")
        kills.append({"moment": moment, "after_saves": kill["after_saves"],
                      "after_steps": kill["after_steps"], "delay": kill["delay"],
                      "waited_for_write": kill["wait_tmp"], "steps_run": len(new),
                      "last_step": new[-1][0] if new else None,
                      "write_in_progress": res["tmp_at_kill"],
                      "resume_from": expected_first - 1, "seconds": res["seconds"],
                      "cpu_s": res["cpu_s"]})
    record_property("kills", json.dumps(kills))
    stale = [n for n in _listing(str(work)) if TMP_MARK in n]
    record_property("message", f"{len(kills)} kills, {len(stale)} unfinalized checkpoint "
                    "directories left by the kills; a planted newer one was ignored")
    assert expected_first > 1 and read_log(log)[-1][0] < TOTAL_STEPS, "too little left to run"
    _plant_unfinalized_newer_checkpoint(work, expected_first - 1, TOTAL_STEPS + 5)
    n_before = len(read_log(log))
    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=TOTAL_STEPS)
    assert res["exit"] == 0, (tmp_path / "log.out").read_text()[-3000:]
    assert read_log(log)[n_before][0] == expected_first  # not the planted step + 1
    # the resumed run's Orbax manager removed what the crashed writes (and the plant) left
    assert not [n for n in res["listing_after"] if TMP_MARK in n], res["listing_after"]
    assert len(kills) >= NUM_KILLS, kills
    assert sum(k["write_in_progress"] for k in kills) >= NUM_KILLS // 3, kills
    for step, digest in read_log(log):  # every step of every run equals the reference
        assert digest == reference[step], f"step {step} differs from the uninterrupted run"
    assert read_log(log)[-1] == (TOTAL_STEPS, reference[TOTAL_STEPS])


def test_sigterm_saves_checkpoint_waits_and_exits_zero(zygote, reference, text_file, tmp_path,
                                                       record_property):
    work, log = tmp_path / "run", tmp_path / "log"
    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=TOTAL_STEPS,
                     save_every=1000, kill={"after_saves": 0, "after_steps": 5, "delay": 0.0,
                                            "wait_tmp": False, "signal": "SIGTERM"})
    out = (tmp_path / "log.out").read_text()
    record_property("message", [ln for ln in out.splitlines() if "SIGTERM" in ln][-1:])
    assert res["exit"] == 0, out[-3000:]
    last = read_log(log)[-1][0]
    assert 5 <= last < TOTAL_STEPS
    assert _finalized(res["listing_after"]) == [last]  # saved at the step it stopped, committed
    assert not any(TMP_MARK in n for n in res["listing_after"])
    assert f"SIGTERM at step {last}" in out
    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=last + 2)
    assert res["exit"] == 0
    steps = read_log(log)
    assert [s for s, _ in steps[-2:]] == [last + 1, last + 2]
    assert all(d == reference[s] for s, d in steps)
