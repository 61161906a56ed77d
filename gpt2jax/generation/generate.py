"""Text generation: HF-compatible arguments, bucketing, and the compiled greedy/sampling loop.

`generate(cfg, params, input_ids, ...)` mirrors Hugging Face `model.generate` for GPT-2
(argument names, defaults and results; see `GenerationArgs`). The whole decode is one jitted
computation: prefill of the padded prompt into a preallocated KV cache, then a
`lax.while_loop` that feeds one token per step. Beam search lives in `beam_search.py`.

Bucketing: prompts are left-padded to a bucket length (powers of two, at least 16), the new
token budget and the batch are rounded up the same way, and everything HF treats as a number
(temperature, top_p, penalties, length_penalty, early_stopping, EOS/pad ids, the exact number
of new tokens) is a traced value. So prompts whose lengths fall in the same bucket reuse one
compiled executable. Extra bucket columns are masked out of attention, of the repetition
penalty and of n-gram matching, so the tokens equal HF's on the unpadded batch. Left padding
shared by every row is cut first and put back in the result (`droppable_columns`).

Shapes: B batch (bucketed), P prompt columns (bucketed), N new-token columns, L = P + N,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.errors import ConfigError
from gpt2jax.generation import beam_search, sampling
from gpt2jax.generation.args import (GenerationArgs, droppable_columns, make_args,
                                     new_token_count, prepare_inputs)
from gpt2jax.generation.compiled import Decoders, Streamer
from gpt2jax.generation.plan import (DecodeState, Plan, Runtime, batch_bucket, bucket,
                                     fill_value, key_mask, model_step, prompt_positions,
                                     valid_positions)
from gpt2jax.generation.sampling import ScoreParams, ScoreSettings
from gpt2jax.generation.scores import beam_outputs, check_output_scores, step_scores
from gpt2jax.nn import model as model_lib
from gpt2jax.nn.model import GPT2Config, init_cache
from gpt2jax.nn.positions import context_limit
from gpt2jax.parallel.placement import Placement


# ------------------------------------------------------------------- greedy / sampling loop

def _choose(cfg_plan: Plan, rt: Runtime, state: DecodeState, logits: jax.Array, mask: jax.Array,
            real: jax.Array, stream: Callable) -> DecodeState:
    """Processes logits [B, V], picks the next token and writes it into the buffer.

    stream: the host callback fn(call id, step, tokens [B]) of a streaming plan.
    """
    settings = cfg_plan.score
    length = cfg_plan.total_len
    cur_len = cfg_plan.prompt_len + state.step
    valid = valid_positions(mask, length, cur_len)
    scores = sampling.apply_processors(logits, state.tokens, valid, cur_len, rt.offset,
                                       state.step, settings, rt.score)
    key = jax.random.fold_in(rt.key, state.step)
    token = sampling.select_tokens(key, scores, settings, rt.score)
    unfinished = state.unfinished
    if settings.num_eos > 0:
        token = jnp.where(unfinished, token, rt.pad_id)
        unfinished = unfinished & ~(token[:, None] == rt.score.eos_ids[None, :]).any(-1)
    unfinished = unfinished & real
    if cfg_plan.stream:
        jax.debug.callback(stream, rt.stream_id, state.step, token, ordered=True)
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], cur_len, axis=1)
    return DecodeState(tokens, state.cache, unfinished, state.step + 1)


def _greedy_impl(cfg: GPT2Config, plan: Plan, params, cache, prompt: jax.Array,
                 mask: jax.Array, real: jax.Array, rt: Runtime, *, stream: Callable):
    """Greedy or sampled decoding, one compiled computation.

    Each loop step turns the current logits into a token, then runs the model on that token
    for the next logits (so the token choice is compiled once; the last forward is unused).

    Args:
      cache: empty KV cache for [B, L] (made outside, away from sharding-rule contexts).
      prompt: [B, P] left-padded ids; mask: [B, P] 1 for real tokens; real: [B] bool (False
        for bucket filler rows).
    Returns:
      (tokens [B, L], steps: i32 number of generated columns).
    """
    batch = prompt.shape[0]
    slot_mask = key_mask(mask, plan.new_len)
    logits, cache = model_step(cfg, params, cache, prompt, slot_mask, prompt_positions(mask))
    filler = jnp.full((batch, plan.new_len), rt.pad_id, prompt.dtype)
    state = DecodeState(jnp.concatenate([prompt, filler], axis=1), cache, real,
                        jnp.array(0, jnp.int32))
    next_position = jnp.sum(mask, axis=-1).astype(jnp.int32)

    def cond(carry):
        s = carry[0]
        return (s.step < rt.max_new_tokens) & jnp.any(s.unfinished)

    def body(carry):
        s, logits = carry
        s = _choose(plan, rt, s, logits, mask, real, stream)
        last = jax.lax.dynamic_slice_in_dim(s.tokens, plan.prompt_len + s.step - 1, 1, axis=1)
        positions = (next_position + s.step - 1)[:, None]
        logits, cache = model_step(cfg, params, s.cache, last, slot_mask, positions)
        return dataclasses.replace(s, cache=cache), logits

    state, _ = jax.lax.while_loop(cond, body, (state, logits))
    return state.tokens, state.step


# The compiled loops, their trace (== compile) counts and the streamers of calls in flight.
DECODERS = Decoders(_greedy_impl, beam_search.beam_search_impl)


# ----------------------------------------------------------------------------------- API

@dataclasses.dataclass
class GenerateOutput:
    """What `generate(..., return_dict=True)` returns (HF's field names).

    sequences: [batch * num_return_sequences, prompt + new] int32.
    sequences_scores: [batch * num_return_sequences] float32 (beam search only, else None).
    scores: output_scores only, one array per step (generation/scores.py): [batch *
      num_return_sequences, V] greedy/sampling, [batch * num_beams, V] beam search.
    beam_indices: beam search with output_scores only: [batch * num_return_sequences, new].
    """

    sequences: np.ndarray
    sequences_scores: np.ndarray | None = None
    scores: tuple | None = None
    beam_indices: np.ndarray | None = None


def generate(cfg: GPT2Config, params, input_ids, attention_mask=None, *, mesh=None,
             axis_rules=None, return_dict: bool = False,
             streamer: Streamer | None = None, output_scores: bool = False, **kwargs):
    """Generates like HF `GPT2LMHeadModel.generate` (greedy, sampling, beam search).

    Args:
      cfg, params: the model.
      input_ids: [batch, prompt] int (left-padded for different lengths), or [prompt].
      attention_mask: [batch, prompt] 1 = real token; None = inferred as HF does.
      mesh, axis_rules: optional device mesh and logical-axis rules (e.g.
        `sharding.make_mesh(config.mesh)`, `sharding.rules(config.mesh)`): batch is sharded
        on the data axes, heads on `tensor`.
      return_dict: return a `GenerateOutput` (with beam `sequences_scores`) instead of ids.
      streamer: for greedy/sampling, called as streamer(step, tokens [rows]) from inside the
        compiled loop as each token is produced (a separately compiled variant).
      output_scores: with return_dict, HF's per-step `scores` (and, for beam search, HF's
        `beam_indices`; a separately compiled beam program that records them).
      **kwargs: HF arguments, see `GenerationArgs`.
    Returns:
      int32 array [batch * num_return_sequences, prompt + new], or a `GenerateOutput`.
    """
    args = make_args(**kwargs)
    check_output_scores(output_scores, return_dict)
    if streamer is not None and mesh is not None:
        raise ConfigError("streamer= needs single-device decoding (ordered host callbacks); "
                          "drop mesh= or the streamer.")
    ids, mask = prepare_inputs(input_ids, attention_mask, args)
    new_tokens = new_token_count(cfg, ids, mask, args)
    if args.do_sample and args.num_beams == 1 and args.num_return_sequences > 1:
        ids = np.repeat(ids, args.num_return_sequences, axis=0)
        mask = np.repeat(mask, args.num_return_sequences, axis=0)
    # Padding columns shared by all rows are cut (a fixed-width batch near the context limit
    # would not fit otherwise) and put back in front of the result, where HF has them.
    cut = droppable_columns(ids, mask, args.no_repeat_ngram_size)
    prompt_mask = mask  # the whole prompt's mask, as HF's scores see it
    head, ids, mask = ids[:, :cut], ids[:, cut:], mask[:, cut:]
    plan, prompt, pmask, real = _plan(cfg, ids, mask, new_tokens, args, mesh, axis_rules,
                                      streamer is not None and args.num_beams == 1)
    beams = args.num_beams > 1  # beam scores are recorded in the loop, greedy's recomputed
    plan = dataclasses.replace(plan, output_scores=output_scores and beams)
    rt = _runtime(args, new_tokens, plan.prompt_len - ids.shape[1])
    cache = init_cache(cfg, plan.batch, plan.total_len)
    place = Placement(mesh, axis_rules)
    params = place.put_params(params, model_lib.logical_axes(cfg))
    prompt, pmask = place.put_batch((prompt, pmask), local=False)
    with place.context():
        if args.num_beams > 1:
            out = _run_beams(cfg, plan, params, cache, prompt, pmask, real, rt, args, ids.shape)
        else:
            out = _run_greedy(cfg, plan, params, cache, prompt, pmask, real, rt, ids.shape,
                              streamer)
    rows = out.sequences.shape[0]
    out.sequences = np.concatenate([np.repeat(head, rows // len(head), axis=0), out.sequences],
                                   axis=1)
    if output_scores and not beams:
        out.scores = step_scores(cfg, params, out.sequences, prompt_mask, plan.score, rt.score)
    return out if return_dict else out.sequences


def _plan(cfg, ids, mask, new_tokens, args, mesh, axis_rules, stream):
    """Buckets shapes and left-pads the batch: (Plan, prompt [B', P'], mask, real rows [B'])."""
    rows, length = ids.shape
    limit = context_limit(cfg)  # None: the position scheme defines every position
    if limit is not None and length + new_tokens > limit:
        # the cache has one slot per column: fewer would overwrite the last slot every step
        raise ConfigError(
            f"{length} prompt columns (after cutting the padding shared by all rows) + "
            f"{new_tokens} new tokens exceed the model context of {limit} positions"
            + ("; no_repeat_ngram_size needs the padding's n-grams, so pad to the longest "
               "prompt" if args.no_repeat_ngram_size else "") + "; or lower max_new_tokens.")
    prompt_len = bucket(length)
    if limit is not None and prompt_len + new_tokens > limit:
        prompt_len = length  # no room for bucket padding near the context limit
    # the KV cache has prompt_len + new_len slots: sized from the requested length
    new_len = bucket(new_tokens) if limit is None else min(bucket(new_tokens), limit - prompt_len)
    batch = batch_bucket(rows, Placement(mesh, axis_rules).data_parallel_size)
    offset = prompt_len - length
    fill = args.pad_id if 0 <= args.pad_id < cfg.vocab_size else 0
    prompt = np.full((batch, prompt_len), fill, np.int32)
    pmask = np.zeros((batch, prompt_len), np.int32)
    prompt[:rows, offset:], pmask[:rows, offset:] = ids, mask
    pmask[rows:, -1] = 1  # filler rows: one token, so that no row is fully masked
    real = np.arange(batch) < rows
    use_top_p = args.do_sample and args.top_p < 1.0
    score = ScoreSettings(
        do_sample=bool(args.do_sample),
        top_k=int(args.top_k) if args.do_sample else 0,
        use_top_p=bool(use_top_p),
        ngram_window=max(int(args.no_repeat_ngram_size), 3) if args.no_repeat_ngram_size else 0,
        num_eos=len(args.eos_ids),
        min_tokens_to_keep=len(args.eos_ids) + 1 if args.num_beams > 1 else 1,
        suppressed=args.suppressed_ids,
    )
    rules = tuple(axis_rules) if axis_rules is not None else None
    plan = Plan(batch, prompt_len, new_len, int(args.num_beams), score, stream, mesh, rules)
    return plan, prompt, pmask, real


def _runtime(args: GenerationArgs, new_tokens: int, offset: int) -> Runtime:
    eos = np.array(args.eos_ids or (-1,), np.int32)
    early = {False: 0, True: 1, "never": 2}[args.early_stopping]
    return Runtime(
        max_new_tokens=jnp.int32(new_tokens), offset=jnp.int32(offset),
        pad_id=jnp.int32(args.pad_id), length_penalty=jnp.float32(args.length_penalty),
        early_stopping=jnp.int32(early), key=jax.random.key(args.seed),
        score=ScoreParams(
            temperature=jnp.float32(args.temperature), top_p=jnp.float32(args.top_p),
            repetition_penalty=jnp.float32(args.repetition_penalty),
            min_new_tokens=jnp.int32(args.min_new_tokens), eos_ids=jnp.asarray(eos),
            ngram_size=jnp.int32(max(args.no_repeat_ngram_size, 1)),
        ),
        stream_id=jnp.int32(0),
    )


def _run_greedy(cfg, plan, params, cache, prompt, pmask, real, rt, shape,
                streamer) -> GenerateOutput:
    with DECODERS.streams.open(streamer) as call_id:  # this call's tokens reach only it
        rt = dataclasses.replace(rt, stream_id=jnp.int32(call_id))
        tokens, steps = DECODERS.greedy(cfg, plan, params, cache, prompt, pmask, real, rt)
        tokens, steps = np.asarray(tokens), int(steps)
    rows, length = shape
    offset = plan.prompt_len - length
    return GenerateOutput(tokens[:rows, offset:plan.prompt_len + steps])


def _run_beams(cfg, plan, params, cache, prompt, pmask, real, rt, args, shape) -> GenerateOutput:

    fill = jnp.int32(fill_value(args.pad_token_id if args.pad_token_id is not None
                                else (args.eos_ids[0] if args.eos_ids else None), args.eos_ids))
    seqs, scores, lengths, record = DECODERS.beam(cfg, plan, params, cache, prompt, pmask, real,
                                                  fill, rt)
    rows, length = shape
    keep = args.num_return_sequences
    seqs, scores = np.asarray(seqs)[:rows, :keep], np.asarray(scores)[:rows, :keep]
    generated = int(np.asarray(lengths)[:rows, :keep].max())
    offset = plan.prompt_len - length
    seqs = seqs[:, :, offset:plan.prompt_len + generated]
    out = GenerateOutput(seqs.reshape(rows * keep, -1), scores.reshape(-1))
    if record is not None:
        out.scores, out.beam_indices = beam_outputs(*record, rows, keep, generated)
    return out
