"""Every bench output names its CPU kind: model, family/model ids and vector extensions."""

from __future__ import annotations

import ast
from pathlib import Path

from bench import hardware

REPO = Path(__file__).resolve().parents[1]

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_vnni

processor\t: 1
model name\t: something else
"""

EPYC_AVX2 = """processor\t: 0
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7R32
flags\t\t: fpu sse4_2 avx avx2 fma f16c
"""


def test_describe_names_model_ids_and_vector_extensions():
    line = hardware.describe(hardware.cpu_info(XEON))
    assert "Intel(R) Xeon(R) Platinum 8375C" in line
    assert "family 6 model 106" in line
    assert "vector: sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_vnni" \
        in line
    assert "load average" in line
    epyc = hardware.cpu_info(EPYC_AVX2)
    assert epyc["model"] == "AMD EPYC 7R32" and "avx512f" not in epyc["vector"]
    assert epyc["vector"][-1] == "f16c"  # VECTOR_FLAGS order, whatever /proc/cpuinfo's


def test_this_machine_is_described():
    info = hardware.cpu_info()
    assert info["model"] and info["cores"] >= 1 and info["vector"]


def test_every_speed_bench_prints_the_cpu_line():
    """Each bench script that prints a speed calls hardware.describe() (gpu_bench: the host)."""
    missing = []
    for path in sorted((REPO / "bench").glob("*.py")):
        if path.name == "hardware.py":
            continue
        calls = {ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call)}
        if "hardware.describe" not in calls:
            missing.append(path.name)
    assert not missing, f"bench scripts without hardware.describe(): {missing}"
