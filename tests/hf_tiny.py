"""A tiny random HF GPT-2 (every weight random, LayerNorms included) and the same model loaded
through gpt2jax's own converter (`load_pretrained` of HF's `save_pretrained` directory), plus a
left-padded batch. Shared by test_outputs.py, test_hooks.py and test_interp_tools.py."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from gpt2jax import load_pretrained

TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=64)


def hf_model(seed: int = 0, **config) -> transformers.GPT2LMHeadModel:
    """Random HF GPT2LMHeadModel in eager attention (the one that returns attentions); LN
    scales/biases and all biases are randomised too, so hooks that miss them are caught."""
    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(**{**TINY, **config}, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def converted(model, path, **overrides):
    """(cfg, params) of `model` through save_pretrained -> gpt2jax.load_pretrained."""
    model.save_pretrained(path)
    return load_pretrained(path, **overrides)


def left_padded_batch(seed: int = 0, length: int = 12, pads: int = 4):
    """Two rows: row 0 full, row 1 left-padded by `pads`. Returns (ids, mask, positions), each
    [2, length] numpy int, positions as HF generate builds them (cumsum - 1, pads at 1)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY["vocab_size"], (2, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :pads] = 0
    positions = np.where(mask == 1, np.cumsum(mask, -1) - 1, 1).astype(np.int32)
    return ids, mask, positions


def hf_forward(model, ids, mask=None, positions=None, **kwargs):
    """HF forward on numpy inputs, no grad."""
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long),
                     attention_mask=None if mask is None else torch.as_tensor(mask),
                     position_ids=None if positions is None else torch.as_tensor(
                         positions, dtype=torch.long), **kwargs)
