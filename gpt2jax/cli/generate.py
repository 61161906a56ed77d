"""`python run.py --mode=generate`: text in, text out, through `gpt2jax.generate`.

    python run.py --mode=generate --config=configs/gpt2.py:small --config.init_from=gpt2 \
        --prompt="The quick brown fox jumps over the" --config.generate.num_beams=5 \
        --config.generate.no_repeat_ngram_size=2

`--config.init_from` is an HF directory / weights file / hub name, a training workdir (its
latest checkpoint and the tokenizer it trained with, e.g. characters), or "" for a random
model from `config.model` and `config.seed` (smoke tests); see `gpt2jax.weights.loader`.
`--prompt_file` holds one prompt per line (batched, left-padded). Greedy/sampled text of a
single prompt is streamed to the terminal as it is produced: a `jax.debug.callback` inside
the compiled loop (a separately compiled variant; the non-streaming path has no host round
trip). `--output_json` writes
prompts, completions, token ids and beam scores.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

import jax
import numpy as np

from gpt2jax.cli.files import check_output_file, read_text_file, write_json
from gpt2jax.data.tokenizers import Tokenizer
from gpt2jax.errors import ConfigError
from gpt2jax.generation.args import new_token_count, prepare_inputs, suppress_past_tokenizer
from gpt2jax.generation.generate import generate, make_args
from gpt2jax.parallel import sharding
from gpt2jax.weights.loader import model_for_config


def read_prompts(args) -> list[str]:
    """The prompts of --prompt or --prompt_file (one per line); errors name the fix."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise ConfigError("Give exactly one of --prompt='text' or --prompt_file=PATH "
                          "(one prompt per line).")
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        path = Path(args.prompt_file)
        prompts = read_text_file(path, "--prompt_file",
                                 "a text file with one prompt per line").splitlines()
        if not prompts:
            raise ConfigError(f"--prompt_file={path} is empty; write one prompt per line.")
    for number, prompt in enumerate(prompts, 1):
        if not prompt.strip():
            where = "--prompt" if args.prompt is not None else f"line {number} of {path}"
            raise ConfigError(f"{where} is an empty prompt; give some text to continue.")
    return prompts


def generate_kwargs(config) -> dict:
    """config.generate as HF keyword arguments (unset max_new_tokens left out)."""
    kwargs = {k: v for k, v in config.generate.items()}
    if kwargs.get("max_new_tokens") is None:
        kwargs.pop("max_new_tokens", None)
    return kwargs


def encode_batch(tokenizer: Tokenizer, prompts: list[str], pad_id: int):
    """Left-padded ids and mask [B, longest]; `<|endoftext|>` in a prompt is the EOT id."""
    encoded = [tokenizer.encode(p, special=True) for p in prompts]
    width = max(len(e) for e in encoded)
    ids = np.full((len(encoded), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens):] = tokens
        mask[row, width - len(tokens):] = 1
    return ids, mask


class TerminalStreamer:
    """Writes the text of row 0 as tokens arrive (UTF-8 safe across token boundaries)."""

    def __init__(self, tokenizer: Tokenizer, eos_ids: tuple[int, ...], out=None):
        self.tokenizer, self.eos_ids = tokenizer, set(eos_ids)
        self.out = sys.stdout if out is None else out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopped = False

    def __call__(self, step: int, tokens: np.ndarray) -> None:
        token = int(tokens[0])
        if self.stopped or token in self.eos_ids:
            self.stopped = True
            return
        piece = self.tokenizer.token_bytes(token)
        self.out.write(self.decoder.decode(piece))
        self.out.flush()

    def finish(self) -> None:
        """Flushes bytes held back by an unfinished UTF-8 sequence."""
        self.out.write(self.decoder.decode(b"", final=True))
        self.out.flush()


def _mesh_kwargs(config) -> dict:
    if jax.device_count() == 1:
        return {}

    return dict(mesh=sharding.make_mesh(config.mesh), axis_rules=sharding.rules(config.mesh))


def main(config, args) -> list[dict]:
    """Runs generation for the CLI; prints text; optionally writes --output_json."""
    prompts = read_prompts(args)
    # checked before the work: a result that cannot be written is known before it is computed
    out_json = check_output_file(args.output_json, "--output_json") if args.output_json else None
    kwargs = generate_kwargs(config)
    gen_args = make_args(**kwargs)
    cfg, params, tokenizer = model_for_config(config, explicit=args.config_overrides)
    kwargs = suppress_past_tokenizer(kwargs, cfg.vocab_size, tokenizer.vocab_size)
    ids, mask = encode_batch(tokenizer, prompts, gen_args.pad_id)
    stream = len(prompts) == 1 and gen_args.num_beams == 1 and gen_args.num_return_sequences == 1
    streamer = TerminalStreamer(tokenizer, gen_args.eos_ids) if stream else None
    if stream:  # the prompt is echoed only once the request is known to fit the model
        new_token_count(cfg, *prepare_inputs(ids, mask, gen_args), gen_args)
        print(prompts[0], end="", flush=True)
    mesh = {} if stream else _mesh_kwargs(config)  # one streamed prompt: one device
    out = generate(cfg, params, ids, mask, return_dict=True, streamer=streamer, **mesh,
                   **kwargs)
    if stream:
        streamer.finish()
        print(flush=True)
    results = _results(tokenizer, prompts, ids, out, gen_args)
    if not stream:
        for item in results:
            for text in item["completions"]:
                print(item["prompt"] + text, flush=True)
                print("-" * 40)
    if out_json is not None:
        write_json(out_json, results, "--output_json")
    return results


def _results(tokenizer, prompts, ids, out, gen_args) -> list[dict]:
    per_prompt = out.sequences.shape[0] // len(prompts)
    eos = set(gen_args.eos_ids)
    results = []
    for row, prompt in enumerate(prompts):
        item = dict(prompt=prompt, completions=[], tokens=[], scores=[])
        for seq in range(row * per_prompt, (row + 1) * per_prompt):
            new = [int(t) for t in out.sequences[seq, ids.shape[1]:]]
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            item["completions"].append(tokenizer.decode(new[:cut]))
            item["tokens"].append([int(t) for t in out.sequences[seq]])
            if out.sequences_scores is not None:
                item["scores"].append(float(out.sequences_scores[seq]))
        results.append(item)
    return results
