"""Safe loading: untrusted pickles never run code, no file of the repository deserialises
data unsafely, and saved models are plain, well-formed safetensors files.

The repository is linted by ruff with flake8-bandit's rules for code that runs what it reads
(exec / eval, pickle and marshal loads, yaml.load; pyproject.toml): a test checks that the
configuration flags each of them. What ruff lacks is checked here: `torch.load` only with a
literal `weights_only=True`, `numpy.load` never with `allow_pickle` other than False.
"""

from __future__ import annotations

import ast
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MICRO, REPO, malicious_pickle, save_tiny, tiny_config


def test_pickle_never_runs_without_flag_and_weights_only_with_it(tmp_path):
    """Without `allow_pickle` the file is refused unread; with it, torch's weights_only
    unpickler still refuses to call arbitrary functions. Either way no code runs."""
    from gpt2jax.errors import WeightsError
    from gpt2jax.weights.pretrained import load_pretrained

    victim = tmp_path / "pwned"
    malicious_pickle(tmp_path / "pytorch_model.bin", victim)
    with pytest.raises(WeightsError, match="allow_pickle"):
        load_pretrained(tmp_path)
    assert not victim.exists()
    with pytest.raises(WeightsError, match="could not be read"):
        load_pretrained(tmp_path, allow_pickle=True)
    assert not victim.exists()


# Each must be flagged by the project's ruff configuration (the rule code it must show).
RUFF_FLAGS = {
    "pickle": ("import pickle\npickle.loads(b)\n", "S301"),
    "pickle alias": ("from pickle import loads as l\nl(b)\n", "S301"),
    "dill": ("import dill\ndill.load(f)\n", "S301"),
    "marshal": ("import marshal\nmarshal.loads(b)\n", "S302"),
    "eval": ("eval(s)\n", "S307"),
    "exec": ("exec(s)\n", "S102"),
    "yaml.load": ("import yaml\nyaml.load(s)\n", "S506"),
    "urlopen": ("import urllib.request\nurllib.request.urlopen(url)\n", "S310"),
}


def test_ruff_configuration_flags_code_that_runs_what_it_reads(tmp_path):
    for name, (code, _) in RUFF_FLAGS.items():
        (tmp_path / f"{name.replace(' ', '_').replace('.', '_')}.py").write_text(code)
    (tmp_path / "safe.py").write_text(
        "import json\nimport pickle\nimport yaml\njson.loads(s)\npickle.dumps(x)\n"
        "yaml.safe_load(s)\nmodel.eval()\n")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--config", str(REPO / "pyproject.toml"), "--output-format",
                           "json", str(tmp_path)], capture_output=True, text=True, timeout=120)
    found = {(Path(f["filename"]).stem, f["code"]) for f in json.loads(proc.stdout)}
    expected = {(n.replace(" ", "_").replace(".", "_"), code)
                for n, (_, code) in RUFF_FLAGS.items()}
    assert expected <= found, expected - found
    assert not [f for f in found if f[0] == "safe" and f[1].startswith("S")], found


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from every import in the tree (`import torch as t`: t ->
    torch; `from torch import load`: load -> torch.load)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update({a.asname or a.name.split(".")[0]: a.name if a.asname else
                        a.name.split(".")[0] for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return out


def unsafe_loads(source: str) -> list[str]:
    """`torch.load` without a literal weights_only=True, `numpy.load` with allow_pickle other
    than a literal False (or **kwargs): the deserialisers ruff has no rule for."""
    tree, problems = ast.parse(source), []
    names = _aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func).split(".")
        dotted = ".".join([names.get(func[0], func[0])] + func[1:])
        kw = {k.arg: k.value for k in node.keywords}
        literal = lambda name, want: isinstance(kw.get(name), ast.Constant) and \
            kw[name].value is want
        if dotted == "torch.load" and not literal("weights_only", True):
            problems.append(f"line {node.lineno}: torch.load without weights_only=True")
        if dotted == "numpy.load" and (None in kw or (
                "allow_pickle" in kw and not literal("allow_pickle", False))):
            problems.append(f"line {node.lineno}: numpy.load that may allow pickles")
    return problems


@pytest.mark.parametrize("code,unsafe", [
    ("import torch\ntorch.load(f)", True),
    ("import torch as t\nt.load(f, weights_only=flag)", True),
    ("from torch import load\nload(f, map_location='cpu')", True),
    ("import numpy as np\nnp.load(f, allow_pickle=True)", True),
    ("import numpy\nnumpy.load(f, **kw)", True),
    ("import torch as t\nt.load(f, map_location='cpu', weights_only=True)", False),
    ("import numpy as np\nnp.load(f)\nnp.load(f, allow_pickle=False)", False),
    ("import json\njson.load(f)", False),
])
def test_torch_and_numpy_load_check(code, unsafe):
    assert bool(unsafe_loads(code)) == unsafe, code


def test_no_unsafe_torch_or_numpy_load_in_the_repository():
    """torch.load only with weights_only=True (weights/formats.py reaches it only behind
    allow_pickle, see the first test); numpy.load never with pickles."""
    files = [p for p in REPO.rglob("*.py") if not any(
        part.startswith(".") or part in ("build", "runs") for part in p.relative_to(REPO).parts)]
    assert REPO / "gpt2jax" / "weights" / "formats.py" in files and len(files) > 50
    offenders = {str(p.relative_to(REPO)): found for p in files
                 if (found := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert not offenders, offenders


def test_safe_roundtrip_keeps_the_safetensors_promises(tmp_path):
    """A saved model is a plain safetensors file: 8-byte little-endian header size, a JSON
    header within the 100 MB bound, contiguous data offsets covering the whole buffer."""
    import numpy as np

    from gpt2jax.weights.pretrained import load_pretrained, params_to_hf_state_dict

    model = save_tiny(tmp_path / "model")
    data = (model / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert 0 < n < 100_000_000 and 8 + n <= len(data)
    header = json.loads(data[8:8 + n])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no tmp dir left
    cfg, params = load_pretrained(model)
    assert cfg == tiny_config(**MICRO)
    import jax

    from gpt2jax.nn.model import init_params

    want = params_to_hf_state_dict(init_params(cfg, jax.random.PRNGKey(0)), cfg)
    got = params_to_hf_state_dict(params, cfg)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(want[k]), np.asarray(got[k]))
