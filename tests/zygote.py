"""A zygote: one process that imports only JAX-free modules, then forks a child per job; the
child imports JAX and runs the job. For tests that run many short processes (the CLI catalogue,
runs killed at random moments).

Why: forking a process that has imported JAX is unsafe (JAX is multithreaded; it warns at
fork), and a fresh `python` per job pays every import again. A fork of this process starts
with numpy, absl, ml_collections and the other heavy JAX-free modules loaded; the zygote checks
before its first fork that it holds no JAX and a single thread, so each fork is safe.

Test side (a session fixture in conftest.py), one job at a time:

    pid = zygote.start("module:function", args, log=path, env={...}, argv=[...])
    zygote.signal("SIGKILL")   # the zygote sends it (it is the parent: the pid is still ours)
    result = zygote.wait()     # {"exit": exit code (-signal if killed), "cpu_s": child CPU}

The child: `env` applied before any import, stdout and stderr appended to `log`, stdin from
/dev/null, `sys.argv = argv` (if given), then `module.function(*args)`; its return value (an
int, or None for 0) or `SystemExit` code is the exit status; any other exception prints its
traceback to `log` and exits 1. A child still running after `timeout` seconds gets SIGALRM.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# Loaded once in the zygote: JAX-free, and none starts a thread (pyarrow, pandas, sklearn and
# nltk do; torch's import is heavy and its own). What a job needs beyond these, it imports.
PRELOAD = ("numpy", "ml_dtypes", "scipy.special", "absl.app", "absl.flags", "absl.logging",
           "ml_collections", "ml_collections.config_flags", "yaml", "rich", "tqdm", "tiktoken",
           "regex", "msgpack", "sacrebleu", "etils.epath", "psutil", "safetensors.numpy",
           "filelock", "opt_einsum", "google.protobuf", "pytest")


class Zygote:
    """The test side: the zygote subprocess, one JSON line per request and per reply."""

    def __init__(self, log: Path, env: dict[str, str] | None = None):
        """Starts the zygote; its own output (not the children's) goes to `log`."""
        self._log = open(log, "ab")
        env = dict(os.environ if env is None else env, OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, __file__], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self._running = False

    def _send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def _reply(self, timeout: float | None) -> dict | None:
        """The next reply line, or None if none came within `timeout` seconds."""
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        assert line, f"the zygote died (exit {self.proc.poll()}; its log: {self._log.name})"
        return json.loads(line)

    def start(self, target: str, args: list | tuple = (), *, log: Path,
              env: dict[str, str] | None = None, argv: list[str] | None = None,
              timeout: float = 600) -> int:
        """Forks a child that runs `target` ("module:function") with `args`; returns its pid."""
        assert not self._running, "one job at a time: wait() for the previous one"
        self._send({"target": target, "args": list(args), "log": str(log), "env": env or {},
                    "argv": argv, "timeout": int(timeout)})
        self._running = True
        return self._reply(None)["pid"]

    def poll(self) -> dict | None:
        """The result if the child has ended, else None (does not block)."""
        result = self._reply(0)
        self._running = self._running and result is None
        return result

    def signal(self, name: str) -> None:
        """Sends signal `name` ("SIGKILL", "SIGTERM") to the running child."""
        self._send({"signal": name})

    def wait(self, timeout: float | None = None) -> dict:
        """Blocks until the child ends: {"exit": code, "cpu_s": seconds}."""
        result = self._reply(timeout)
        assert result is not None, f"the child did not end within {timeout} s"
        self._running = False
        return result

    def run(self, target: str, args: list | tuple = (), **kwargs) -> dict:
        """start() then wait()."""
        self.start(target, args, **kwargs)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------- jobs


def run_py() -> None:
    """The job `python run.py` is: run.py's entry point on `sys.argv` (the job's argv, with
    "run.py" first). Imported here, in the child: the zygote itself must not import JAX."""
    import run  # noqa: PLC0415
    from absl import app  # noqa: PLC0415
    from gpt2jax.cli.config_check import parse_flags  # noqa: PLC0415

    app.run(run.main, flags_parser=parse_flags)


# ----------------------------------------------------------------------------- zygote side


def _child(job: dict) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.environ.update(job["env"])
        out = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        signal.alarm(job["timeout"])
        if job["argv"] is not None:
            sys.argv = job["argv"]
        module, function = job["target"].split(":")
        result = getattr(importlib.import_module(module), function)(*job["args"])
        code = 0 if result is None else int(result)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (the log shows it; the exit status says it)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Lines:
    """Lines from a file descriptor without Python's buffering (so select() stays truthful)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def ready(self, timeout: float) -> bool:
        return b"\n" in self.buffer or bool(select.select([self.fd], [], [], timeout)[0])

    def read(self) -> str | None:
        """The next line, or None at end of input."""
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _supervise(pid: int, requests: _Lines) -> None:
    """Waits for child `pid`, passing on signal requests; replies with its exit and CPU time."""
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            _reply({"exit": os.waitstatus_to_exitcode(status),
                    "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})
            return
        if requests.ready(0.01):
            message = json.loads(requests.read() or "{}")
            if "signal" in message:
                os.kill(pid, getattr(signal, message["signal"]))


def main() -> None:
    sys.path[:0] = [str(REPO), str(TESTS)]
    for name in PRELOAD:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task"))
    loaded = [m for m in ("jax", "jaxlib", "flax", "orbax", "tensorstore") if m in sys.modules]
    if threads != 1 or loaded:
        sys.exit(f"zygote: unsafe to fork ({threads} threads, {loaded} imported); "
                 "remove what started them from PRELOAD")
    requests = _Lines(sys.stdin.fileno())
    while (line := requests.read()) is not None:
        job = json.loads(line)
        if "target" not in job:
            continue  # a signal for a child that has already ended
        pid = os.fork()
        if pid == 0:
            _child(job)
        _reply({"pid": pid})
        _supervise(pid, requests)


if __name__ == "__main__":
    main()
