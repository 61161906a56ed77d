"""Evaluation tasks: `--config=configs/eval.py:TASK` with TASK one of wikitext2, wikitext103,
ptb, lambada_openai, enwik8, text8, summarize, translate, file.

    python run.py --mode=eval --config=configs/eval.py:wikitext2 \
        --config.init_from=gpt2 --config.data_dir=../shared/data --output_json=wt2.json

prints a table (task, protocol, metric, value) and writes the rows as JSON. References: the
HF guide reports 19.44 (stride 1024) and 16.44 (stride 512) for gpt2-large on WikiText-2
raw; lm-eval reports 32.56 % / 40.06 ppl on lambada_openai for gpt2 (124M). `init_from`
brings its own config (HF folders, hub names, training workdirs); without it the model is
a random init of `config.model` (smoke tests). See experiments/reproduce_gpt2/.

Your own text file, scored with the model's own tokenizer (perplexity and bits per byte; the
model's context, windows moving by half of it; a relative path is read from the working
directory):

    python run.py --mode=eval --config=configs/eval.py:file --config.init_from=runs/ft \
        --config.eval.file=heldout.txt

lm-evaluation-harness tasks through the gpt2jax backend (`pip install -e ".[eval]"`):

    python run.py --mode=eval --config=configs/eval.py:lm_eval --config.init_from=gpt2 \
        --config.eval.tasks=lambada_openai,wikitext,hellaswag

(lm-eval downloads its datasets from the hub; the `*_local` tasks of configs/lm_eval_tasks
read the data folder offline). Expect lambada_openai acc 0.3256 / perplexity 40.06 for gpt2.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs import common

# Data files of each task: `dataset:NAME` is a file of the data layout (in data_dir when it is
# given, else $GPT2JAX_DATA_DIR, the cache, a download); an override such as
# --config.eval.files.jsonl=my.jsonl is your own file, read from the working directory.
TASK_FILES = {
    "wikitext2": dict(raw="dataset:wikitext-2-raw/wiki.test.raw",
                      tokens="dataset:wikitext-2/wiki.test.tokens"),
    "wikitext103": dict(raw="dataset:wikitext-103-raw/wiki.test.raw",
                        tokens="dataset:wikitext-103/wiki.test.tokens"),
    "ptb": dict(tokens="dataset:ptb/ptb.test.txt"),
    "lambada_openai": dict(jsonl="dataset:lambada/lambada_test.jsonl"),
    "enwik8": dict(raw="dataset:enwik8/enwik8"),
    "text8": dict(raw="dataset:text8/text8"),
    # {"article": ..., "highlights": ...} per line (CNN/Daily Mail field names)
    "summarize": dict(jsonl="dataset:cnn_dailymail/test.jsonl"),
    # {"en": ..., "fr": ...} per line; shots from a separate file of the same format
    "translate": dict(jsonl="dataset:wmt14_en_fr/test.jsonl",
                      shots="dataset:wmt14_en_fr/shots.jsonl"),
    # any text file: --config.eval.file=PATH (perplexity and bits per byte)
    "file": dict(),
}

LM_EVAL = "lm_eval"  # configs/eval.py:lm_eval, lm-evaluation-harness tasks (`tasks=...`)

# Perplexity tasks default to the HF guide's stride 512; byte-level ones too.
GENERATION_TASKS = ("summarize", "translate")


def eval_config(task: str) -> ml_collections.ConfigDict:
    """`config.eval`: how a task is evaluated."""
    c = ml_collections.ConfigDict()
    c.task = task                  # the task name (see TASK_FILES)
    c.files = ml_collections.ConfigDict(TASK_FILES[task])  # data files (see TASK_FILES)
    c.file = ""                    # task `file`: the text file to score (from the working dir)
    c.context_length = 1024        # tokens per window (<= model.n_positions)
    c.stride = 512                 # window step; 1024 = disjoint windows (HF guide: 512)
    # Perplexity tasks: comma-separated lengths (e.g. 128,256,512,1024), one set of rows per
    # length, each with disjoint windows (stride = length, as Press et al. 2022 evaluate
    # length extrapolation); past model.n_positions only for positions other than learned.
    # "" = context_length and stride above.
    c.context_lengths = ""
    c.batch_size = 8               # windows / examples per forward pass (CPU: 1-2 is fastest)
    c.max_tokens = 0               # score only the first N tokens of a text (0 = all; smoke)
    c.max_examples = 0             # LAMBADA / generation: first N examples (0 = all)
    c.last_word = True             # LAMBADA: also the last-word accuracy, plain + stop-word filter
    c.num_shots = 10               # translation: number of example pairs in the prompt
    c.source_lang = "en"           # translation: source field ("en" -> "fr", or "fr")
    c.target_lang = "fr"           # translation: target field
    c.summary_sentences = 3        # summarisation: keep the first N generated sentences
    c.progress = True              # show a tqdm progress bar
    return c


def lm_eval_config() -> ml_collections.ConfigDict:
    """`config.eval` of `configs/eval.py:lm_eval`: lm-eval tasks on the gpt2jax backend."""
    c = ml_collections.ConfigDict()
    c.task = LM_EVAL
    c.tasks = "lambada_openai_local,wikitext_local"  # comma-separated lm-eval task names
    c.include_path = str(Path(__file__).parent / "lm_eval_tasks")  # more task YAMLs; "" = none
    c.include_defaults = True      # also lm-eval's built-in tasks (lambada_openai, hellaswag...)
    c.limit = 0                    # first N documents of each task (0 = all; smoke tests)
    c.num_fewshot = -1             # few-shot examples (-1 = each task's default)
    c.batch_size = 8               # rows per forward pass (rounded up to the data-parallel size)
    c.max_length = 0               # context in tokens (0 = model.n_positions)
    c.max_gen_toks = 256           # generate_until: new tokens at most (lm-eval's hf default)
    c.progress = True              # show tqdm progress bars
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    task = arg or "wikitext2"
    if task == LM_EVAL:
        c = get_config("wikitext2")
        c.eval = lm_eval_config()
        return c
    if task not in TASK_FILES:
        from gpt2jax.errors import ConfigError

        raise ConfigError(
            f"Unknown eval task {task!r}; known tasks: {', '.join(sorted(TASK_FILES))}."
        )
    c = ml_collections.ConfigDict()
    c.model = common.model_config()
    # Scoring is deterministic (no attention dropout), so it can use the blocked causal kernel:
    # equal to the einsum reference within 1e-5; it skips the masked half of the scores and is
    # the fastest kernel on a CPU at long lengths (bench/README.md, "Evaluation").
    c.model.attention_impl = "blocked"
    c.init_from = ""               # HF dir / weights file / hub name ("gpt2") / training
    #                                workdir (its latest checkpoint); "" = random init
    c.seed = 0                     # PRNG seed for random init and for sampling
    c.data_dir = ""                # folder of the data files; "" = data dir, cache, download
    c.eval = eval_config(task)
    c.generate = common.generate_config()
    # The GPT-2 paper's generation settings: top-k 2 sampling, 100 tokens (summarisation);
    # greedy for translation.
    c.generate.do_sample = task == "summarize"
    c.generate.top_k = 2 if task == "summarize" else 0
    c.generate.max_new_tokens = 100 if task == "summarize" else 64
    if task == "file":  # from the model: its whole context, windows moving by half of it
        c.eval.update(context_length=0, stride=0)
    c.mesh = common.mesh_config()
    return c
