"""gpt2jax.weights against Hugging Face transformers (PyTorch, CPU, fp32) on identical weights.

Parity (logits, labels= loss, left padding) for a tiny config and the full 124M shape, round
trips through our save_pretrained, HF's Flax msgpack layout, the other formats, and every
bad-input error.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import serialization
from safetensors.numpy import load_file, save_file

from gpt2jax import GPT2, GPT2Config, init_params, load_pretrained, param_count, save_pretrained
from gpt2jax.weights import pretrained as weights
from gpt2jax.errors import ConfigError, WeightsError

TINY = dict(n_layer=2, n_head=4, n_embd=64)
PAD = 50256


def _init(cfg: GPT2Config, seed: int):
    """Random params, jitted (eager flax init compiles op by op: slow on CPU)."""
    return jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))


def _apply(cfg: GPT2Config, params, ids) -> np.ndarray:
    return np.asarray(jax.jit(lambda p, x: GPT2(cfg).apply({"params": p}, x))(params, ids))


def _hf_model(seed: int, **config) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


@pytest.fixture(scope="module")
def text_ids(tokenizer, data_dir) -> np.ndarray:
    """The first 2,048 GPT-2 tokens of Tiny Shakespeare, [2048]."""
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:12000]
    ids = np.asarray(tokenizer.encode_ordinary(text)[:2048], np.int32)
    assert ids.shape == (2048,)
    return ids


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random-init tiny HF GPT2LMHeadModel and the directory its save_pretrained wrote."""
    model = _hf_model(0, **TINY)
    path = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(path)
    return model, path


def _left_padded(ids: np.ndarray, lengths: list[int], width: int):
    """Rows of real text left-padded with EOS: (ids, mask, HF position ids), each [B, width]."""
    batch = np.full((len(lengths), width), PAD, np.int32)
    mask = np.zeros_like(batch)
    for row, n in enumerate(lengths):
        start = row * 300
        batch[row, width - n:] = ids[start:start + n]
        mask[row, width - n:] = 1
    # What HF generate feeds GPT-2: cumsum - 1, pad positions set to 1.
    positions = np.where(mask == 1, np.cumsum(mask, -1) - 1, 1).astype(np.int32)
    return batch, mask, positions


def _target_mask(mask: np.ndarray) -> np.ndarray:
    """[B, T] True where token t is a target predicted from a real token t-1."""
    valid = np.zeros(mask.shape, bool)
    valid[:, 1:] = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    return valid


def _our_loss(logits: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> float:
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), ids[:, 1:, None], -1)[..., 0]
    w = valid[:, 1:]
    return float((nll * w).sum() / w.sum())


def _hf_forward(model, ids, mask=None, positions=None):
    labels = torch.tensor(ids, dtype=torch.long)
    if mask is not None:
        labels[~torch.tensor(_target_mask(mask))] = -100
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=None if mask is None else torch.tensor(mask),
            position_ids=None if positions is None else torch.tensor(positions, dtype=torch.long),
            labels=labels,
        )
    return out.logits.numpy(), float(out.loss)


def _references(hf_model, text_ids) -> dict:
    """HF's (logits, loss) on the two batches `_check_parity` compares: "plain" (4 x 256 of
    text) and "padded" (the same text left-padded to rows of 256, 190, 97 and 40 tokens)."""
    ids = text_ids[:1024].reshape(4, 256)
    padded = _left_padded(text_ids, [256, 190, 97, 40], 256)
    return {"plain": (ids, _hf_forward(hf_model, ids)),
            "padded": (padded, _hf_forward(hf_model, *padded))}


