"""experiments/notebooks/inside_the_model.ipynb: committed without outputs, in step with its
generator, and executable end to end (it trains its own tiny model) with finite numbers and
its figures produced."""

from __future__ import annotations

import math
import os
import re
import runpy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "experiments" / "notebooks"
NOTEBOOK = FOLDER / "inside_the_model.ipynb"
DEVICE_FLAG = "--xla_force_host_platform_device_count=8"  # set by conftest.py
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|\b(?:nan|inf)\b", re.I)


def cells_with_outputs(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of code cells that carry outputs or an execution count (not stripped)."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and (cell.get("outputs") or cell.get("execution_count") is not None)]


def printed_numbers(nb: nbformat.NotebookNode) -> list[float]:
    """Every number in the cells' stdout (a `nan` / `inf` word counts as one)."""
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream"
                   and out.name == "stdout")
    return [float(x) for x in NUMBER.findall(text)]


def test_committed_notebook_has_no_outputs_and_matches_its_generator():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert sum(c.cell_type == "code" for c in nb.cells) >= 6
    assert cells_with_outputs(nb) == [], "strip the outputs: python " \
        "experiments/notebooks/make_notebook.py rewrites the notebook from its source"
    generator = runpy.run_path(str(FOLDER / "make_notebook.py"))
    assert NOTEBOOK.read_text(encoding="utf-8") == \
        nbformat.writes(generator["build"]()) + "\n", \
        "the notebook and make_notebook.py differ: edit the script and rerun it"


@pytest.mark.slow
def test_notebook_executes_with_finite_numbers_and_figures(tmp_path, monkeypatch):
    """Runs every cell in a fresh kernel (python3 of this environment) in a temp folder: it
    trains the tiny model (no workdir given), draws its figures and prints finite numbers."""
    monkeypatch.delenv("GPT2JAX_NOTEBOOK_WORKDIR", raising=False)
    # the kernel inherits this environment: run on one CPU device, as a user does, not on
    # conftest's 8 simulated ones (another mesh trains another model than the text describes)
    flags = os.environ.get("XLA_FLAGS", "").replace(DEVICE_FLAG, "").strip()
    monkeypatch.setenv("XLA_FLAGS", flags)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    images = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3, images  # attention patterns, ablation, patching
    png = tmp_path / "attention_patterns.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stdout = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")
    # it trained its own model (no workdir was given), on one device
    assert re.search(r"trained 600 steps in \d+ s on 1 cpu device", stdout)
    for line in ("unigram", "clean loss", "logit difference clean", "hook_mlp_out"):
        assert line in stdout, line
    # the text's two main claims hold in this run: the model beats a bigram table, and
    # layer 0's heads matter more than the last layer's
    losses = re.search(r"bigram ([\d.]+), model ([\d.]+)", stdout)
    assert float(losses[2]) < float(losses[1]), losses[0]
    per_layer = re.search(r"zero: .*per layer \(sum\) L0 ([-+\d.]+), .*L\d+ ([-+\d.]+)\n", stdout)
    assert float(per_layer[1]) > float(per_layer[2]), per_layer[0]
    numbers = printed_numbers(nb)
    assert len(numbers) > 50
    assert all(math.isfinite(x) for x in numbers), [x for x in numbers if not math.isfinite(x)]
    assert cells_with_outputs(nb), "the stripped-output check must see these outputs"
