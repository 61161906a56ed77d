"""Shared config sections. Every default of the project lives here or in a config file.

Each function returns a fresh `ml_collections.ConfigDict`; config files compose them and
override what differs. One comment per field says what it means.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

# GPT-2 sizes from the released checkpoints (Radford et al. 2019, Table 2; HF config.json).
GPT2_SIZES = {
    "small": dict(n_layer=12, n_head=12, n_embd=768),    # 124M
    "medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "large": dict(n_layer=36, n_head=20, n_embd=1280),   # 774M
    "xl": dict(n_layer=48, n_head=25, n_embd=1600),      # 1558M
}


def model_config(**overrides) -> ml_collections.ConfigDict:
    """`config.model`: the fields of `gpt2jax.GPT2Config`, GPT-2 124M by default."""
    c = ml_collections.ConfigDict()
    c.vocab_size = 50257           # GPT-2 BPE vocabulary (50,256 merges + <|endoftext|>)
    c.n_positions = 1024           # context length (learned position embeddings)
    c.n_embd = 768                 # width of the residual stream
    c.n_layer = 12                 # number of transformer blocks
    c.n_head = 12                  # attention heads (n_embd must divide by it)
    c.layer_norm_epsilon = 1e-5    # LayerNorm epsilon, as in GPT-2
    c.embd_pdrop = 0.1             # dropout after token+position embeddings
    c.attn_pdrop = 0.1             # dropout on attention probabilities
    c.resid_pdrop = 0.1            # dropout on each residual branch output
    c.initializer_range = 0.02     # std of the normal init (residual projections scaled)
    c.dtype = "float32"            # compute dtype: float32 | bfloat16 | float16
    c.param_dtype = "float32"      # parameter storage dtype (keep float32 to train)
    c.attention_impl = "einsum"    # einsum | xla | cudnn (GPU) | pallas
    c.remat = "none"               # rematerialisation: none | full | dots_saveable
    # Attention variants (gpt2jax/nn/attention.py); these defaults are exact GPT-2.
    c.n_kv_heads = 0               # key/value heads: 0 = GPT-2 fused c_attn; 1 = MQA; k = GQA
    c.position = "learned"         # positions: learned (wpe) | rope | alibi | none
    c.rope_theta = 10000.0         # RoPE base (position="rope" only)
    c.sliding_window = 0           # attend to the last W positions only (0 = full causal)
    c.norm_position = "pre"        # LayerNorm placement: pre (GPT-2) | post (no ln_f)
    c.qk_norm = False              # LayerNorm over head_dim on queries and keys
    c.scan_layers = False          # one nn.scan over the blocks, params stacked [n_layer, ...]
    c.update(overrides)
    return c


def generate_config() -> ml_collections.ConfigDict:
    """`config.generate`: the keyword arguments of `gpt2jax.generate`, HF names and defaults."""
    c = ml_collections.ConfigDict()
    c.max_length = 50              # total length including the prompt (HF's default 20 is short)
    c.max_new_tokens = ml_collections.FieldReference(None, field_type=int)  # overrides max_length
    c.min_new_tokens = 0           # EOS is suppressed until this many tokens were generated
    c.do_sample = False            # sample instead of greedy / beam search
    c.temperature = 1.0            # softmax temperature when sampling
    c.top_k = 50                   # keep the k most likely tokens when sampling (0 = off)
    c.top_p = 1.0                  # nucleus sampling mass (1.0 = off)
    c.num_beams = 1                # beam search width (1 = no beam search)
    c.length_penalty = 1.0         # beam score = logprob / length ** length_penalty
    c.early_stopping = False       # beam stopping rule: True | False | "never"
    c.num_return_sequences = 1     # sequences returned per prompt (<= num_beams for beams)
    c.no_repeat_ngram_size = 0     # forbid repeating any n-gram of this size (0 = off)
    c.repetition_penalty = 1.0     # CTRL-style penalty on tokens already present (1.0 = off)
    c.eos_token_id = 50256         # <|endoftext|>; generation of a row stops there
    c.pad_token_id = 50256         # fills finished rows (GPT-2 has no pad token; HF uses EOS)
    c.seed = 0                     # PRNG seed for sampling
    c.suppress_tokens = ()         # ids never generated (HF's); run.py adds a padded vocab's rows
    return c


def mesh_config() -> ml_collections.ConfigDict:
    """`config.mesh`: device mesh shape and the logical-axis -> mesh-axis rules.

    Parallelism is chosen by the sizes (the rules stay): data parallel `--config.mesh.data=-1`
    (default); FSDP `--config.mesh.data=1 --config.mesh.fsdp=-1`; FSDP x tensor parallel
    `--config.mesh.fsdp=-1 --config.mesh.tensor=4` (tensor must divide n_head); two slices
    `--config.mesh.dcn_data=2`. See README "Scale-out".
    """
    c = ml_collections.ConfigDict()
    c.data = -1                    # data-parallel size (-1 = all devices not used below)
    c.fsdp = 1                     # fully sharded data parallel size (params sharded on embed)
    c.tensor = 1                   # tensor-parallel size (heads / mlp / vocab sharded)
    # Multi-slice (several TPU slices or GPU nodes over the data-centre network, DCN): the
    # sizes above are then per slice (ICI) and these multiply them across slices; -1 = rest.
    c.dcn_data = 1                 # data-parallel size across slices (the usual choice)
    c.dcn_fsdp = 1                 # fsdp size across slices (params gathered over DCN: slow)
    c.dcn_tensor = 1               # tensor-parallel size across slices (rarely sensible)
    # logical axis -> mesh axes; None = replicated. Names match gpt2jax.nn.model.
    c.rules = (
        ("batch", ("data", "fsdp")),
        ("length", None),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),    # GQA key/value heads: n_kv_heads must divide by tensor
        ("head_dim", None),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("layers", None),          # the stacked axis of scan_layers params (never sharded)
    )
    return c


def data_config(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: where text comes from, how it is tokenized and packed (gpt2jax.data)."""
    c = ml_collections.ConfigDict()
    c.source = "text"              # text (UTF-8 files) | tfds (TensorFlow Datasets) | hf
    #                                (Hugging Face datasets) | shards (written by --mode=prepare)
    # -- source "text": a path or glob (** recursive); $VARS expand at run time. One file is
    # one document; a literal <|endoftext|> inside a file also ends a document.
    c.train_file = ""              # e.g. "train.txt" or "dataset:tinyshakespeare/input.txt"
    c.val_file = ""                # path or glob of validation text; "" = held-out fraction
    c.val_fraction = 0.1           # held out for val: text/tfds the last fraction of the train
    #                                characters (nanoGPT); hf a seeded fraction of the documents
    c.encoding_errors = "strict"   # non-UTF-8 bytes: strict (error) | replace (U+FFFD)
    # -- source "tfds": tfds.data_source (ArrayRecord, no TensorFlow) or tfds.load (TFRecord,
    # needs TensorFlow). A dataset prepared under data_dir is read without network.
    c.tfds_name = ""               # e.g. "tiny_shakespeare", "lm1b", "c4/en"
    c.tfds_split_train = "train"   # split or slice for training, e.g. "train[:90%]"
    c.tfds_split_val = "validation"  # split for validation; "" = val_fraction of train split
    c.tfds_feature = "text"        # name of the Text feature to read
    c.data_dir = ""                # TFDS data_dir, local or gs://; "" = ~/tensorflow_datasets
    c.tfds_download = False        # let TFDS download + prepare a missing dataset (network)
    # -- source "hf": datasets.load_dataset(hf_path, hf_name, data_files=, split=, streaming=)
    # (`pip install -e ".[hf]"`); offline, hub names come from HF's cache (HF_HUB_OFFLINE=1)
    c.hf_path = ""                 # hub name (HuggingFaceFW/fineweb-edu) | parquet | json | arrow
    c.hf_name = ""                 # dataset configuration, e.g. "sample-10BT"; "" = default
    c.hf_data_files = ""           # local files of parquet/json/arrow: a path or glob
    c.hf_split = "train"           # split read for training
    c.hf_val_split = ""            # named validation split; "" = val_fraction of the documents
    c.val_seed = 2357              # seed of the held-out documents (hf; nanoGPT's split seed)
    c.text_column = "text"         # the column holding each document's text
    c.streaming = True             # IterableDataset: no Arrow copy, memory independent of size
    # -- source "shards": folder written by `python run.py --mode=prepare` (meta.json + .bin)
    c.shards_dir = ""              # also the output folder of --mode=prepare
    c.tokens_per_shard = 100_000_000  # prepare: max tokens per .bin file (200 MB as uint16)
    c.verify_shards = True         # at open, check every shard's sha256 against meta.json
    #                                (reads them once: 20 GB for 10B tokens); sizes always
    c.num_threads = 0              # tokenizer threads for prepare / text sources; 0 = all cores
    # -- tokenizer (ignored for shards: their meta.json says which one)
    c.tokenizer = "gpt2"           # gpt2 (tiktoken BPE) | char (vocabulary from the corpus)
    c.tiktoken_ranks = ""          # gpt2.tiktoken path; "" = env, data dir, caches, download
    # -- packing into [batch, block_size + 1] windows
    c.mode = "random"              # random (nanoGPT windows, endless) | epochs (all windows)
    c.num_epochs = 0               # epochs mode: stop (StopIteration) after this many; 0 = never
    c.shuffle = True               # epochs mode: new window order every epoch (seeded)
    c.prefetch = 2                 # batches prepared ahead by a background thread; 0 = none
    c.update(overrides)
    return c


