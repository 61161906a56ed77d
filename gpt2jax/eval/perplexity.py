"""Strided sliding-window perplexity, exactly the Hugging Face "perplexity of fixed-length models"
guide's loop, batched and compiled once.

The guide's loop (transformers docs, `perplexity.md`) visits windows `[begin, end)` with
`begin = 0, stride, 2*stride, ...`, `end = min(begin + context_length, n)`, and makes the
targets `[prev_end, end)` of each window count (the earlier ones are context only); it stops
at the first window that reaches the end of the text. Because the model predicts token `t`
from tokens `< t`, the first token of a window can never be scored in that window.

What we return, precisely:
- `nll_sum`: the sum over every scored token `t` of `-log p(x_t | x_[begin_w, t))` where `w`
  is the one window that scores `t`; a token is scored in window `w` when
  `max(prev_end_w, begin_w + 1) <= t < end_w`.
- `token_count`: the number of scored tokens (`n - 1` when `stride < context_length`;
  `n - number_of_windows` when `stride == context_length`, since each window's first token
  has no context in that window and no other window scores it).
- `perplexity = exp(nll_sum / token_count)`: the exact token-weighted perplexity.
- `guide_perplexity`: the number the guide's code prints. It multiplies each window's mean
  loss by `trg_len - 1` ("subtract batch_size due to internal label shift"), which is the
  real number of scored tokens only for the first window and for `stride == context_length`;
  for later windows of a smaller stride the mean really covers `trg_len` tokens, so the
  guide under-weights them slightly. Reported for comparison with the guide's 19.44 / 16.44.
- `bits_per_byte = nll_sum / (ln 2 * byte_count)` when the byte count of the text is given.
- `window_nll_sums` / `window_token_counts`: each window's summed NLL and number of scored
  tokens, in window order (what HF's `outputs.loss * n_scored` and `n_scored` are per window;
  `tests/test_evaluate.py` compares them window by window).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from gpt2jax.parallel.placement import Placement
from gpt2jax.errors import ConfigError, DataError
from gpt2jax.nn import loss as loss_lib
from gpt2jax.nn.model import GPT2, GPT2Config, logical_axes
from gpt2jax.nn.positions import check_length


@dataclasses.dataclass(frozen=True)
class Windows:
    """The guide's windows over a text of `n` tokens, each padded to `context_length`.

    Attributes (W windows, L = context_length):
      begin, end: [W] int, the window is tokens `[begin, end)`.
      score_start: [W] int, the window scores targets `[score_start, end)`.
      guide_count: [W] int, the guide's `num_loss_tokens = trg_len - 1` of each window.
    """

    begin: np.ndarray
    end: np.ndarray
    score_start: np.ndarray
    guide_count: np.ndarray
    context_length: int

    def __len__(self) -> int:
        return len(self.begin)

    @property
    def scored_counts(self) -> np.ndarray:
        """[W] int, the number of targets each window scores (`end - score_start`)."""
        return self.end - self.score_start


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted results of `perplexity` (see the module docstring for definitions)."""

    nll_sum: float
    token_count: int
    perplexity: float
    guide_perplexity: float
    windows: int
    context_length: int
    stride: int
    byte_count: int | None = None
    bits_per_byte: float | None = None
    word_count: int | None = None
    word_perplexity: float | None = None
    window_nll_sums: tuple[float, ...] = dataclasses.field(default=(), repr=False)
    window_token_counts: tuple[int, ...] = dataclasses.field(default=(), repr=False)

    @property
    def nll_per_token(self) -> float:
        return self.nll_sum / self.token_count

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_windows(n_tokens: int, context_length: int, stride: int) -> Windows:
    """The guide's windows for a text of `n_tokens` tokens (see the module docstring)."""
    if context_length < 2:
        raise ConfigError(f"context_length={context_length} must be at least 2.")
    if not 1 <= stride <= context_length:
        raise ConfigError(
            f"stride={stride} must be in [1, context_length={context_length}]: a stride larger "
            "than the context skips tokens. Use stride <= context_length (e.g. half of it)."
        )
    if n_tokens < 2:
        raise DataError(f"Need at least 2 tokens to measure perplexity, got {n_tokens}.")
    begins, ends, starts, guide = [], [], [], []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        begins.append(begin)
        ends.append(end)
        starts.append(max(prev_end, begin + 1))
        guide.append(end - prev_end - 1)
        prev_end = end
        if end == n_tokens:
            break
    as_array = lambda x: np.asarray(x, np.int64)
    return Windows(as_array(begins), as_array(ends), as_array(starts), as_array(guide),
                   context_length)


