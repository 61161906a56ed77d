"""Crash safety of training: SIGKILL at random moments, SIGTERM preemption, partial checkpoints.

Each training run is a child of the session's zygote (tests/zygote.py: forked before JAX is
imported, so a run pays only JAX's and gpt2jax's imports; the jit cache is persistent too):
`train_job` runs `gpt2jax.training.loop.train_and_evaluate` on a tiny char-level model (2
simulated CPU devices, dropout on, a prefetching batch iterator, a checkpoint every 2 steps,
asynchronous Orbax saves) with a hook that appends `step sha256(params)` to a log after every
step. The test kills runs at seeded random moments (after a random number of steps plus a
random delay; every other kill waits until an Orbax temporary checkpoint directory exists,
i.e. during an asynchronous write).

What must hold (Orbax's promise: a checkpoint is written under a temporary name and renamed
into `<step>/` when complete; readers ignore temporary names):
- after every kill, the next run resumes from the newest *finalized* checkpoint present at
  the moment of the kill: its first step is that step + 1;
- every step any run logs has exactly the params of the uninterrupted reference run at that
  step (restored params, optimizer state, dropout rng and data position are all exact);
- a copy of a real checkpoint under Orbax's temporary name with a newer step (its largest
  file truncated) is ignored by `latest_step()` and by the last run;
- the run finishes with the reference's final params.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest

from gpt2jax.errors import GPT2JaxError
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.training.loop import train_and_evaluate
from helpers import char_run_config, params_hash

TMP_MARK = "orbax-checkpoint-tmp"
NUM_KILLS = int(os.environ.get("GPT2JAX_CRASH_KILLS", "10"))
TOTAL_STEPS = 40
SEED = 20261128
CHILD_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- child side


def train_job(text_file: str, workdir: str, log: str, num_steps: int, save_every: int) -> int:
    """One training run in a zygote child: batch 4 on 2 devices, dropout 0.1, 2 batches
    prefetched; appends `step params-hash` to `log` after every step. Exit 2 with one
    `error:` line on a GPT2JaxError, as run.py."""
    config = char_run_config(text_file, num_steps, save_every=save_every)
    config.model.update(embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)  # rng must resume
    config.train.batch_size = 4
    config.data.prefetch = 2  # the data position must resume past the prefetched batches
    out = open(log, "a", buffering=1)

    def hook(step, run):
        out.write(f"{step} {params_hash(run.state.params)}\n")
        out.flush()

    try:
        train_and_evaluate(config, workdir, hooks=[hook])
    except GPT2JaxError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


# ----------------------------------------------------------------------------- test side


def _listing(workdir: Path) -> list[str]:
    d = workdir / "checkpoints"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _log_lines(log: Path) -> int:
    """Number of complete lines in the hook log (cheap: one read of a small file)."""
    try:
        return log.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _new_tmp(workdir: Path, old: set[str]) -> bool:
    return any(TMP_MARK in n and n not in old for n in _listing(workdir))


def _moment_reached(kill: dict, work: Path, log: Path, steps_before: int, old: set[str]) -> bool:
    """The child ran `after_steps` new steps and finalized `after_saves` new checkpoints."""
    saves = [n for n in _listing(work) if n.isdigit() and n not in old]
    return (_log_lines(log) - steps_before >= kill["after_steps"]
            and len(saves) >= kill["after_saves"])


def _kill_at_the_moment(zygote, kill: dict, work: Path, log: Path, steps_before: int,
                        old: set[str]) -> dict:
    """Waits for the moment of `kill` and sends its signal; after a SIGKILL, reaps the child
    and records what the crash left. Returns the state so far ({} if the child ended first)."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        result = zygote.poll()
        if result is not None:
            return {"result": result, "finished_early": True}
        if _moment_reached(kill, work, log, steps_before, old):
            time.sleep(kill["delay"])
            until = time.monotonic() + 3.0
            while kill["wait_tmp"] and time.monotonic() < until and not _new_tmp(work, old):
                time.sleep(0.002)
            zygote.signal(kill["signal"])
            if kill["signal"] != "SIGKILL":
                return {"signal": kill["signal"]}
            result = zygote.wait(CHILD_TIMEOUT_S)  # dead: the directory is what a crash leaves
            return {"result": result, "signal": "SIGKILL", "tmp_at_kill": _new_tmp(work, old),
                    "listing_at_kill": _listing(work)}
        time.sleep(0.02)  # polling is the test's only cost while the child runs: keep it light
    return {}


