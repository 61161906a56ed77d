"""Weights in and out: the released GPT-2 formats (HF safetensors / msgpack / torch bin, the
OpenAI TF checkpoint) to and from our params (`pretrained`, `formats`), and hub downloads
(`hub`).

    from gpt2jax.weights import load_pretrained, save_pretrained
"""

from gpt2jax.weights.pretrained import (hf_state_dict_to_params, load_pretrained,
                                        params_to_hf_state_dict, save_pretrained)

__all__ = ["hf_state_dict_to_params", "load_pretrained", "params_to_hf_state_dict",
           "save_pretrained"]