def window_batch(token_ids: np.ndarray, windows: Windows, rows: np.ndarray):
    """Inputs, targets and weights of the windows `rows`, right-padded to the context length.

    Right padding needs no attention mask: attention is causal, so the padding (token 0)
    after a window's end never influences the positions that are scored.
    Args:
      token_ids: [n] int, the whole text.
      windows: from `plan_windows`.
      rows: [B] int indices into `windows`; -1 = an all-padding row (weights 0).
    Returns:
      inputs [B, L] int32, targets [B, L] int32 (targets[:, j] is the token after
      inputs[:, j]), weights [B, L] float32 (1 where the target is scored).
    """
    length = windows.context_length
    pos = np.arange(length)
    inputs, targets, weights = loss_lib.empty_batch(len(rows), length)
    for i, w in enumerate(rows):
        if w < 0:
            continue
        begin, end = windows.begin[w], windows.end[w]
        n = end - begin
        inputs[i, :n] = token_ids[begin:end]
        targets[i, : n - 1] = token_ids[begin + 1:end]
        target_pos = begin + 1 + pos
        weights[i] = (target_pos >= windows.score_start[w]) & (target_pos < end)
    return inputs, targets, weights


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target]: logits [..., V] float, targets [...] int -> [...] float32."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


# Tokens whose logits exist at once while scoring: [128, V] float32 is 26 MB at V = 50257,
# under glibc's 32 MB mmap threshold, so the buffer is reused instead of page-faulted anew.
EVAL_CHUNK_TOKENS = 128


def scored_offset(windows: Windows, first: bool) -> int:
    """The first input position whose target some window scores: 0 for the first window,
    `L - 1 - min(stride, L - 1)` for every later one (they score only their last `stride`
    targets). The last position, L - 1, never has a target inside its window."""
    later = (windows.score_start - windows.begin - 1)[1:]
    return 0 if first or not len(later) else int(later.min())


# On a CPU a forward pass holds as many windows as keep its largest activation, the MLP's
# [rows, L, 4E] float32, within this many bytes: near the cache, not far beyond it. Scoring 8
# windows in turns in one process (bench/README.md): 124M at L = 1024 (12.6 MB a window) ran
# 343 tokens/s one window per pass and 290 as one [8, 1024] pass; a 2-layer, 128-wide model
# at L = 256 (0.5 MB a window) ran 3,488 with the whole batch and 3,232 one per pass.
CPU_PASS_BYTES = 16 * 2**20


