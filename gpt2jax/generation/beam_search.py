"""Beam search as one compiled computation, following HF transformers v5 `_beam_search`.

The state mirrors HF's vectorised beam search: `num_beams` running beams per prompt, the
best `2 * num_beams` candidates each step (so that EOS candidates never starve the running
set), a set of `num_beams` finished hypotheses scored by `logprob / length ** length_penalty`,
and HF's early-stopping heuristics for `early_stopping` True / False / "never". The KV cache
rows are reordered with a gather after every step. `length_penalty` and `early_stopping`
are traced values, so changing them does not recompile.

With `plan.output_scores` (a separately compiled program; the plain one is unchanged) the loop
also records HF's `output_scores` outputs in a `ScoreRecord`: each step's processed log-probs
of the running beams (HF's `scores`: log_softmax -> processors (-> warpers when sampling),
before the running beam scores are added) and HF's `beam_indices`.

Shapes: B batch, K beams, C = candidates per step, L buffer length, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gpt2jax.generation import sampling
from gpt2jax.generation.plan import (Plan, Runtime, key_mask, model_step,
                                     prompt_positions, repeat_rows, valid_positions)
from gpt2jax.nn.model import GPT2Config
from gpt2jax.nn.scan import map_cache_rows

_BIG_NEG = -1.0e9  # HF's "very large negative value" for excluded beams


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ScoreRecord:
    """HF's `scores` and `beam_indices` as the loop makes them (N = plan.new_len columns)."""

    scores: jax.Array           # [N, B*K, V] step t: the running beams' processed log-probs
    running: jax.Array          # [B, K, N] running_beam_indices (-1 = not generated)
    finished: jax.Array         # [B, K, N] beam_indices of the finished hypotheses


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BeamState:
    """Loop state of beam search (HF names in comments)."""

    running: jax.Array          # [B, K, L] running_sequences
    running_scores: jax.Array   # [B, K] running_beam_scores (summed log-probs)
    source: jax.Array           # [B, K] beam each running beam extends (cache reorder)
    sequences: jax.Array        # [B, K, L] finished hypotheses
    scores: jax.Array           # [B, K] beam_scores (length-normalised)
    lengths: jax.Array          # [B, K] generated tokens of each finished hypothesis
    finished: jax.Array         # [B, K] is_sent_finished
    improvable: jax.Array       # [B] is_early_stop_heuristic_unsatisfied
    cache: dict
    step: jax.Array             # i32 [], tokens generated so far
    done: jax.Array             # bool [], HF's this_peer_finished
    record: ScoreRecord | None  # plan.output_scores only (None: not in the program)