def _check_parity(model_dir, references: dict, unpadded_default_path: bool,
                  scan_layers: bool = False) -> GPT2Config:
    """Logits <= 1e-4 and loss within 1e-5 relative, plain and left-padded 4 x 256 batches,
    against HF's `references` (`_references`) of the model saved in `model_dir`."""
    cfg, params = load_pretrained(model_dir, scan_layers=scan_layers)
    assert cfg.scan_layers == scan_layers and ("h" in params) == scan_layers
    model = GPT2(cfg)
    fwd = jax.jit(lambda p, x, m, pos: model.apply({"params": p}, x, attention_mask=m,
                                                   position_ids=pos))
    ids, (ref_logits, ref_loss) = references["plain"]
    if unpadded_default_path:
        ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids))
    else:
        ones = np.ones_like(ids)
        ours = np.asarray(fwd(params, ids, ones, np.cumsum(ones, -1) - 1))
    loss = _our_loss(ours, ids, np.ones(ids.shape, bool))
    print(f"{cfg.n_layer} layers: max |dlogit| {np.abs(ours - ref_logits).max():.2e}, "
          f"loss {loss:.6f} vs HF {ref_loss:.6f}")
    assert np.abs(ours - ref_logits).max() <= 1e-4
    assert abs(loss - ref_loss) <= 1e-5 * ref_loss

    (ids, mask, positions), (ref_logits, ref_loss) = references["padded"]
    ours = np.asarray(fwd(params, ids, mask, positions))
    real = mask == 1
    loss = _our_loss(ours, ids, _target_mask(mask))
    print(f"left-padded: max |dlogit| {np.abs(ours[real] - ref_logits[real]).max():.2e}, "
          f"loss {loss:.6f} vs HF {ref_loss:.6f}")
    assert np.abs(ours[real] - ref_logits[real]).max() <= 1e-4
    assert abs(loss - ref_loss) <= 1e-5 * ref_loss
    return cfg


@pytest.mark.parametrize("scan_layers", [False, True])
def test_parity_with_hf_tiny(tiny_hf, text_ids, scan_layers):
    model, path = tiny_hf
    cfg = _check_parity(path, _references(model, text_ids), unpadded_default_path=True,
                        scan_layers=scan_layers)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (2, 4, 64, 50257)


@pytest.fixture(scope="module")
def hf_124m(tmp_path_factory, text_ids):
    """A random HF model of the 124M GPT-2 shape (HF defaults) saved once for both layouts:
    (its directory, its parameter count, HF's `_references`). HF's init, save and forwards
    are shared; each layout loads and runs its own."""
    model = _hf_model(1)
    path = tmp_path_factory.mktemp("hf_124m")
    model.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters()), _references(model, text_ids)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_parity_with_hf_124m(hf_124m, scan_layers):
    path, hf_params, references = hf_124m
    cfg = _check_parity(path, references, unpadded_default_path=False, scan_layers=scan_layers)
    assert cfg == GPT2Config(scan_layers=scan_layers)
    assert param_count(cfg) == hf_params == 124_439_808


@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_our_save_loads_in_transformers(tmp_path, text_ids, scan_layers):
    cfg = GPT2Config(**TINY, n_positions=256, scan_layers=scan_layers)
    params = _init(cfg, 3)
    save_pretrained(cfg, params, tmp_path / "ours")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    ids = text_ids[:512].reshape(2, 256)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = _apply(cfg, params, ids)
    assert np.abs(ours - ref).max() <= 1e-5
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new" and config["n_ctx"] == 256
    cfg2, params2 = load_pretrained(tmp_path / "ours", scan_layers=scan_layers)
    assert cfg2 == cfg  # the export of either form loads back into it, equal
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]  # no temp dirs left


def _hf_flax_tree(state_dict) -> dict:
    """The params of transformers' FlaxGPT2LMHeadModel for a PyTorch state dict.

    Mirrors HF's PyTorch->Flax conversion: 2-D `weight` -> `kernel` transposed (HF's FlaxConv1D
    kernel is [out, in] and is transposed back in its __call__), LayerNorm weight -> `scale`,
    Embedding weight -> `embedding`, blocks under `h/<i>`.
    """
    tree: dict = {}
    for key, tensor in state_dict.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        path, value = key.split("."), tensor.numpy()
        if path[-1] == "weight":
            if path[-2].startswith("ln"):
                path[-1] = "scale"
            elif path[-2] in ("wte", "wpe"):
                path[-1] = "embedding"
            else:
                path[-1], value = "kernel", value.T
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def test_hf_flax_msgpack_layout_loads(tiny_hf, tmp_path, text_ids):
    model, _ = tiny_hf
    tree = _hf_flax_tree(model.state_dict())
    assert tree["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"].shape == (256, 64)  # [out, in]
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    model.config.to_json_file(tmp_path / "config.json")
    cfg, params = load_pretrained(tmp_path)
    ids = text_ids[:256].reshape(2, 128)
    ref, _ = _hf_forward(model, ids)
    ours = _apply(cfg, params, ids)
    assert np.abs(ours - ref).max() <= 1e-4


