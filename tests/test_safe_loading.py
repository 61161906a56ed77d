"""Safe loading: untrusted pickles never run code, no file of the repository deserialises
data unsafely (an AST scan that resolves aliases, `tests/unsafe_scan.py`, itself tested on
snippets that must and must not be flagged), and saved models are plain, well-formed
safetensors files.

(Split out of the bad-input catalogue, tests/test_bad_inputs_api.py and _cli.py.)
"""

from __future__ import annotations

import json
import struct

import pytest

from helpers import MICRO, REPO, malicious_pickle, save_tiny, tiny_config
from unsafe_scan import scan, unsafe_calls


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


UNSAFE_SNIPPETS = {
    "plain": "import pickle\npickle.loads(b)",
    "module alias": "import pickle as p\np.loads(b)",
    "from-import": "from pickle import loads\nloads(b)",
    "from-import alias": "from pickle import loads as l\nl(b)",
    "from-import unused": "from pickle import load",
    "dunder import": "__import__('pickle').loads(b)",
    "dunder import kept": "m = __import__('pickle')",
    "importlib": "import importlib\nimportlib.import_module('dill').loads(b)",
    "computed import": "import importlib\nimportlib.import_module(name)",
    "getattr": "import pickle\ngetattr(pickle, 'lo' + 'ads')(b)",
    "module as value": "import pickle\nf(pickle)",
    "loader as value": "import pickle\nf = pickle.loads",
    "unpickler": "import pickle\npickle.Unpickler(f).load()",
    "private loads": "import pickle\npickle._loads(b)",
    "cpickle": "import _pickle\n_pickle.loads(b)",
    "dill": "import dill\ndill.load(f)",
    "cloudpickle": "import cloudpickle as cp\ncp.loads(b)",
    "marshal": "import marshal\nmarshal.loads(b)",
    "shelve": "import shelve\nshelve.open(path)",
    "joblib": "import joblib\njoblib.load(path)",
    "pandas": "import pandas as pd\npd.read_pickle(path)",
    "torch.load bare": "import torch\ntorch.load(f)",
    "torch.load false": "import torch\ntorch.load(f, weights_only=False)",
    "torch.load variable": "import torch\ntorch.load(f, weights_only=flag)",
    "torch.load kwargs": "import torch\ntorch.load(f, **kw)",
    "torch alias": "import torch as t\nt.load(f)",
    "torch from-import": "from torch import load\nload(f, map_location='cpu')",
    "torch.load uncalled": "import torch\nfunctools.partial(torch.load)",
    "numpy allow_pickle": "import numpy as np\nnp.load(f, allow_pickle=True)",
    "numpy kwargs": "import numpy\nnumpy.load(f, **kw)",
    "yaml.load": "import yaml\nyaml.load(s)",
    "yaml unsafe loader": "import yaml\nyaml.load(s, Loader=yaml.UnsafeLoader)",
    "yaml.unsafe_load": "import yaml\nyaml.unsafe_load(s)",
    "eval": "eval(s)",
    "exec": "exec(s)",
    "function-local import": "def f(b):\n    import pickle as q\n    return q.loads(b)",
}
SAFE_SNIPPETS = {
    "pickle dumps": "import pickle\npickle.dumps(x)\npickle.dump(x, f, pickle.HIGHEST_PROTOCOL)",
    "json": "import json\nfrom json import loads\njson.loads(s)\nloads(s)",
    "torch.load weights_only": "import torch as t\nt.load(f, map_location='cpu', "
                               "weights_only=True)",
    "torch from-import weights_only": "from torch import load\nload(f, weights_only=True)",
    "numpy": "import numpy as np\nnp.load(f)\nnp.load(f, allow_pickle=False)",
    "yaml safe": "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
    "methods named eval": "model.eval()\nast.literal_eval(s)\njax.eval_shape(f)",
    "literal imports": "import importlib\nimportlib.import_module('json')\n__import__('os')",
    "f-string submodule": "import importlib\nimportlib.import_module(f'configs.{stem}')",
}
# Reviewed sites the scan cannot prove safe (file, stripped source line) -> why they are.
REVIEWED = {
    ("gpt2jax/cli/__init__.py", "module = importlib.import_module(MODES[mode])"):
        "MODES is a constant dict of gpt2jax.cli module names",
    ("bench/gpu_bench.py", "mod = importlib.import_module(module)"):
        "module iterates the constant DEPS dict of third-party package names",
    ("tests/test_readme.py",
     'exec(compile(_quickstart_code(), "README.md:quickstart", "exec"), {"__name__": "readme"})'):
        "runs the README's own quickstart code block, which the repository ships",
}


@pytest.mark.parametrize("name", sorted(UNSAFE_SNIPPETS))
def test_scan_flags_unsafe_snippet(name):
    assert unsafe_calls(UNSAFE_SNIPPETS[name]), UNSAFE_SNIPPETS[name]


@pytest.mark.parametrize("name", sorted(SAFE_SNIPPETS))
def test_scan_passes_safe_snippet(name):
    assert unsafe_calls(SAFE_SNIPPETS[name]) == [], SAFE_SNIPPETS[name]


def _python_files():
    """Every .py file of the repository outside hidden and generated folders."""
    skip = {"build", "runs", "__pycache__"}
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if not any(p.startswith(".") or p in skip or p.startswith("workdir") for p in parts):
            yield path


def _findings_by_line(path) -> list[tuple[str, str]]:
    """(stripped source line, finding) of every finding in one file."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    return [(lines[n - 1].strip(), finding) for n, finding in scan(source)]


def test_no_unsafe_deserialisation_in_the_repository():
    """No file of the repository (library, configs, CLI, bench, experiments, tests) unpickles
    or evals data outside the reviewed sites; torch.load only with weights_only=True (and
    weights.py reaches it only behind allow_pickle, see the first test)."""
    files = list(_python_files())
    assert REPO / "gpt2jax" / "weights" / "formats.py" in files and len(files) > 50
    offenders, reviewed_seen = {}, set()
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for line, finding in _findings_by_line(path):
            if (rel, line) in REVIEWED:
                reviewed_seen.add((rel, line))
            else:
                offenders.setdefault(rel, []).append(f"{line}  <- {finding}")
    assert not offenders
    assert reviewed_seen == set(REVIEWED), "a reviewed site is gone: drop it from REVIEWED"


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
