"""Runs the reliability tests and writes what was tried and what held as markdown tables.

    GPT2JAX_DATA_DIR=../shared/data python experiments/reliability/run_catalogue.py

Runs tests/test_bad_inputs_api.py + _files.py + _cli.py, test_safe_loading.py,
test_crash_safety.py, test_preemption.py, test_nan_guard.py, test_disk_full.py,
test_workdir_races.py and test_quiet_errors.py under pytest (JUnit XML, with the messages each test
records), then rewrites the part of experiments/reliability/README.md between the RESULTS
markers: one row per bad input (surface, input, outcome, the message the user saw), one row
per SIGKILL of the crash test (moment, steps run, where the next run resumed), and the
preemption / NaN-guard checks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TEST_FILES = ["tests/test_bad_inputs_api.py", "tests/test_bad_inputs_files.py",
              "tests/test_bad_inputs_cli.py", "tests/test_safe_loading.py",
              "tests/test_crash_safety.py", "tests/test_preemption.py", "tests/test_nan_guard.py",
              "tests/test_disk_full.py", "tests/test_workdir_races.py",
              "tests/test_quiet_errors.py"]
BEGIN, END = "<!-- RESULTS BEGIN -->", "<!-- RESULTS END -->"


def run_tests(xml_path: Path) -> tuple[int, float]:
    """Runs the reliability tests; returns (pytest exit status, seconds)."""
    start = datetime.datetime.now()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={xml_path}", *TEST_FILES], cwd=REPO)
    return proc.returncode, (datetime.datetime.now() - start).total_seconds()


def read_cases(xml_path: Path) -> list[dict]:
    """[{name, file, seconds, outcome, properties}] from pytest's JUnit XML."""
    out = []
    for tc in ET.parse(xml_path).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        failed = tc.find("failure") is not None or tc.find("error") is not None
        skipped = tc.find("skipped") is not None
        out.append({"name": tc.get("name"), "file": tc.get("classname", "").split(".")[-1],
                    "seconds": float(tc.get("time", 0)), "properties": props,
                    "outcome": "FAILED" if failed else "skipped" if skipped else "held"})
    return out


_TMP = re.compile(r"/tmp/pytest-of-[^/\s']+/pytest-\d+/[^/\s']+/(work/)?")


def _cell(text: str, limit: int = 160) -> str:
    text = _TMP.sub("…/", " ".join(str(text).split())).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def catalogue_table(cases: list[dict]) -> list[str]:
    rows = ["| # | case | surface | bad input | outcome | what the user is told |",
            "|---|---|---|---|---|---|"]
    n = 0
    for c in cases:
        if not c["name"].startswith(("test_api_case[", "test_cli_case[")):
            continue
        n += 1
        surface = "API" if c["name"].startswith("test_api") else "CLI"
        case_id = c["name"].split("[", 1)[1].rstrip("]")
        p = c["properties"]
        outcome = c["outcome"]
        if p.get("workdir_change"):
            outcome += f" (workdir changed: {_cell(p['workdir_change'], 80)})"
        rows.append(f"| {n} | `{case_id}` | {surface} | {_cell(p.get('what', ''), 70)} | "
                    f"{outcome} | {_cell(p.get('message', ''))} |")
    return rows


def kills_table(cases: list[dict]) -> list[str]:
    crash = next((c for c in cases if c["name"].startswith("test_sigkill")), None)
    if crash is None or "kills" not in crash["properties"]:
        return ["(the SIGKILL test recorded no kills: see its failure)"]
    kills = json.loads(crash["properties"]["kills"])
    rows = [f"SIGKILL test: {crash['outcome']} ({len(kills)} kills, {crash['seconds']:.0f} s).",
            "", "| kill | moment | steps run before the kill | newest finalized checkpoint "
            "(= where the next run resumed) | child CPU s |", "|---|---|---|---|---|"]
    for i, k in enumerate(kills, 1):
        rows.append(f"| {i} | {k['moment']} | {k['steps_run']} | {k['resume_from']} | "
                    f"{k.get('cpu_s', '')} |")
    return rows


def other_table(cases: list[dict]) -> list[str]:
    rows = ["| test | outcome | seconds | note |", "|---|---|---|---|"]
    for c in cases:
        if c["name"].startswith(("test_api_case[", "test_cli_case[")):
            continue
        note = c["properties"].get("message", "")
        rows.append(f"| `{c['file']}::{c['name']}` | {c['outcome']} | {c['seconds']:.1f} | "
                    f"{_cell(note, 120)} |")
    return rows


def render(cases: list[dict], status: int, seconds: float) -> str:
    held = sum(c["outcome"] == "held" for c in cases)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "", f"Generated {stamp} by `python experiments/reliability/run_catalogue.py`"
             f": {held}/{len(cases)} tests held, pytest exit status {status}, {seconds:.0f} s.",
             "", "### Bad inputs", "", *catalogue_table(cases), "", "### SIGKILL at random "
             "moments", "", *kills_table(cases), "", "### Other reliability tests", "",
             *other_table(cases), "", END]
    return "\n".join(lines)


def write_readme(block: str, readme: Path) -> None:
    text = readme.read_text() if readme.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    readme.write_text(head + block + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--xml", type=Path, default=None, help="reuse this JUnit XML")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        xml = args.xml or Path(tmp) / "reliability.xml"
        status, seconds = (0, 0.0) if args.xml else run_tests(xml)
        block = render(read_cases(xml), status, seconds)
    write_readme(block, args.readme)
    print(f"wrote {args.readme}")
    return status


if __name__ == "__main__":
    sys.exit(main())
