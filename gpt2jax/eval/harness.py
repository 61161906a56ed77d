"""gpt2jax as an lm-evaluation-harness backend, registered as `gpt2jax` on import.

    import lm_eval
    import gpt2jax.eval.harness  # registers model="gpt2jax"
    lm_eval.simple_evaluate(model="gpt2jax", model_args="pretrained=gpt2,dtype=bfloat16",
                            tasks=["lambada_openai"])

lm-eval's own command line, with this backend registered first (lm-eval 0.4.13 discovers no
backends of installed packages: its registry holds its own `lm_eval.models` and what was
imported), takes lm-eval's arguments unchanged:

    python -m gpt2jax.eval.harness --model gpt2jax --model_args pretrained=gpt2 \
        --tasks lambada_openai_local --include_path configs/lm_eval_tasks
    gpt2jax-lm-eval ...     # the same, the console script of `pip install -e ".[eval]"`

Importing this module sets `DISABLE_MULTIPROC=1` unless it is set: lm-eval then computes its
bootstrap standard errors in this process, with the same seeds and numbers, instead of in a
pool forked from a JAX process (JAX warns that such a fork can deadlock).

`pretrained` is an HF directory, a `.safetensors` file, a hub name (`gpt2`) or a training
workdir (its latest checkpoint). Other model_args: `dtype` (compute dtype), `batch_size`
(rows per forward pass, default 8), `max_length` (context, default n_positions),
`max_gen_toks` (default 256, as lm-eval's hf backend), `attention_impl` (default `blocked`,
as `configs/eval.py`: exact, and on a CPU faster than `xla`, see bench/README.md; `cudnn`
on an NVIDIA GPU with `dtype=bfloat16`),
`tokenizer` (a gpt2.tiktoken ranks file; default: `gpt2jax.get_tokenizer()`'s search).
The model comes from `gpt2jax.weights.loader.load_model`, as in the CLI modes.
From Python, `GPT2JaxLM(cfg=cfg, params=params, mesh=mesh, axis_rules=rules)` wraps a model
in memory (the training loop does this); `tokenizer=` may then be a `Tokenizer` object.

Every request type follows lm-eval's `hf` backend (lm-eval 0.4.13) step by step, so results
are equal on the same weights: the same tokenization (`TemplateLM._encode_pair`, empty
contexts get the EOT prefix), the same order (`Collator`, longest first), the same left
truncation, rolling windows from lm-eval's own `get_rolling_token_windows`, and generation
that stops and is cut by lm-eval's own `handle_stop_sequences` / `postprocess_generated_text`.
The model side (requests of equal model input share one row; bucketed, sharded, compiled
once per length bucket) is `harness_core`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

try:
    import lm_eval
    import lm_eval.models  # noqa: F401  lm-eval's own backends ("hf"): registered first
    from lm_eval import utils as lm_utils
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (Collator, handle_stop_sequences, normalize_gen_kwargs,
                                      postprocess_generated_text)
    from lm_eval.tasks import TaskManager
except ModuleNotFoundError as e:  # the optional `eval` extra
    raise ModuleNotFoundError(
        f"gpt2jax.eval.harness needs lm-eval ({e.name} is missing); install it with "
        "`pip install -e \".[eval]\"` (lm-eval==0.4.13).", name=e.name) from e
from tqdm.auto import tqdm

from gpt2jax.data.bpe import EOT_ID
from gpt2jax.data.tokenizers import Tokenizer, get_tokenizer
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.eval.harness_core import Scorer
from gpt2jax.generation.args import suppress_past_tokenizer
from gpt2jax.nn.model import GPT2Config, param_count
from gpt2jax.weights.loader import load_model

# lm-eval's bootstrap (lm_eval/api/metrics.py: bootstrap_stderr) without os.fork: the same
# chunks seeded 0, 1, ... in order, so the same standard errors.
os.environ.setdefault("DISABLE_MULTIPROC", "1")

# HF generate arguments that lm-eval tasks pass in generation_kwargs and gpt2jax.generate takes.
GENERATE_ARGS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                 "no_repeat_ngram_size", "num_beams", "length_penalty", "seed")


def _batch_size(value) -> int:
    if isinstance(value, str) and not value.isdigit():
        raise ConfigError(f"batch_size={value!r} is not supported by the gpt2jax backend "
                          "(no automatic search); pass an integer, e.g. batch_size=8.")
    return int(value)


def _register(cls):
    """`register_model("gpt2jax")`, except in `python -m gpt2jax.eval.harness`, where this file
    first runs as `__main__`: the module imported by its name (below) registers, so that one
    class stands behind the name (lm-eval refuses a second one)."""
    return cls if __name__ == "__main__" else register_model("gpt2jax")(cls)


@_register
class GPT2JaxLM(TemplateLM):
    """An `lm_eval.api.model.LM` on gpt2jax: loglikelihood, loglikelihood_rolling and
    generate_until (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, attention_impl: str = "blocked",
                 tokenizer: str | Tokenizer | None = None, cfg: GPT2Config | None = None,
                 params=None,
                 mesh=None, axis_rules=(), progress: bool = True, seed: int = 0,
                 device=None, max_batch_size=None, **unknown):
        super().__init__()
        if unknown:
            raise ConfigError(f"Unknown gpt2jax model_args {sorted(unknown)}; known: pretrained, "
                              "dtype, batch_size, max_length, max_gen_toks, attention_impl, "
                              "tokenizer.")
        if (pretrained is None) == (params is None):
            raise ConfigError("Give the gpt2jax backend either pretrained=PATH_OR_NAME "
                              "(model_args) or cfg= and params= (Python), not both or neither.")
        ranks = "" if isinstance(tokenizer, Tokenizer) else str(tokenizer or "")
        if pretrained is not None:  # the model's own tokenizer (a workdir's, else GPT-2 BPE)
            overrides = {"attention_impl": attention_impl}
            if dtype:
                overrides["dtype"] = dtype
            cfg, params, tokenizer = load_model(str(pretrained), ranks_path=ranks, **overrides)
        elif not isinstance(tokenizer, Tokenizer):
            tokenizer = get_tokenizer(ranks)
        if tokenizer.name != "gpt2":
            raise ConfigError(f"{pretrained or 'The model'} was trained with the "
                              f"{tokenizer.name!r} tokenizer; lm-eval tasks are text, evaluated "
                              "here with GPT-2 BPE only.")
        self.enc = tokenizer
        if cfg.vocab_size < self.enc.vocab_size:
            raise ConfigError(f"The model's vocab_size={cfg.vocab_size} is smaller than the "
                              f"GPT-2 tokenizer's {self.enc.vocab_size}; use a GPT-2 BPE model.")
        self.cfg, self.pretrained, self.progress, self.seed = cfg, pretrained, progress, seed
        self._max_gen_toks = int(max_gen_toks)
        self.scorer = Scorer(cfg, params, _batch_size(batch_size),
                             int(max_length or cfg.n_positions), mesh, axis_rules)

    # ------------------------------------------------------------------ lm-eval interface

    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def prefix_token_id(self) -> int:
        return EOT_ID  # GPT-2's BOS is its EOT, which the hf backend uses as prefix

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.scorer.batch_size

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        """GPT-2 BPE ids; `<|endoftext|>` in the text is the special token (as HF parses it)."""
        return self.enc.encode(string, special=True)

    def tok_decode(self, tokens) -> str:
        return self.enc.decode(list(tokens))

    def get_model_info(self) -> dict:
        return {"model_num_parameters": param_count(self.cfg), "model_dtype": self.cfg.dtype,
                "model_source": str(self.pretrained)}

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False):
        """[(request strings or None, context ids, continuation ids)] -> [(logprob, greedy)].
        The scorer reads requests of equal (or prefix) model input from one row, batch_size
        rows per forward pass, longest first (the hf backend shares equal inputs)."""
        for _, ctx, cont in requests:
            if not ctx or not cont or len(cont) > self.max_length:
                raise ConfigError(f"A loglikelihood request has {len(ctx)} context and "
                                  f"{len(cont)} continuation tokens; both must be non-empty and "
                                  f"the continuation at most max_length={self.max_length}.")
        with tqdm(total=len(requests), desc="gpt2jax loglikelihood",
                  disable=disable_tqdm or not self.progress) as bar:
            results = self.scorer.score([(ctx, cont) for _, ctx, cont in requests], bar.update)
        for (strings, _, _), answer in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's full log-likelihood, in lm-eval's disjoint rolling windows (every token
        scored once, the first after the EOT prefix); all windows batched together."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm) if windows else []
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations, cut at the first stop string; requests grouped
        by their generation arguments, longest context first."""
        order = Collator([req.args for req in requests],
                         sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                         group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos = self.tok_decode([self.eot_token_id])
        results = []
        bar = tqdm(total=len(requests), desc="gpt2jax generate_until",
                   disable=disable_tqdm or not self.progress)
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            for text, tokens in zip(contexts, self._generate(contexts, kwargs)):
                result = postprocess_generated_text(self.tok_decode(tokens), until, None)
                self.cache_hook.add_partial("generate_until", (text, all_kwargs[0]), result)
                results.append(result)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def _generate(self, contexts, kwargs: dict) -> list[list[int]]:
        """New tokens for each context (left-truncated to leave room for max_gen_toks)."""
        max_gen = kwargs.pop("max_gen_toks")
        if max_gen >= self.max_length:
            raise ConfigError(f"max_gen_toks={max_gen} leaves no room for a context in "
                              f"max_length={self.max_length}; lower max_gen_toks.")
        unknown = sorted(set(kwargs) - set(GENERATE_ARGS))
        if unknown:
            raise ConfigError(f"generation_kwargs {unknown} are not supported by the gpt2jax "
                              "backend; supported: until, max_gen_toks, "
                              f"{', '.join(GENERATE_ARGS)}.")
        if not kwargs.get("do_sample"):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("do_sample", "temperature")}
        kwargs.setdefault("seed", self.seed)
        ids = [self.tok_encode(c)[-(self.max_length - max_gen):] for c in contexts]
        kwargs = suppress_past_tokenizer(kwargs, self.cfg.vocab_size, self.enc.vocab_size)
        return self.scorer.generate(ids, max_gen, self.eot_token_id, **kwargs)


# ------------------------------------------------------------------------ running tasks

def task_manager(include_path: str | None = None, data_dir: str = "",
                 include_defaults: bool = True) -> TaskManager:
    """lm-eval's task index: its built-in tasks (`include_defaults`, slow to index: ~10 s)
    plus the YAMLs in `include_path` (e.g. configs/lm_eval_tasks), whose data files are
    looked for in `data_dir` (else $GPT2JAX_DATA_DIR, the cache, a download)."""
    return TaskManager(include_path=include_path, include_defaults=include_defaults,
                       metadata={"data_dir": str(data_dir)} if data_dir else None)


def task_names(tasks, manager: TaskManager) -> list[str]:
    """Task names from "a,b" or a list, each checked against `manager`'s index."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    unknown = [t for t in names if t not in manager.all_tasks]
    if not names or unknown:
        local = sorted(t for t in manager.all_tasks if t.endswith("_local"))
        raise ConfigError(f"Unknown lm-eval tasks {unknown or tasks!r}; pass names that "
                          f"lm-eval lists (`lm_eval ls tasks`) or local ones ({', '.join(local)}).")
    return names