def run_job(zygote, text: Path, env: dict[str, str], work: Path, log: Path, num_steps: int,
            save_every: int = 2, kill: dict | None = None) -> dict:
    """One `train_job` in a zygote child, killed at the moment of `kill` if given.

    Returns {exit, cpu_s, seconds, finished_early, signal, tmp_at_kill, listing_at_kill,
    listing_after}; `listing_*`: the workdir's checkpoints/ at the kill / after the run."""
    steps_before, old = _log_lines(log), set(_listing(work))
    t0 = time.monotonic()
    zygote.start("test_crash_safety:train_job",
                 [str(text), str(work), str(log), num_steps, save_every],
                 log=Path(f"{log}.out"), env=env, timeout=CHILD_TIMEOUT_S)
    state = {"signal": None, "tmp_at_kill": False, "listing_at_kill": [],
             "finished_early": False}
    if kill is not None:
        state.update(_kill_at_the_moment(zygote, kill, work, log, steps_before, old))
    result = state.pop("result", None) or zygote.wait(CHILD_TIMEOUT_S + 30)
    return dict(state, exit=result["exit"], cpu_s=result["cpu_s"],
                seconds=round(time.monotonic() - t0, 2), listing_after=_listing(work))


@pytest.fixture(scope="module")
def run(zygote, shakespeare_20k, tmp_path_factory):
    """run(work, log, num_steps, save_every=2, kill=None) -> run_job's dict; the children
    see 2 simulated CPU devices and share one XLA compilation cache."""
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jit_cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return functools.partial(run_job, zygote, shakespeare_20k, env)


def read_log(log: Path) -> list[tuple[int, str]]:
    return [(int(a), b) for a, b in (ln.split() for ln in log.read_text().splitlines() if ln)]


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> dict[int, str]:
    """step -> params hash of an uninterrupted run."""
    work = tmp_path_factory.mktemp("reference")
    res = run(work / "run", work / "log", TOTAL_STEPS, save_every=10 * TOTAL_STEPS)  # the last
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
    ck = Checkpointer(work, keep=3, keep_best=0)
    try:
        assert ck.latest_step() == latest and fake_step not in ck.all_steps()
    finally:
        ck.close()


def _finalized(listing: list[str]) -> list[int]:
    return sorted(int(n) for n in listing if n.isdigit())


def test_sigkill_at_random_moments_resumes_from_last_complete_checkpoint(
        run, reference, tmp_path, record_property):
    rng = random.Random(SEED)
    work, log = tmp_path / "run", tmp_path / "log"
    kills, runs = [], 0
    expected_first = 1
    while len(kills) < NUM_KILLS and runs < NUM_KILLS + 6:
        kill = {"after_saves": rng.randint(0, 2), "after_steps": rng.randint(0, 3),
                "delay": round(rng.uniform(0.0, 0.15), 3), "wait_tmp": len(kills) % 2 == 1,
                "signal": "SIGKILL"}
        n_before = len(read_log(log)) if log.exists() else 0
        res = run(work, log, TOTAL_STEPS, kill=kill)
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
    stale = [n for n in _listing(work) if TMP_MARK in n]
    record_property("message", f"{len(kills)} kills, {len(stale)} unfinalized checkpoint "
                    "directories left by the kills; a planted newer one was ignored")
    assert expected_first > 1 and read_log(log)[-1][0] < TOTAL_STEPS, "too little left to run"
    _plant_unfinalized_newer_checkpoint(work, expected_first - 1, TOTAL_STEPS + 5)
    n_before = len(read_log(log))
    res = run(work, log, TOTAL_STEPS)
    assert res["exit"] == 0, (tmp_path / "log.out").read_text()[-3000:]
    assert read_log(log)[n_before][0] == expected_first  # not the planted step + 1
    # the resumed run's Orbax manager removed what the crashed writes (and the plant) left
    assert not [n for n in res["listing_after"] if TMP_MARK in n], res["listing_after"]
    assert len(kills) >= NUM_KILLS, kills
    assert sum(k["write_in_progress"] for k in kills) >= NUM_KILLS // 3, kills
    for step, digest in read_log(log):  # every step of every run equals the reference
        assert digest == reference[step], f"step {step} differs from the uninterrupted run"
    assert read_log(log)[-1] == (TOTAL_STEPS, reference[TOTAL_STEPS])


def test_sigterm_saves_checkpoint_waits_and_exits_zero(run, reference, tmp_path,
                                                       record_property):
    work, log = tmp_path / "run", tmp_path / "log"
    res = run(work, log, TOTAL_STEPS, save_every=1000, kill={
        "after_saves": 0, "after_steps": 5, "delay": 0.0, "wait_tmp": False, "signal": "SIGTERM"})
    out = (tmp_path / "log.out").read_text()
    record_property("message", [ln for ln in out.splitlines() if "SIGTERM" in ln][-1:])
    assert res["exit"] == 0, out[-3000:]
    last = read_log(log)[-1][0]
    assert 5 <= last < TOTAL_STEPS
    assert _finalized(res["listing_after"]) == [last]  # saved at the step it stopped, committed
    assert not any(TMP_MARK in n for n in res["listing_after"])
    assert f"SIGTERM at step {last}" in out
    res = run(work, log, last + 2)
    assert res["exit"] == 0
    steps = read_log(log)
    assert [s for s, _ in steps[-2:]] == [last + 1, last + 2]
    assert all(d == reference[s] for s, d in steps)
