"""Every third-party module the code imports is declared in pyproject.toml, where an install
gets it: deptry (a maintained checker) reads the imports from the source, so a module that
only this machine happens to have is still caught. Module-level library imports must be core
requirements: `.ci/import_all.py` imports every module after `pip install -e .` alone.
Plus: what runs here satisfies the declared ranges, and the README installs the pinned CPU
torch.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _deptry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deptry", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300)


def test_imports_are_declared_deptry():
    # the library: every import declared (core or an extra), no test-only package, no unused
    # requirement (pyproject's [tool.deptry] names the two deliberate exceptions)
    library = _deptry("gpt2jax")
    assert library.returncode == 0, library.stdout + library.stderr
    # tests, benchmarks, studies and configs may use the test extra; deptry skips a folder
    # called tests unless told otherwise, hence --exclude
    rest = _deptry("tests", "bench", "experiments", "configs", "--ignore", "DEP002,DEP004",
                   "--exclude", r"\.ci-venv")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert re.search(r"Scanning (\d+) files", rest.stderr + rest.stdout).group(1) != "0"


def test_installed_versions_satisfy_pyproject():
    """What runs here is inside the declared ranges (a stale hand-made environment is not)."""
    wrong = []
    for line in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]:
        req = Requirement(line)
        version = importlib.metadata.version(req.name)
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req.name} {version} (pyproject.toml: {req.specifier})")
    assert not wrong, "installed versions outside pyproject.toml's ranges: " + ", ".join(wrong)


def test_readme_test_command_installs_the_cpu_torch_that_pyproject_pins():
    """The README's test line installs torch from PyTorch's CPU index at the test extra's pin:
    with another version, `pip install -e ".[test]"` would replace it with PyPI's CUDA build."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    assert block, "README.md has no ```bash block"
    lines = block.group(1).splitlines()
    assert len(lines) == 2 and lines[0].startswith("pip install -e . && "), lines
    torch = [Requirement(x) for x in PROJECT["optional-dependencies"]["test"]
             if Requirement(x).name == "torch"]
    assert len(torch) == 1 and str(torch[0].specifier).startswith("=="), torch
    cpu = f"pip install torch{torch[0].specifier} --index-url https://download.pytorch.org/whl/cpu"
    assert lines[1].startswith(cpu + ' && pip install -e ".[test]" && '), lines[1]
