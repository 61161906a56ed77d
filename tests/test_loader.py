"""One model loader for every mode (`gpt2jax.weights.loader`) and one tokenizer protocol
(`gpt2jax.data.tokenizers.Tokenizer`): a training workdir brings its own tokenizer (a char
model evaluates with its characters), a damaged workdir checkpoint is one clear error."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from configs import eval as eval_configs
from configs import gpt2 as gpt2_configs
from gpt2jax.cli import CliArgs
from gpt2jax.cli import eval as eval_cli
from gpt2jax.cli import generate as generate_cli
from gpt2jax.data.tokenizers import CharTokenizer, Gpt2Tokenizer, save_tokenizer
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.eval import harness
from gpt2jax.eval.perplexity import perplexity
from gpt2jax.nn.model import GPT2Config, init_params
from gpt2jax.training import checkpoint
from gpt2jax.weights import loader
from gpt2jax.weights.pretrained import save_pretrained
from test_corrupt_checkpoint import _digest, _flip_bytes_of_largest_array_file

N_CHARS = 2000


def _save_run(workdir, cfg: GPT2Config, params, tokenizer_meta: dict, steps=(1,)) -> None:
    """A training workdir as the loop writes it: Orbax checkpoints whose meta holds the model
    config and the tokenizer (no optimizer state is needed for inference)."""
    ckpt = checkpoint.Checkpointer(workdir, keep=len(steps), keep_best=0, async_save=False)
    meta = {"model": cfg.to_dict(), "tokenizer": tokenizer_meta}
    for step in steps:
        ckpt.save(step, {"params": params}, {}, meta)
    ckpt.close()


@pytest.fixture(scope="module")
def char_run(data_dir, tmp_path_factory):
    """(workdir, text file, cfg, params, chars) of a tiny char-level model of Tiny Shakespeare."""
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:N_CHARS]
    chars = sorted(set(text))
    root = tmp_path_factory.mktemp("char_run")
    (root / "test.txt").write_text(text, encoding="utf-8")
    cfg = GPT2Config(vocab_size=len(chars), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                     attention_impl="xla")
    params = init_params(cfg, jax.random.key(0))
    _save_run(root / "run", cfg, params, {"name": "char", "vocab_size": len(chars),
                                          "eot_id": None, "chars": "".join(chars)})
    return root / "run", root / "test.txt", cfg, params, chars


def _eval_config(init_from, text_file):
    """`configs/eval.py:text8` (characters, bits per byte) on `text_file`, one device."""
    config = eval_configs.get_config("text8")
    config.init_from = str(init_from)
    config.eval.files.raw = str(text_file)
    config.mesh.data = 1
    config.eval.update(context_length=128, stride=64, batch_size=4, progress=False)
    return config


def test_eval_of_a_char_workdir_uses_its_char_tokenizer(char_run):
    workdir, text_file, cfg, params, chars = char_run
    rows = eval_cli.evaluate_config(_eval_config(workdir, text_file))
    got = {r["metric"]: r for r in rows}
    text = text_file.read_text(encoding="utf-8")
    ids = np.array([chars.index(c) for c in text])  # one id per character
    ref = perplexity(cfg, params, ids, 128, 64, 4, byte_count=len(text.encode()))
    assert got["ppl"]["tokens"] == ref.token_count == N_CHARS - 1  # stride < context
    assert got["ppl"]["value"] == pytest.approx(ref.perplexity, rel=1e-6)
    assert got["bits_per_byte"]["value"] == pytest.approx(ref.bits_per_byte, rel=1e-6)


def test_damaged_workdir_checkpoint_is_one_clear_error_and_left_as_is(char_run, tmp_path):
    _, text_file, cfg, params, chars = char_run
    work = tmp_path / "run"
    _save_run(work, cfg, params, {"name": "char", "chars": "".join(chars)}, steps=(1, 2))
    _flip_bytes_of_largest_array_file(work / "checkpoints" / "2")
    damaged = _digest(work / "checkpoints" / "2")
    with pytest.raises(checkpoint.CheckpointUnreadableError) as info:
        eval_cli.evaluate_config(_eval_config(work, text_file))
    message = str(info.value)
    assert isinstance(info.value, GPT2JaxError) and "\n" not in message, message
    assert str(work / "checkpoints" / "2") in message and "step 1" in message, message
    assert _digest(work / "checkpoints" / "2") == damaged


def test_generate_from_a_char_workdir_streams_characters(char_run, capsys):
    workdir, _, cfg, _, chars = char_run
    config = gpt2_configs.get_config("small")
    config.init_from = str(workdir)
    config.generate.update(max_new_tokens=12)
    streamed = generate_cli.main(config, CliArgs(prompt="First"))  # one prompt: streamed
    printed = capsys.readouterr().out
    completion = streamed[0]["completions"][0]
    assert printed.startswith("First" + completion)
    assert len(completion) == 12 and set(completion) <= set(chars)  # one token per character
    assert streamed[0]["tokens"][0][:5] == [chars.index(c) for c in "First"]


def test_loader_sources_and_the_one_override_list(char_run, tmp_path):
    workdir, _, cfg, params, chars = char_run
    got_cfg, got_params, tok = loader.load_model(workdir, dtype="bfloat16")
    assert isinstance(tok, CharTokenizer) and tok.chars == chars
    assert got_cfg == dataclasses.replace(cfg, dtype="bfloat16")
    np.testing.assert_array_equal(got_params["wte"]["embedding"], params["wte"]["embedding"])
    # an HF export of a char run keeps its tokenizer beside the weights (training's export_hf)
    save_pretrained(cfg, params, tmp_path / "hf")
    _, _, tok = loader.load_model(tmp_path / "hf")
    assert isinstance(tok, Gpt2Tokenizer)  # none saved: GPT-2 BPE
    save_tokenizer(CharTokenizer(chars), tmp_path / "hf" / loader.EXPORT_TOKENIZER)
    _, _, tok = loader.load_model(tmp_path / "hf")
    assert isinstance(tok, CharTokenizer) and tok.chars == chars
    # shapes are the saved ones: only LOAD_OVERRIDES may change, for every source
    for source in (workdir, tmp_path / "hf"):
        with pytest.raises(ConfigError, match="keeps its saved \\['n_layer'\\]"):
            loader.load_model(source, n_layer=3)
    model = gpt2_configs.get_config("small").model
    assert set(loader.overrides_from(model)) == checkpoint.LOAD_OVERRIDES & set(model)
    assert {"dtype", "attention_impl"} <= set(loader.overrides_from(model))


def test_lm_eval_backend_refuses_a_char_workdir_by_its_tokenizer(char_run):
    workdir = char_run[0]
    with pytest.raises(ConfigError, match="trained with the 'char' tokenizer"):
        harness.GPT2JaxLM(pretrained=str(workdir), progress=False)


def test_a_longer_context_than_learned_positions_hold_is_one_line(char_run, tmp_path):
    # load_params_for_inference(workdir, n_positions=256) dumped ~100 lines of Orbax /
    # TensorStore spec ("Requested shape: (256, 32) is not compatible with the stored shape").
    workdir, _, cfg, params, _ = char_run
    save_pretrained(cfg, params, tmp_path / "hf")
    for load in (lambda: checkpoint.load_params_for_inference(workdir, n_positions=256),
                 lambda: loader.load_model(workdir, n_positions=256),
                 lambda: loader.load_model(tmp_path / "hf", n_positions=256)):
        with pytest.raises(ConfigError, match="learned positions") as info:
            load()
        message = str(info.value)
        assert "\n" not in message and "position=rope|alibi|none|sinusoidal" in message
    assert loader.load_model(workdir, n_positions=128)[0] == cfg  # its own context: fine
    rope = dataclasses.replace(cfg, position="rope")
    _save_run(tmp_path / "rope", rope, init_params(rope, jax.random.key(0)), {"name": "gpt2"})
    assert loader.load_model(tmp_path / "rope", n_positions=256)[0].n_positions == 256


def test_an_explicit_model_override_a_loaded_model_fixes_is_refused(char_run):
    # `--config.model.n_positions=256 --config.init_from=WORKDIR` was silently ignored.
    workdir = char_run[0]
    config = gpt2_configs.get_config("small")
    config.init_from = str(workdir)
    config.model.n_layer = 5
    loader.model_for_config(config)  # not set on the command line: the saved model wins
    with pytest.raises(ConfigError, match="n_layer=5 cannot take effect.*has n_layer=1"):
        loader.model_for_config(config, explicit=("model.n_layer",))
    config.model.n_layer, config.model.dtype = 1, "bfloat16"  # equal, or a load override
    cfg = loader.model_for_config(config, explicit=("model.n_layer", "model.dtype"))[0]
    assert cfg.dtype == "bfloat16"


def test_training_from_a_run_workdir_keeps_its_tokenizer(char_run, tmp_path):
    # Training's init_from read HF layouts only ("No GPT-2 weights in 'sc'"); generate and
    # eval loaded workdirs. Now one loader: and the data must use the model's vocabulary.
    from configs import shakespeare_char
    from gpt2jax.training.loop import train_and_evaluate

    workdir, text_file, cfg, params, _ = char_run
    config = shakespeare_char.get_config("cpu")
    config.init_from = str(workdir)
    config.data.update(train_file=str(text_file), tokenizer="gpt2")
    config.train.update(num_steps=2, block_size=32, batch_size=8, eval_every=0,
                        sample_tokens=0, export_hf=False, progress_bar=False, steps_per_call=1)
    config.checkpoint.update(save_every=0, keep_best=0, async_save=False)
    with pytest.raises(ConfigError, match="trained with the 'char' tokenizer of 49 tokens"):
        train_and_evaluate(config, tmp_path / "bpe")
    config.data.tokenizer = "char"
    result = train_and_evaluate(config, tmp_path / "char")
    assert result["step"] == 2
    trained = checkpoint.load_params_for_inference(tmp_path / "char")
    assert trained[0] == dataclasses.replace(cfg, embd_pdrop=0.0, attn_pdrop=0.0,
                                             resid_pdrop=0.0, attention_impl="einsum")
