"""gpt2jax command line: `python run.py --mode=MODE --config=configs/FILE.py[:ARG] [--config.x=v]`.

Modes: generate, train, eval, prepare, sweep, config (list every key), plan (compile a train
step on simulated devices); see gpt2jax/cli/. User errors print one line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gpt2jax.parallel import distributed
from gpt2jax.cli import MODES, CliArgs, run_mode
from gpt2jax.cli.console import PipeSafeStdout
from gpt2jax.cli.config_check import parse_flags
from gpt2jax.errors import GPT2JaxError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/gpt2.py:small; override any key with "
    "--config.KEY=VALUE (list them all: --mode=config).", lock_config=True
)
_MODE = flags.DEFINE_enum("mode", "generate", sorted(MODES),
                          "What to run; `config` prints every config key, its value and "
                          "comment (with the overrides applied).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_PROMPT = flags.DEFINE_string("prompt", None, "Prompt text for --mode=generate.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "File with one prompt per line.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write results as JSON to this path.")
_COMPILE_N_LAYER = flags.DEFINE_integer(
    "compile_n_layer", 0, "--mode=plan: compile a copy with this many layers after lowering "
    "the whole model (0 = compile the whole model).")
# Multi-process (one process per host); automatic on Cloud TPU. See docs/scale-out.md.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for jax.distributed (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", distributed.AUTO_CPU_DEVICES,
    "Split the host CPU into this many JAX devices; with the default mesh (data=-1) training "
    "then runs data-parallel across them (the batch must divide). -1 (default): for "
    "--mode=train, one device per core, or the most that divide the micro-batch (exact: same "
    "losses, faster on CPU); 0: JAX's default, one device.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "off"],
    "auto: initialise jax.distributed from the flags above, or by itself on Cloud TPU; off: never.")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gpt2.py:small")
    args = CliArgs(
        workdir=_WORKDIR.value,
        prompt=_PROMPT.value,
        prompt_file=_PROMPT_FILE.value,
        output_json=_OUTPUT_JSON.value,
        config_file=config_flags.get_config_filename(flags.FLAGS["config"]),
        config_overrides=tuple(config_flags.get_override_values(flags.FLAGS["config"])),
        compile_n_layer=_COMPILE_N_LAYER.value,
    )
    _quiet_logs()
    sys.stdout = PipeSafeStdout(sys.stdout)  # `run.py ... | head` does not end a training run
    try:
        _split_cpu()
        _init_distributed()
        run_mode(_MODE.value, _CONFIG.value, args)
    except GPT2JaxError as e:
        logging.flush()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _quiet_logs() -> None:
    """Warnings and our own lines only: absl INFO (Orbax's per-save lines, the sharding table,
    one line per step) stays off unless `--verbosity` / `-v` asks for it."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _split_cpu() -> None:
    """--cpu_devices (its default: one device per core for training), before JAX starts."""
    process_flags = distributed.ProcessFlags(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    count = distributed.default_cpu_devices(_CPU_DEVICES.value, _MODE.value, _CONFIG.value,
                                            process_flags)
    distributed.set_cpu_devices(count)
    if count > 1:
        logging.info("CPU host split into %d JAX devices (--cpu_devices=%d).", count, count)


def _init_distributed() -> None:
    """Starts jax.distributed before anything touches the devices; only process 0 logs."""
    process_flags = distributed.ProcessFlags(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _DISTRIBUTED.value == "off":
        distributed.validate(process_flags)
        return
    if distributed.initialize(process_flags):
        logging.info("jax.distributed: %s", distributed.describe())


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)  # config problems: one line, exit 2