def evaluate(lm, tasks, manager: TaskManager, *, limit: int | float | None = None,
             num_fewshot: int | None = None, gen_kwargs: dict | None = None,
             log_samples: bool = False, bootstrap_iters: int = 0, **kwargs) -> dict:
    """`lm_eval.simple_evaluate` of `lm` (an LM, or a registered name such as "hf" with
    `model_args=` in kwargs) on `tasks` (names) from `manager`. Returns lm-eval's results
    dict; `bootstrap_iters=0` skips the standard errors."""
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None,
        num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, log_samples=log_samples,
        bootstrap_iters=bootstrap_iters, **kwargs)


def result_rows(results: dict) -> list[dict]:
    """lm-eval's results as rows {task, protocol: "lm_eval", metric, value, examples}
    (standard errors left out; a filter other than "none" is kept in the metric name)."""
    rows = []
    for task, metrics in results["results"].items():
        count = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            rows.append({"task": task, "protocol": "lm_eval", "value": float(value),
                         "metric": metric if filt == "none" else f"{metric}/{filt}",
                         "examples": count})
    return rows


# ------------------------------------------------------------------------ lm-eval's CLI

def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's command line (`lm_eval ARGS`, lm-eval 0.4.13) with `--model gpt2jax`
    available: `python -m gpt2jax.eval.harness ARGS` and the `gpt2jax-lm-eval` script.

    Args:
      argv: lm-eval's arguments (None: this process's, `sys.argv[1:]`).
    Returns:
      0; a gpt2jax user error (a bad model_arg, a missing model) prints one `error:` line and
      returns 2. lm-eval's own argument errors exit as lm-eval does.
    """
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval parses these
    try:
        cli_evaluate()
    except GPT2JaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from gpt2jax.eval import harness  # the module by its name: registers the backend

    sys.exit(harness.main())