def rows_per_pass(batch_size: int, data_parallel: int, length: int, n_embd: int) -> int:
    """Windows each forward pass holds, a divisor of `batch_size`. On a single CPU device:
    the most that fit `CPU_PASS_BYTES` (at least 1); on an accelerator or a mesh the whole
    batch (the widest matmuls; a mesh shards the batch)."""
    if jax.default_backend() == "cpu" and data_parallel == 1:
        fit = max(1, CPU_PASS_BYTES // (length * 4 * n_embd * 4))
        return max(d for d in range(1, min(fit, batch_size) + 1) if batch_size % d == 0)
    return batch_size


@functools.lru_cache(maxsize=16)
def _window_nll_fn(cfg: GPT2Config, offset: int, chunk_tokens: int, rows: int):
    """A jitted `(params, inputs [B,L], targets [B,L], weights [B,L]) -> nll sums [B]` that
    applies the head only to positions [offset, L - 1), `chunk_tokens` tokens at a time, and
    runs the B windows `rows` at a time (a `lax.map` over B / rows passes; rows divides B)."""
    model = GPT2(cfg)

    def window_nll(params, inputs, targets, weights):
        hidden = model.apply({"params": params}, inputs, return_hidden=True)
        end = inputs.shape[1] - 1
        nll, _ = loss_lib.chunked_token_sums(
            hidden[:, offset:end], loss_lib.head_embedding(params), targets[:, offset:end],
            weights[:, offset:end], chunk_tokens, cfg.compute_dtype, with_correct=False)
        return nll

    def batched(params, *arrays):
        batch = arrays[0].shape[0]
        if rows >= batch:
            return window_nll(params, *arrays)
        passes = [a.reshape(batch // rows, rows, *a.shape[1:]) for a in arrays]
        return jax.lax.map(lambda xs: window_nll(params, *xs), passes).reshape(batch)

    return jax.jit(batched)


def check_tokens(cfg: GPT2Config, token_ids: np.ndarray) -> np.ndarray:
    """Validates token ids [n] against the model vocabulary; returns them as int64."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 1:
        raise DataError(f"token_ids must be 1-D [n_tokens], got shape {token_ids.shape}.")
    token_ids = token_ids.astype(np.int64)
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= cfg.vocab_size):
        raise ConfigError(
            f"Token ids span [{token_ids.min()}, {token_ids.max()}] but the model vocabulary has "
            f"{cfg.vocab_size} entries; the tokenizer does not match the model "
            "(use the GPT-2 tokenizer with model.vocab_size=50257)."
        )
    return token_ids


def window_nll_sums(cfg: GPT2Config, params, token_ids: np.ndarray, windows: Windows,
                    batch_size: int = 8, mesh: Mesh | None = None, axis_rules=(),
                    progress: bool = False,
                    chunk_tokens: int = EVAL_CHUNK_TOKENS) -> np.ndarray:
    """Summed NLL of the scored targets of every window: [W] float64.

    Every batch has the same shape [batch_size, context_length] (the last one is padded
    with empty rows), so the forward pass compiles at most twice: the first batch applies
    the head to every position (the first window scores them all), later ones only to the
    last `stride` positions. The log-sum-exp runs over `chunk_tokens` tokens at a time
    (0 = all at once), so no [batch, length, vocab] logits exist. On one CPU device the
    program runs a large model's windows a few at a time (`rows_per_pass`).
    """
    place = Placement(mesh, axis_rules)
    params = place.put_params(params, logical_axes(cfg))
    dp = place.data_parallel_size
    batch_size = -(-batch_size // dp) * dp  # a multiple of the data-parallel size
    per_pass = rows_per_pass(batch_size, dp, windows.context_length, cfg.n_embd)
    n = len(windows)
    out = np.zeros(n, np.float64)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="perplexity", unit="batch", disable=not progress):
        rows = np.arange(start, start + batch_size)
        rows[rows >= n] = -1
        arrays = window_batch(token_ids, windows, rows)
        offset = scored_offset(windows, first=start == 0)
        # the head sees positions [offset, L - 1) only: no weight may lie outside them
        assert not arrays[2][:, :offset].any() and not arrays[2][:, -1].any(), offset
        fn = _window_nll_fn(cfg, offset, chunk_tokens, per_pass)
        arrays = place.put_batch(arrays, local=False)
        with place.context():
            sums = np.asarray(fn(params, *arrays), np.float64)
        valid = rows >= 0
        out[rows[valid]] = sums[valid]
    return out


def perplexity(cfg: GPT2Config, params, token_ids, context_length: int | None = None,
               stride: int | None = None, batch_size: int = 8, byte_count: int | None = None,
               word_count: int | None = None, mesh: Mesh | None = None, axis_rules=(),
               progress: bool = False) -> PerplexityResult:
    """Strided sliding-window perplexity of one long text (the HF guide's protocol).

    Args:
      cfg, params: the model.
      token_ids: [n_tokens] int, the whole tokenized text.
      context_length: window length L; None = cfg.n_positions (1024 for GPT-2), the model's
        own limit. At most n_positions for learned positions, any length
        for the schemes defined at every position (`positions.UNBOUNDED`: length
        extrapolation; Press et al. 2022 evaluate with stride = L, non-overlapping windows).
      stride: how far each window moves (1..L); None = L (disjoint windows).
      batch_size: windows per forward pass (rounded up to the data-parallel size).
      byte_count: UTF-8 bytes (or characters) of the text, for bits per byte/character.
      word_count: words of the original text, for the word-level perplexity
        `exp(nll_sum / word_count)` (the GPT-2 paper's normalisation).
      mesh, axis_rules: shard windows over the mesh's data axes (None = default device).
      progress: show a tqdm progress bar.
    Returns:
      A `PerplexityResult` (nll_sum, token_count, perplexity, guide_perplexity, ...).
    """
    context_length = cfg.n_positions if context_length is None else context_length
    check_length(cfg, context_length, "context_length",
                 f"use context_length <= {cfg.n_positions}")
    stride = context_length if stride is None else stride
    token_ids = check_tokens(cfg, token_ids)
    windows = plan_windows(len(token_ids), context_length, stride)
    sums = window_nll_sums(cfg, params, token_ids, windows, batch_size, mesh, axis_rules,
                           progress)
    return summarize(sums, windows, stride, byte_count, word_count)


def summarize(sums: np.ndarray, windows: Windows, stride: int, byte_count: int | None = None,
              word_count: int | None = None) -> PerplexityResult:
    """Combines per-window NLL sums [W] into a `PerplexityResult`."""
    counts = windows.scored_counts
    nll_sum, token_count = float(np.sum(sums)), int(np.sum(counts))
    guide_nll = np.sum(sums / np.maximum(counts, 1) * windows.guide_count)
    guide_ppl = float(np.exp(guide_nll / max(int(np.sum(windows.guide_count)), 1)))
    bpb = None if not byte_count else nll_sum / (math.log(2) * byte_count)
    word_ppl = None if not word_count else math.exp(nll_sum / word_count)
    return PerplexityResult(
        nll_sum=nll_sum, token_count=token_count, perplexity=math.exp(nll_sum / token_count),
        guide_perplexity=guide_ppl, windows=len(windows), context_length=windows.context_length,
        stride=stride, byte_count=byte_count, bits_per_byte=bpb, word_count=word_count,
        word_perplexity=word_ppl, window_nll_sums=tuple(float(x) for x in sums),
        window_token_counts=tuple(int(c) for c in counts),
    )
