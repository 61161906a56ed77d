"""The documentation site builds with warnings as errors: every page in the nav, every link
and anchor resolves, every docstring of the API reference parses (mkdocs.yml: strict)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                           str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = {p.parent.name for p in (tmp_path / "site").rglob("index.html")}
    for page in ("training", "data", "evaluation", "generation", "reliability", "api"):
        assert page in pages, sorted(pages)
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_pretrained" in api and "generate" in api  # docstrings were rendered
