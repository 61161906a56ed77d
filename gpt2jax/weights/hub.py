"""Hub names (`gpt2`, `openai-community/gpt2`, ...) -> a folder in huggingface_hub's own cache.

Files are fetched one by one with `hf_hub_download`, as transformers' `from_pretrained` does:
only `config.json` and the safetensors weights (one `model.safetensors`, or the index and
its shards), into the standard cache (`$HF_HUB_CACHE`, default `~/.cache/huggingface/hub`),
which transformers shares. Online, a cached file is revalidated with one HEAD request and
not downloaded again; offline (`HF_HUB_OFFLINE=1`, or no network) the cache answers.

GPT-2's checkpoints moved to `openai-community/` and the hub redirects the old names, but
the cache is keyed by the name a user typed: `models--gpt2` and
`models--openai-community--gpt2` hold the same files. So a name that is not cached is
looked up under its other spelling before anything is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt2jax.errors import WeightsError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# The released checkpoints under their old and current hub names.
_RELEASED = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
             "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
             "distilgpt2": "distilbert/distilgpt2"}
_ALIASES = {**_RELEASED, **{new: old for old, new in _RELEASED.items()}}
_HOW = ("pass a local path instead: a directory with config.json + model.safetensors (e.g. "
        "from `hf download {name}` on a machine with internet; set HF_HUB_OFFLINE=1 to use "
        "only the cache) or a .safetensors file")


def aliases(name: str) -> list[str]:
    """The other hub spellings of `name` (`gpt2` <-> `openai-community/gpt2`), maybe none."""
    return [_ALIASES[name]] if name in _ALIASES else []


def cached_snapshot(name: str) -> Path | None:
    """The cache folder holding config.json + all safetensors weights of `name`, else None."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> Path | None:
        hit = try_to_load_from_cache(name, filename)
        return Path(hit) if isinstance(hit, str) else None  # None or "known missing"

    config = cached(CONFIG)
    if config is None:
        return None
    if cached(WEIGHTS) is not None:
        return config.parent
    index = cached(INDEX)
    if index is None or any(cached(s) is None for s in _shards(index)):
        return None
    return config.parent


def _shards(index: Path) -> list[str]:
    """The shard file names a `model.safetensors.index.json` maps tensors to."""
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{str(index)!r} is not a safetensors index ({e}); delete it from "
                           "the cache and download again.") from None


def _fetch(name: str) -> Path:
    """Downloads (or revalidates) config.json + the safetensors weights; the snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config = Path(hf_hub_download(name, CONFIG))
    try:
        hf_hub_download(name, WEIGHTS)
    except EntryNotFoundError:  # a sharded checkpoint (transformers' max_shard_size)
        for shard in _shards(Path(hf_hub_download(name, INDEX))):
            hf_hub_download(name, shard)
    return config.parent


def download(name: str) -> Path:
    """The local snapshot folder of hub repo `name` (config.json + model.safetensors[*]).

    Args:
      name: a hub repo id, e.g. `gpt2`, `openai-community/gpt2-medium`, `me/my-gpt2`.
    Returns:
      `.../models--{org}--{name}/snapshots/{commit}/`, readable by `load_pretrained`.
    Raises:
      WeightsError: huggingface_hub is missing, or the files are neither cached nor reachable
        (offline, unknown repo, no safetensors weights); one line naming the fix.
    """
    try:
        import huggingface_hub  # noqa: F401  (optional: the `hub` extra)
    except ImportError:
        raise WeightsError(f"{name!r} is not a local path, and downloading it needs "
                           "huggingface_hub (pip install 'gpt2jax[hub]'); or "
                           + _HOW.format(name=name)) from None
    if cached_snapshot(name) is None:
        for other in aliases(name):
            if (hit := cached_snapshot(other)) is not None:
                return hit
    try:
        return _fetch(name)
    except WeightsError:
        raise
    except Exception as e:  # offline, unknown repo, auth, no safetensors: "cannot get it"
        reason = " ".join(str(e).split())[:300]
        raise WeightsError(
            f"{name!r} is not a local path and could not be downloaded from the Hugging Face "
            f"hub ({type(e).__name__}: {reason}); " + _HOW.format(name=name) + "."
        ) from None