def train_config(**overrides) -> ml_collections.ConfigDict:
    """`config.train`: optimisation and the training loop (training.step / training.loop).

    Defaults are nanoGPT's GPT-2 124M OpenWebText recipe (train.py defaults).
    """
    c = ml_collections.ConfigDict()
    c.batch_size = 480             # sequences per optimizer step, all micro-batches (~0.5M tok)
    c.grad_accum_steps = 40        # micro-batches per step (lax.scan; one update per step)
    c.block_size = 1024            # tokens per training sequence (<= model.n_positions)
    c.num_steps = 600_000          # optimizer steps (nanoGPT max_iters); 0 = data epochs decide
    c.learning_rate = 6e-4         # peak learning rate
    c.min_learning_rate = 6e-5     # floor of the cosine decay (nanoGPT: lr / 10)
    c.warmup_steps = 2000          # linear warmup steps (nanoGPT: lr * (s+1) / (warmup+1))
    c.lr_decay_steps = 600_000     # cosine reaches min_learning_rate here; 0 = at num_steps
    c.schedule = "cosine"          # cosine | constant (after warmup)
    c.weight_decay = 0.1           # AdamW decoupled weight decay on matmul kernels
    c.decay_embeddings = False     # also decay wte/wpe (nanoGPT does; GPT-2 practice does not)
    c.beta1 = 0.9                  # AdamW beta1
    c.beta2 = 0.95                 # AdamW beta2
    c.eps = 1e-8                   # AdamW epsilon
    c.grad_clip = 1.0              # clip gradients to this global norm; 0 = no clipping
    c.loss_chunk_size = 0          # tokens whose logits exist at once (chunked loss, no [B,T,V]
    #                                logits; nn/loss.py); 0 = full logits
    c.log_every = 10               # steps between fetches of the train metrics from the device
    #                                (also at evals, saves, the end): one console line each;
    #                                metrics.jsonl still records every step
    c.eval_every = 1000            # steps between validation passes (and at the end); 0 = never
    c.eval_at_start = False        # also a validation pass before the first step (new runs)
    c.eval_batches = 200           # fixed val batches per pass (nanoGPT eval_iters), each of
    #                                batch_size sequences, run in grad_accum_steps chunks
    c.sample_tokens = 0            # tokens of text sampled at each eval; 0 = no sample
    c.sample_prompt = "\n"         # prompt of that sample
    c.peak_flops = 0.0             # per-device peak FLOP/s for MFU; 0 = measure a matmul at start
    c.export_hf = True             # at the end, write params to <workdir>/hf (HF safetensors)
    c.progress_bar = True          # tqdm progress bar with ETA on the console
    c.fit_to_data = False          # shrink block / batch / eval batches (and grow a held-out
    #                                val_fraction) to fit a small text; prints what it chose
    c.convert_kv_heads = 0         # with init_from: first convert the loaded model to this
    #                                many key/value heads (GQA/MQA from a multi-head model,
    #                                Ainslie et al. 2023; nn/kv_heads.py), then train it
    #                                ("uptraining"); 0 = keep the model's heads
    c.convert_kv_method = "mean"   # mean (mean-pool each group) | first (its first head) | random
    c.steps_per_call = 1           # optimizer steps per jitted call (a lax.scan; the same
    #                                updates, fewer dispatches); logs/evals/saves stay per step
    # lm-eval tasks run at each evaluation, logged as lm_eval/<task>/<metric> to TensorBoard
    # and metrics.jsonl (gpt2jax/eval/harness.py; needs `pip install -e ".[eval]"`)
    c.lm_eval = ml_collections.ConfigDict()
    c.lm_eval.tasks = ""           # comma-separated lm-eval task names; "" = none
    c.lm_eval.limit = 0            # documents per task (0 = all)
    c.lm_eval.batch_size = 8       # rows per forward pass
    c.lm_eval.include_path = str(Path(__file__).parent / "lm_eval_tasks")  # local task YAMLs
    c.lm_eval.data_dir = ""        # their data folder; "" = $GPT2JAX_DATA_DIR, cache, download
    c.update(overrides)
    return c


def checkpoint_config(**overrides) -> ml_collections.ConfigDict:
    """`config.checkpoint`: Orbax checkpoints in `<workdir>/checkpoints` (training.checkpoint)."""
    c = ml_collections.ConfigDict()
    c.save_every = 1000            # steps between (async) checkpoints; the last step always saves
    c.keep = 3                     # most recent checkpoints kept
    c.keep_best = 1                # plus this many with the lowest val loss (0 = none)
    c.async_save = True            # write in the background (device->host copy is synchronous)
    c.resume = True                # continue from the latest checkpoint in the workdir
    c.restore_step = 0             # resume from this step instead (newer checkpoints are moved
    #                                to <workdir>/checkpoints_set_aside/, never deleted); 0 = latest
    c.update(overrides)
    return c
