"""Multi-process start-up through JAX's own runtime (`jax.distributed`), not a home-made layer.

One Python process per host (TPU VM worker, GPU node) runs the same command. Three ways in:
- Cloud TPU (and SLURM / Open MPI / Kubernetes clusters JAX knows): `jax.distributed.initialize()`
  with no arguments finds the coordinator and process ids itself (`auto`).
- Explicit: `--coordinator_address=host:port --num_processes=N --process_id=i` on every host.
- Nothing: one process, nothing to initialise.

Call `initialize(...)` before anything touches the devices (`jax.devices()` etc.).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import jax
from absl import logging

from gpt2jax.errors import ConfigError


class DistributedError(ConfigError):
    """Multi-process flags that cannot work together (missing, out of range, inconsistent)."""


def set_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` JAX devices (0 = leave JAX's default of one).

    Must run before anything touches the devices. On a multi-core CPU this lets the default
    mesh (data=-1) run data-parallel across cores: XLA:CPU's per-op threading uses small
    matrices poorly, so two devices on two cores train nanoGPT's CPU-recipe shape ~1.4x
    faster (bench/README.md). Accelerator platforms are unaffected.
    """
    if count == 0:
        return
    if not isinstance(count, int) or count < 0:
        raise ConfigError(f"--cpu_devices={count!r}; give a positive number of CPU devices "
                          "(e.g. the number of cores) or 0 for JAX's default.")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:
        raise ConfigError(f"--cpu_devices={count} came too late: JAX's backends are already "
                          f"running ({e}); set it before any device is used.") from e


AUTO_CPU_DEVICES = -1  # --cpu_devices default: one device per core when the batch divides


def auto_cpu_devices(micro_batch: int, cores: int) -> int:
    """The most CPU devices, at most `cores`, that split a micro-batch of `micro_batch`
    sequences evenly (1 = no split).

    Data parallelism over one device per core is exact (token-weighted sums reduced across
    devices: the losses equal one device's within float32 rounding) and faster on small
    models, whose matrices XLA:CPU's per-op threading uses poorly (bench/train.py).
    """
    return max(d for d in range(1, max(cores, 1) + 1) if micro_batch % d == 0)


def default_cpu_devices(flag: int, mode: str, config, flags: ProcessFlags) -> int:
    """What `--cpu_devices=flag` means for this run (`set_cpu_devices`' argument).

    `flag` >= 0 is used as given (0 = JAX's default, one device). `AUTO_CPU_DEVICES` splits
    the host for `--mode=train` with the default data-parallel mesh of one process
    (`auto_cpu_devices` of the config's micro-batch and this process's cores), unless the
    environment already sets the device count (XLA_FLAGS, JAX_NUM_CPU_DEVICES) or this is a
    multi-process run. An accelerator backend ignores the CPU device count.
    """
    if flag != AUTO_CPU_DEVICES:
        return flag
    m = config.get("mesh") if mode == "train" else None
    data_parallel = m is not None and m.data == -1 and all(
        m[k] == 1 for k in ("fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"))
    preset = ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
              or "JAX_NUM_CPU_DEVICES" in os.environ)
    if not data_parallel or preset or flags.given or in_cluster_job() or on_cloud_tpu():
        return 0
    micro = config.train.batch_size // max(config.train.grad_accum_steps, 1)
    devices = auto_cpu_devices(micro, len(os.sched_getaffinity(0)))
    return devices if devices > 1 else 0


@dataclasses.dataclass(frozen=True)
class ProcessFlags:
    """The multi-process flags of run.py; all None = not given."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


def validate(flags: ProcessFlags) -> None:
    """Raises DistributedError unless the three flags are all given and consistent, or none."""
    if not flags.given:
        return
    missing = [f.name for f in dataclasses.fields(flags) if getattr(flags, f.name) is None]
    if missing:
        raise DistributedError(
            f"Multi-process run is missing --{', --'.join(missing)}; pass --coordinator_address, "
            "--num_processes and --process_id together on every host (or none of them)."
        )
    host, _, port = flags.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(
            f"--coordinator_address={flags.coordinator_address!r} is not host:port; use e.g. "
            "10.0.0.2:1234 (process 0's address and a free port)."
        )
    if flags.num_processes < 1:
        raise DistributedError(f"--num_processes={flags.num_processes}; it must be >= 1.")
    if not 0 <= flags.process_id < flags.num_processes:
        raise DistributedError(
            f"--process_id={flags.process_id} is outside 0..{flags.num_processes - 1} "
            f"(--num_processes={flags.num_processes}); give each host a distinct id in that range."
        )


def on_cloud_tpu() -> bool:
    """Whether this is a Cloud TPU VM (JAX then finds the other workers by itself)."""
    if os.environ.get("TPU_SKIP_MDS_QUERY"):
        return False
    if any(os.environ.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID",
                                       "MEGASCALE_COORDINATOR_ADDRESS")):
        return True
    # A TPU VM has libtpu installed and TPU chips as /dev/accel* (v4, v5e) or /dev/vfio/* (v5p,
    # v6e); checking libtpu keeps GPU hosts with VFIO devices out.
    if importlib.util.find_spec("libtpu") is None:
        return False
    dev = Path("/dev")
    return any(dev.glob("accel*")) or any(dev.glob("vfio/[0-9]*"))


def in_cluster_job() -> bool:
    """A multi-task SLURM or Open MPI job (JAX reads coordinator and ids from its variables)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def _use_gloo_on_cpu() -> None:
    # Cross-process collectives on the CPU backend need an implementation (tests, CPU
    # clusters); the setting only concerns CPU devices, so it is harmless on GPU / TPU.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # pragma: no cover - older/newer JAX
        pass


def initialize(flags: ProcessFlags, auto: bool = True, timeout_s: int = 300) -> bool:
    """Starts JAX's multi-controller runtime when this is a multi-process run.

    Args:
      flags: the coordinator / process-count / process-id flags (all or none).
      auto: with no flags, initialise automatically on a Cloud TPU VM or in a multi-task
        SLURM / Open MPI job (JAX's cluster detection supplies coordinator and ids).
      timeout_s: how long to wait for all processes to join.
    Returns:
      True if `jax.distributed` was initialised.
    """
    validate(flags)
    if flags.given:
        if flags.num_processes == 1:
            return False
        _use_gloo_on_cpu()
        jax.distributed.initialize(
            coordinator_address=flags.coordinator_address,
            num_processes=flags.num_processes,
            process_id=flags.process_id,
            initialization_timeout=timeout_s,
        )
    elif auto and (on_cloud_tpu() or in_cluster_job()):
        jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
        return False
    quiet_other_processes()
    return True


def is_main_process() -> bool:
    """True on process 0, the one that logs, prints and writes non-checkpoint files."""
    return jax.process_index() == 0


def quiet_other_processes() -> None:
    """Only process 0 logs at INFO; the others keep warnings and errors."""
    if not is_main_process():
        logging.set_verbosity(logging.WARNING)


def describe() -> str:
    """One line: process i of N, local and global device counts, backend."""
    return (f"process {jax.process_index()} of {jax.process_count()}: "
            f"{jax.local_device_count()} local / {jax.device_count()} global "
            f"{jax.default_backend()} devices")