def num_candidates(num_beams: int, num_eos: int) -> int:
    """HF's `beams_to_keep`: max(2, 1 + number of EOS ids) * num_beams."""
    return max(2, 1 + num_eos) * num_beams


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """HF `_gather_beams`: x [B, N, ...] indexed by index [B, M] along axis 1."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _top_candidates(plan: Plan, rt: Runtime, acc: jax.Array, step: jax.Array):
    """The C best (or sampled, without replacement) continuations of acc [B, K*V]."""
    count = num_candidates(plan.num_beams, plan.score.num_eos)
    if not plan.score.do_sample:
        return jax.lax.top_k(acc, count)
    # Gumbel top-k == multinomial sampling without replacement from softmax(acc).
    gumbel = jax.random.gumbel(jax.random.fold_in(rt.key, step), acc.shape)
    index = jax.lax.top_k(acc + gumbel, count)[1]
    values = jnp.take_along_axis(acc, index, axis=-1)
    order = jnp.argsort(-values, axis=-1, stable=True)
    return jnp.take_along_axis(values, order, -1), jnp.take_along_axis(index, order, -1)


def _log_probs(plan: Plan, rt: Runtime, s: BeamState, logits: jax.Array, mask: jax.Array):
    """log_softmax -> processors (-> warpers when sampling): ([B*K, V] HF's step scores,
    [B, K*V] the same plus each beam's running score)."""
    batch, beams, length = s.running.shape
    cur_len = plan.prompt_len + s.step
    flat = s.running.reshape(batch * beams, length)
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp = sampling.apply_processors(logp, flat, valid_positions(mask, length, cur_len), cur_len,
                                     rt.offset, s.step, plan.score, rt.score)
    if plan.score.do_sample:
        logp = sampling.apply_warpers(logp, plan.score, rt.score)
    acc = logp.reshape(batch, beams, -1) + s.running_scores[:, :, None]
    return logp, acc.reshape(batch, -1)


def _update_finished(plan: Plan, rt: Runtime, s: BeamState, values, candidates, hits):
    """HF `_update_finished_beams`: merge just-finished top-K candidates into the finished set.

    Returns (the new finished-set fields, top [B, K]: their indices into finished + candidates).
    """
    beams = plan.num_beams
    steps = s.step + 1
    just_finished = hits & (jnp.arange(hits.shape[1]) < beams)[None, :]
    scored = values / steps.astype(jnp.float32) ** rt.length_penalty
    full = jnp.all(s.finished, axis=-1, keepdims=True) & (rt.early_stopping == 1)
    scored = scored + full.astype(jnp.float32) * _BIG_NEG
    scored = scored + (~s.improvable)[:, None].astype(jnp.float32) * _BIG_NEG
    scored = scored + (~just_finished).astype(jnp.float32) * _BIG_NEG
    merged_scores = jnp.concatenate([s.scores, scored], axis=1)
    top = jax.lax.top_k(merged_scores, beams)[1]
    new_lengths = jnp.broadcast_to(steps, hits.shape).astype(jnp.int32)
    return dict(
        sequences=_gather(jnp.concatenate([s.sequences, candidates], axis=1), top),
        scores=_gather(merged_scores, top),
        finished=_gather(jnp.concatenate([s.finished, just_finished], axis=1), top),
        lengths=_gather(jnp.concatenate([s.lengths, new_lengths], axis=1), top),
    ), top


def _record_step(rec: ScoreRecord, step: jax.Array, logp: jax.Array, source: jax.Array,
                 keep: jax.Array, top: jax.Array) -> ScoreRecord:
    """Stores step scores logp [B*K, V] and follows HF's beam indices: the C candidates
    extend beams source [B, C]; keep [B, K] / top [B, K] pick the running / finished ones."""
    beams = rec.running.shape[1]
    origin = source + jnp.arange(source.shape[0])[:, None] * beams  # HF: batch-offset beam
    candidates = jax.lax.dynamic_update_slice_in_dim(
        _gather(rec.running, source), origin[:, :, None].astype(jnp.int32), step, axis=2)
    return ScoreRecord(
        scores=jax.lax.dynamic_update_index_in_dim(rec.scores, logp, step, axis=0),
        running=_gather(candidates, keep),
        finished=_gather(jnp.concatenate([rec.finished, candidates], axis=1), top),
    )


def _still_improvable(rt: Runtime, s: BeamState, running_scores, scores, finished):
    """HF `_check_early_stop_heuristic` after the step (cur_len already advanced)."""
    steps = s.step + 1
    never = (rt.early_stopping == 2) & (rt.length_penalty > 0)
    best_length = jnp.where(never, rt.max_new_tokens, steps).astype(jnp.float32)
    best_running = running_scores[:, :1] / best_length ** rt.length_penalty
    worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _BIG_NEG)
    return s.improvable & jnp.any(best_running > worst, axis=-1)


def beam_step(plan: Plan, rt: Runtime, s: BeamState, logits: jax.Array, mask: jax.Array,
              real: jax.Array) -> BeamState:
    """One step of HF beam search from logits [B*K, V] of the running beams."""
    vocab = logits.shape[-1]
    cur_len = plan.prompt_len + s.step
    logp, acc = _log_probs(plan, rt, s, logits, mask)
    values, index = _top_candidates(plan, rt, acc, s.step)
    source, token = index // vocab, (index % vocab).astype(s.running.dtype)
    candidates = jax.lax.dynamic_update_slice_in_dim(
        _gather(s.running, source), token[:, :, None], cur_len, axis=2)
    is_eos = (token[..., None] == rt.score.eos_ids).any(-1) if plan.score.num_eos else False
    hits = is_eos | (s.step + 1 >= rt.max_new_tokens)
    hits = jnp.broadcast_to(hits, token.shape)
    # running beams for the next step: the best K candidates that did not stop
    running_values = values + hits.astype(jnp.float32) * _BIG_NEG
    keep = jax.lax.top_k(running_values, plan.num_beams)[1]
    running_scores = _gather(running_values, keep)
    done_set, top = _update_finished(plan, rt, s, values, candidates, hits)
    improvable = _still_improvable(rt, s, running_scores, done_set["scores"],
                                   done_set["finished"])
    open_beam = ~(jnp.all(done_set["finished"]) & (rt.early_stopping == 1))
    can_continue = ~jnp.all(hits | ~real[:, None])
    done = ~(jnp.any(improvable) & open_beam & can_continue)
    return BeamState(
        running=_gather(candidates, keep), running_scores=running_scores,
        source=_gather(source, keep), improvable=improvable, cache=s.cache,
        step=s.step + 1, done=done, **done_set,
        record=None if s.record is None else _record_step(s.record, s.step, logp, source,
                                                          keep, top),
    )


