"""The machine a benchmark ran on, in one line: CPU model, vector extensions, cores, load.

Every bench script prints `describe()` first, so a figure always names its CPU kind: the same
code reads weights at different speeds on an AVX2 EPYC, an AVX-512 EPYC (Zen 4) and an AVX-512
Xeon, and `bench/README.md` keeps one table per kind. Linux reads /proc/cpuinfo; elsewhere the
model comes from `platform.processor()` and the extensions are "unknown".

    from bench import hardware
    print(hardware.describe())   # cpu: AMD EPYC (family 25 model 17), 2 cores, vector: ...
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that decide which kernels oneDNN / MKL / XLA:CPU pick, widest last.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16", "amx_int8")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """{"model": str, "family": str, "model_id": str, "vector": [flags present, in
    VECTOR_FLAGS order], "cores": int} from /proc/cpuinfo's first processor (or `cpuinfo`,
    its text)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: the cores of a VM are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "family": fields.get("cpu family", "?"),
        "model_id": fields.get("model", "?"),
        "vector": [f for f in VECTOR_FLAGS if f in flags] if flags else ["unknown"],
        "cores": os.cpu_count() or 1,
    }


def describe(info: dict | None = None) -> str:
    """One line naming the CPU kind and the load: the header of every bench output."""
    info = cpu_info() if info is None else info
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"cpu: {info['model']} (family {info['family']} model {info['model_id']}), "
            f"{info['cores']} cores, vector: {' '.join(info['vector'])}; load average {load}")