def test_pytorch_bin_needs_explicit_allow_pickle(tiny_hf, tmp_path):
    model, path = tiny_hf
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(WeightsError, match="allow_pickle=True"):
        load_pretrained(tmp_path)
    _, params = load_pretrained(tmp_path, allow_pickle=True)
    _, expected = load_pretrained(path)
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_bare_safetensors_unprefixed_keys_buffers_and_tied_head(tiny_hf, tmp_path):
    model, path = tiny_hf
    state = {k.removeprefix("transformer."): v for k, v in
             load_file(str(path / "model.safetensors")).items()}
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))  # old HF mask buffer
    state["lm_head.weight"] = state["wte.weight"].copy()  # tied head, stored twice
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))
    with pytest.raises(WeightsError, match="n_head"):
        load_pretrained(bare)
    cfg, params = load_pretrained(bare, n_head=4)
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_positions) == (2, 64, 50257, 1024)
    _, expected = load_pretrained(path)
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    save_file(state, str(bare))
    with pytest.raises(WeightsError, match="untied"):
        load_pretrained(bare, n_head=4)


def _write_variant(src, dst, edit, config_edit=None):
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    dst.mkdir()
    save_file(state, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    (config_edit or (lambda c: None))(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_config_json_that_disagrees_with_the_tensors_is_named(tiny_hf, tmp_path):
    """config.json with 5 heads for 64 dims, or 1 layer for 2 layers' tensors. (A missing
    tensor, a wrong shape, a vocabulary mismatch, truncated or corrupt safetensors: the
    catalogue's tensor-*, weights-wrong-vocab and safetensors-* cases.)"""
    _, src = tiny_hf
    heads = _write_variant(src, tmp_path / "heads", lambda s: None, lambda c: c.update(n_head=5))
    with pytest.raises(ConfigError, match="not divisible by n_head=5"):
        load_pretrained(heads)
    layers = _write_variant(src, tmp_path / "layers", lambda s: None, lambda c: c.update(n_layer=1))
    with pytest.raises(WeightsError, match="unexpected tensor.*h\\.1\\."):
        load_pretrained(layers)


def test_openai_checkpoint_without_tensorflow_explains_the_fix(tmp_path, monkeypatch):
    # (a folder without weights, a path that does not exist: the catalogue's weights-* cases)
    (tmp_path / "hparams.json").write_text('{"n_vocab": 50257}')
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a machine without TF
    with pytest.raises(WeightsError, match="needs tensorflow"):
        load_pretrained(tmp_path)


def test_hub_name_offline_says_how_to_pass_a_local_path(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="could not be downloaded.*pass a local path"):
        load_pretrained("gpt2")


def test_save_pretrained_refuses_to_clobber(tmp_path):
    cfg = GPT2Config(**TINY, vocab_size=128, n_positions=32)
    params = _init(cfg, 0)
    target = tmp_path / "model"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(WeightsError, match="overwrite=True"):
        save_pretrained(cfg, params, target)
    assert (target / "notes.txt").read_text() == "keep me"
    save_pretrained(cfg, params, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(WeightsError, match="cannot represent"):
        save_pretrained(cfg.replace(n_kv_heads=2), params, tmp_path / "gqa")
    assert not (tmp_path / "gqa").exists()


def test_export_of_a_small_vocabulary_names_no_token_it_lacks(tmp_path, caplog):
    # A char model (vocab 65) was exported with bos/eos 50256; transformers warned "eos_token_id
    # must be `None` or an integer within the vocabulary (between 0 and 64), got 50256".
    cfg = GPT2Config(**TINY, vocab_size=65, n_positions=32)
    save_pretrained(cfg, _init(cfg, 0), tmp_path / "char")
    saved = json.loads((tmp_path / "char" / "config.json").read_text())
    assert saved["vocab_size"] == 65 and saved["eos_token_id"] is saved["bos_token_id"] is None
    transformers.logging.enable_propagation()
    with caplog.at_level("WARNING"):
        model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "char"))
    assert not [r for r in caplog.records if "token_id" in r.getMessage()]
    assert model.config.eos_token_id is None
    full = GPT2Config(**TINY, n_positions=32)  # the GPT-2 vocabulary keeps <|endoftext|>
    save_pretrained(full, _init(full, 0), tmp_path / "bpe")
    assert json.loads((tmp_path / "bpe" / "config.json").read_text())["eos_token_id"] == 50256


def test_state_dict_helpers_are_inverse(tiny_hf):
    model, _ = tiny_hf
    cfg = weights.config_from_hf(model.config.to_dict())
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params = weights.hf_state_dict_to_params(state, cfg)
    back = weights.params_to_hf_state_dict(params, cfg)
    assert set(back) == {k for k in state if k != "lm_head.weight"}
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key])
    with pytest.raises(ConfigError, match="Unknown GPT2Config override"):
        weights.config_from_hf(model.config.to_dict(), n_heads=4)
