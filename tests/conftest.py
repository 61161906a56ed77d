"""Test setup: 8 simulated CPU devices, float32 matmuls, and the shared data directory.

Tests that need `../shared/data` fail (not skip) when it is missing: set GPT2JAX_DATA_DIR.
"""

import os
from pathlib import Path

# Must happen before jax is imported anywhere.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GPT2JAX_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
os.environ["GPT2JAX_DATA_DIR"] = str(DATA_DIR)

import jax  # noqa: E402
import pytest  # noqa: E402

from zygote import Zygote  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data directory; a missing one is an error, never a skip."""
    if not (DATA_DIR / "MANIFEST.md").is_file():
        raise FileNotFoundError(
            f"Shared data not found at {DATA_DIR}; set GPT2JAX_DATA_DIR to the shared/data folder."
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    from gpt2jax.data.bpe import get_encoding

    return get_encoding(data_dir / "gpt2" / "gpt2.tiktoken")


@pytest.fixture(scope="session")
def shakespeare_20k(data_dir, tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare (58 distinct) as a file: the training
    text of the tiny runs (tokenizing the whole 1 MB for a few steps is waste). Read only."""
    path = tmp_path_factory.mktemp("shakespeare") / "shakespeare_20k.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    return path


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """The session's zygote (tests/zygote.py): a process that forks one child per job before
    anything imports JAX; children inherit this process's environment plus the job's."""
    z = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    yield z
    z.close()
