"""HF's per-step `scores` (`output_scores=True`) of greedy, sampled and beam generation.

HF's score for step t is the next-token logits after its logits processors (and, when
sampling, its warpers: temperature, top-k, top-p), given the sequence generated so far. That
is a function of the finished sequences, so it is recomputed after the decode loop: one full
forward over prompt + generated tokens (HF's attention mask: the prompt's, then ones; its
position ids: cumsum - 1), then the same processors `sampling.py` applies inside the loop, at
every step at once. The decode loop is untouched and costs nothing extra when scores are not
asked for.

    out = gpt2jax.generate(cfg, params, ids, max_new_tokens=8, return_dict=True,
                           output_scores=True)
    out.scores  # tuple of 8 arrays [batch * num_return_sequences, vocab], as HF

Beam search is different: HF's step scores belong to the running beams of that step, which the
returned hypotheses do not determine, so the compiled beam loop records them as it goes (only in
the program compiled for `output_scores`, see `beam_search.ScoreRecord`); `beam_outputs` turns
that record into HF's `scores` (one [batch * num_beams, V] array per loop iteration: as many
as HF's, which stops when every beam is done) and `beam_indices`.

Shapes: R rows, P prompt columns, N new tokens, L = P + N, V vocabulary, B batch, K beams.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.errors import ConfigError
from gpt2jax.generation import sampling
from gpt2jax.generation.beam_search import ScoreRecord
from gpt2jax.generation.plan import valid_positions
from gpt2jax.generation.sampling import ScoreParams, ScoreSettings
from gpt2jax.nn.model import GPT2, GPT2Config


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _scores(cfg: GPT2Config, settings: ScoreSettings, prompt_len: int, params,
            sequences: jax.Array, prompt_mask: jax.Array, score: ScoreParams) -> jax.Array:
    """[R, L] sequences, [R, P] prompt mask -> [R, N, V] processed (and warped) scores."""
    rows, total = sequences.shape
    mask = jnp.concatenate([prompt_mask, jnp.ones((rows, total - prompt_len),
                                                  prompt_mask.dtype)], axis=1)
    positions = jnp.where(mask == 1, jnp.cumsum(mask, -1) - 1, 1).astype(jnp.int32)
    logits = GPT2(cfg).apply({"params": params}, sequences, attention_mask=mask,
                             position_ids=positions)

    def step(t):
        cur_len = prompt_len + t
        last = jax.lax.dynamic_index_in_dim(logits, cur_len - 1, axis=1, keepdims=False)
        valid = valid_positions(mask, total, cur_len)
        out = sampling.apply_processors(last, sequences, valid, cur_len, jnp.int32(0), t,
                                        settings, score)
        return sampling.apply_warpers(out, settings, score) if settings.do_sample else out

    return jax.vmap(step, out_axes=1)(jnp.arange(total - prompt_len, dtype=jnp.int32))


def step_scores(cfg: GPT2Config, params, sequences: np.ndarray, prompt_mask: np.ndarray,
                settings: ScoreSettings, score: ScoreParams) -> tuple[np.ndarray, ...]:
    """HF's `scores`: one [R, V] float32 array per generated column.

    Args:
      sequences: [R, L] what generate returns (prompt columns first).
      prompt_mask: [R, P] the prompt's attention mask (1 = real token).
      settings, score: the processors' static and traced settings of that generate call.
    """
    prompt_len = prompt_mask.shape[1]
    if sequences.shape[1] == prompt_len:
        return ()
    out = np.asarray(_scores(cfg, settings, prompt_len, params, jnp.asarray(sequences),
                             jnp.asarray(prompt_mask), score))
    return tuple(out[:, t] for t in range(out.shape[1]))


def beam_outputs(record: ScoreRecord, steps, rows: int, keep: int,
                 generated: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """HF's beam-search `scores` and `beam_indices` from the loop's record.

    Args:
      record: the `ScoreRecord` of a bucketed batch; steps: i32 loop iterations.
      rows: real prompts B; keep: num_return_sequences; generated: returned new columns.
    Returns:
      (`steps` arrays [B * K, V] float32, beam_indices [B * keep, generated] int32: the row of
      scores[t] each returned token t came from, -1 after the hypothesis ended).
    """
    steps, beams = int(steps), record.running.shape[1]
    scores = np.asarray(record.scores[:steps, :rows * beams])
    indices = np.asarray(record.finished)[:rows, :keep, :generated]
    return tuple(scores), indices.reshape(rows * keep, generated)


def check_output_scores(output_scores: bool, return_dict: bool) -> None:
    """Rejects what `output_scores` cannot give (before any compile)."""
    if output_scores and not return_dict:
        raise ConfigError("output_scores=True returns the scores in a GenerateOutput; pass "
                          "return_dict=True too (HF: return_dict_in_generate=True).")