def _initial_record(plan: Plan, batch: int, vocab: int) -> ScoreRecord | None:
    """Empty score record of plan.output_scores (None without: nothing enters the program)."""
    if not plan.output_scores:
        return None
    unset = jnp.full((batch, plan.num_beams, plan.new_len), -1, jnp.int32)
    return ScoreRecord(jnp.zeros((plan.new_len, batch * plan.num_beams, vocab), jnp.float32),
                       unset, unset)


def _initial_state(plan: Plan, prompt, real, cache, fill: jax.Array, vocab: int) -> BeamState:
    batch, beams = prompt.shape[0], plan.num_beams
    filler = jnp.full((batch, plan.new_len), fill, prompt.dtype)
    buffer = jnp.concatenate([prompt, filler], axis=1)
    running = jnp.broadcast_to(buffer[:, None], (batch, beams, plan.total_len))
    first = jnp.arange(beams)[None, :] == 0
    return BeamState(
        running=running,
        running_scores=jnp.broadcast_to(jnp.where(first, 0.0, _BIG_NEG), (batch, beams)),
        source=jnp.zeros((batch, beams), jnp.int32),
        sequences=running,
        scores=jnp.full((batch, beams), _BIG_NEG, jnp.float32),
        lengths=jnp.zeros((batch, beams), jnp.int32),
        finished=jnp.broadcast_to(~real[:, None], (batch, beams)),  # filler rows: done
        improvable=real,
        cache=cache,
        step=jnp.array(0, jnp.int32),
        done=jnp.array(False),
        record=_initial_record(plan, batch, vocab),
    )


def _reorder_cache(cache, source: jax.Array):
    """Gathers cache rows [B*K, ...] so that row (b, k) holds beam source[b, k]'s keys
    (rows are axis 1 of a scan_layers cache [L, B*K, ...])."""
    batch, beams = source.shape
    rows = (jnp.arange(batch)[:, None] * beams + source).reshape(-1)
    return map_cache_rows(lambda x, axis: jnp.take(x, rows, axis=axis), cache)


def beam_search_impl(cfg: GPT2Config, plan: Plan, params, cache, prompt: jax.Array,
                     mask: jax.Array, real: jax.Array, fill: jax.Array, rt: Runtime):
    """Beam search, one compiled computation.

    Args:
      cache: empty KV cache for [B, L] rows (repeated for the beams after the prefill).
      prompt: [B, P] left-padded ids; mask: [B, P]; real: [B] bool (False: filler rows);
      fill: i32 scalar, HF's filler of unwritten slots.
    Returns:
      (sequences [B, K, L], scores [B, K], lengths [B, K]) of the finished hypotheses, best
      first, and (ScoreRecord, steps: i32 loop iterations == HF's len(scores)) with
      plan.output_scores, else None.
    """
    batch, beams = prompt.shape[0], plan.num_beams
    slot_mask = key_mask(mask, plan.new_len)
    logits, cache = model_step(cfg, params, cache, prompt, slot_mask, prompt_positions(mask))
    beam_mask, slot_mask = repeat_rows(mask, beams), repeat_rows(slot_mask, beams)
    cache = map_cache_rows(lambda x, axis: jnp.repeat(x, beams, axis=axis), cache)
    state = _initial_state(plan, prompt, real, cache, fill, logits.shape[-1])
    next_position = repeat_rows(jnp.sum(mask, axis=-1).astype(jnp.int32), beams)

    def cond(carry):
        s = carry[0]
        return ~s.done & (s.step < rt.max_new_tokens)

    def body(carry):
        s, logits = carry
        s = beam_step(plan, rt, s, logits, beam_mask, real)
        cache = _reorder_cache(s.cache, s.source)
        last = jax.lax.dynamic_slice_in_dim(s.running, plan.prompt_len + s.step - 1, 1, axis=2)
        positions = (next_position + s.step - 1)[:, None]
        logits, cache = model_step(cfg, params, cache, last.reshape(batch * beams, 1),
                                   slot_mask, positions)
        return dataclasses.replace(s, cache=cache), logits

    state, _ = jax.lax.while_loop(cond, body, (state, repeat_rows(logits, beams)))
    record = None if state.record is None else (state.record, state.step)
    return state.sequences, state.scores, state.lengths, record
