"""Every third-party module the code imports is declared in setup.cfg, where an install gets it.

The imports are read from the source (AST), so a module that only the CI machine happens to
have (installed by hand, or pulled in by another package) is still caught. `.ci/run` installs
into a fresh virtual environment, so there a declared package is also an installed one.
"""

from __future__ import annotations

import ast
import configparser
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
OWN = {"gpt2jax", "configs", "tests", "bench", "experiments", "run", "conftest"}
# Imported inside a function behind an ImportError whose message says what to install, and
# installed for the tests as tensorflow-cpu (the test extra): OpenAI TF checkpoints, TFRecord.
OPTIONAL = {"tensorflow"}


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """setup.cfg's requirements: {"core": names, extra: names, ...}, names normalised."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")

    def names(text: str) -> set[str]:
        return {_norm(Requirement(line).name) for line in text.split("\n") if line.strip()}

    out = {"core": names(cfg["options"]["install_requires"])}
    for extra, text in cfg["options.extras_require"].items():
        out[extra] = names(text)
    return out


def _optional_blocks(tree: ast.AST) -> list[ast.AST]:
    """Function bodies, and `try:` bodies whose handlers catch ImportError: code that imports
    only when an optional feature is used or installed."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.extend(node.body)
        elif isinstance(node, ast.Try) and any(
                name in ast.unparse(h.type or ast.Name("BaseException"))
                for h in node.handlers for name in ("ImportError", "ModuleNotFoundError")):
            out.extend(node.body)
    return out


def third_party_imports(path: Path) -> dict[str, bool]:
    """{top-level module: imported unconditionally at module level?} for the third-party
    imports of `path` (False: inside a function or a `try` that catches ImportError)."""
    found: dict[str, bool] = {}
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nested = {id(n) for block in _optional_blocks(tree) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            top = mod.split(".")[0]
            local = (path.parent / f"{top}.py").exists() or (path.parent / top).is_dir()
            if top in sys.stdlib_module_names or top in OWN or local:
                continue
            found[top] = found.get(top, False) or id(node) not in nested
    return found


def _sources(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in
                  ([REPO / part] if part.endswith(".py") else (REPO / part).rglob("*.py")))


@functools.cache
def _provided_by() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    """The installed distributions that provide top-level `module` (empty: not installed)."""
    return {_norm(d) for d in _provided_by().get(module, [])}


def _undeclared(files: list[Path], allowed, optional=frozenset()) -> list[str]:
    """'file: module (why)' for each import in `files` that `allowed(module, top)` refuses."""
    problems = []
    for path in files:
        for module, top in third_party_imports(path).items():
            if module in optional and not top:
                continue
            dists = _distributions(module)
            if not allowed(dists, top):
                why = f"from {sorted(dists)}" if dists else "not installed here"
                problems.append(f"{path.relative_to(REPO)}: {module} ({why})")
    return problems


def test_the_library_imports_only_declared_packages():
    """gpt2jax/, run.py, configs/: module-level imports are core requirements; optional ones
    (inside a function, or a `try` that catches ImportError) are core or an extra."""
    req = declared()
    core, any_extra = req["core"], set().union(*req.values())
    files = _sources("gpt2jax", "configs", "run.py")
    assert len(files) > 30 and any("import jax" in p.read_text() for p in files)
    problems = _undeclared(files, lambda d, top: bool(d & (core if top else any_extra)),
                           OPTIONAL)
    assert not problems, ("declare these in setup.cfg (module-level imports in install_requires, "
                          "optional ones there or in an extra):\n" + "\n".join(problems))


def test_tests_import_only_what_the_test_extra_installs():
    """tests/ runs after `pip install -e ".[test]"`: core + the test extra, nothing else."""
    req = declared()
    allowed = req["core"] | req["test"]
    files = _sources("tests")
    assert any("import transformers" in p.read_text() for p in files)
    problems = _undeclared(files, lambda d, top: bool(d & allowed))
    assert not problems, "declare these in setup.cfg [options.extras_require] test:\n" + \
        "\n".join(problems)


def test_bench_and_experiments_import_only_declared_packages():
    req = declared()
    allowed = set().union(*req.values())
    problems = _undeclared(_sources("bench", "experiments"), lambda d, top: bool(d & allowed))
    assert not problems, "declare these in setup.cfg:\n" + "\n".join(problems)


def test_installed_versions_satisfy_setup_cfg():
    """What runs here is inside the declared ranges (a stale hand-made environment is not)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    text = cfg["options"]["install_requires"] + cfg["options.extras_require"]["test"]
    wrong = []
    for line in filter(str.strip, text.split("\n")):
        req = Requirement(line)
        version = importlib.metadata.version(req.name)
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req.name} {version} (setup.cfg: {req.specifier})")
    assert not wrong, "installed versions outside setup.cfg's ranges: " + ", ".join(wrong)


def test_readme_test_command_installs_the_cpu_torch_that_setup_cfg_pins():
    """The README's test line installs torch from PyTorch's CPU index at setup.cfg's pin: with
    another version, `pip install -e ".[test]"` would replace it with PyPI's CUDA build."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    assert block, "README.md has no ```bash block"
    lines = block.group(1).splitlines()
    assert len(lines) == 2 and lines[0].startswith("pip install -e . && "), lines
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    torch = [Requirement(x) for x in cfg["options.extras_require"]["test"].split("\n")
             if x.strip() and Requirement(x).name == "torch"]
    assert len(torch) == 1 and str(torch[0].specifier).startswith("=="), torch
    cpu = f"pip install torch{torch[0].specifier} --index-url https://download.pytorch.org/whl/cpu"
    assert lines[1].startswith(cpu + ' && pip install -e ".[test]" && '), lines[1]
