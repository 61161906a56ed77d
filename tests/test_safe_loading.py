"""Safe loading: untrusted pickles never run code, the library never deserialises data
unsafely, and saved models are plain, well-formed safetensors files.

(Split out of tests/test_bad_inputs.py, whose catalogue runner stays there.)
"""

from __future__ import annotations

import json
import struct

import pytest

from test_bad_inputs import REPO, _malicious_pickle, save_tiny, tiny_model_config


def test_pickle_never_runs_without_flag_and_weights_only_with_it(tmp_path):
    """Without `allow_pickle` the file is refused unread; with it, torch's weights_only
    unpickler still refuses to call arbitrary functions. Either way no code runs."""
    from gpt2jax.errors import WeightsError
    from gpt2jax.weights import load_pretrained

    victim = tmp_path / "pwned"
    _malicious_pickle(tmp_path / "pytorch_model.bin", victim)
    with pytest.raises(WeightsError, match="allow_pickle"):
        load_pretrained(tmp_path)
    assert not victim.exists()
    with pytest.raises(WeightsError, match="could not be read"):
        load_pretrained(tmp_path, allow_pickle=True)
    assert not victim.exists()


def _unsafe_calls(source: str) -> list[str]:
    """Calls that can run code from data: pickle/dill/cloudpickle/marshal loads, eval/exec,
    yaml.load, np.load(allow_pickle=True), torch.load without weights_only=True."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve") \
                and name.rsplit(".", 1)[-1] in ("load", "loads", "Unpickler", "open"):
            found.append(name)
        elif name in ("eval", "exec", "yaml.load", "yaml.unsafe_load"):
            found.append(name)
        elif name.endswith("np.load") and kwargs.get("allow_pickle") not in (None, "False"):
            found.append(f"{name}(allow_pickle=...)")
        elif name == "torch.load" and kwargs.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
    return found


def test_no_unsafe_deserialisation_in_the_library():
    """No gpt2jax module unpickles or evals data; torch.load only with weights_only=True (and
    weights.py reaches it only behind allow_pickle, see the test above)."""
    assert _unsafe_calls("import pickle\npickle.loads(b)\ntorch.load(f)\nnp.load(f, "
                         "allow_pickle=True)\neval(s)") == [
        "pickle.loads", "torch.load without weights_only=True", "np.load(allow_pickle=...)",
        "eval"]
    offenders = {str(p.relative_to(REPO)): _unsafe_calls(p.read_text())
                 for p in sorted((REPO / "gpt2jax").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_safe_roundtrip_keeps_the_safetensors_promises(tmp_path):
    """A saved model is a plain safetensors file: 8-byte little-endian header size, a JSON
    header within the 100 MB bound, contiguous data offsets covering the whole buffer."""
    import numpy as np

    from gpt2jax.weights import load_pretrained, params_to_hf_state_dict

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
    assert cfg == tiny_model_config()
    import jax

    from gpt2jax.model import init_params

    want = params_to_hf_state_dict(init_params(cfg, jax.random.PRNGKey(0)), cfg)
    got = params_to_hf_state_dict(params, cfg)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(want[k]), np.asarray(got[k]))
