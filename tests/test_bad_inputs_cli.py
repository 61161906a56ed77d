"""The catalogue of bad inputs through the CLI, `run.py` (the API's: test_bad_inputs_api.py).

Each case builds its inputs in a fresh directory (the case's workdir), then runs `run.py` with
the bad input. It passes when the exit status is non-zero, the output holds exactly one line
(no traceback) and that line names the problem and the fix (the `expect` fragments,
case-insensitive), and the workdir tree (names, sizes, bytes) is identical before and after.

Cases run through `app.run(run.main, flags_parser=parse_flags)`, which is exactly what
`python run.py` executes, in children of the session's zygote (tests/zygote.py: forked before
JAX is imported, with the JAX-free imports already paid: a fresh `python run.py` costs about
twice the CPU per case on the 2-core CI machine); the first case is additionally run as a real
`python run.py` subprocess to show that both paths agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import jax
import pytest
from safetensors.numpy import load_file, save_file

from catalogue import (OTHER_MODEL, SHARD_DAMAGE, Case, case_dir, char_vocabulary, check_ids,
                       fake_checkpoint, prepared_shards, tree_change, tree_hash, tree_paths,
                       truncate)
from gpt2jax.nn.model import init_params
from gpt2jax.training.checkpoint import Checkpointer
from helpers import (REPO, damage_largest_array_file, malicious_pickle, run_cli, save_tiny,
                     tiny_config)

CLI_TIMEOUT_S = 120

# A tiny model from configs/gpt2.py (keeps every case cheap).
TINY = ("--config=configs/gpt2.py:small", "--config.model.n_layer=1", "--config.model.n_embd=8",
        "--config.model.n_head=2")
TRAIN = ("--mode=train", "--config=configs/shakespeare_char.py:cpu", "--workdir={work}/run")
PREPARE = ("--mode=prepare", "--config=configs/prepare_shakespeare.py:char")
SHARDS = ("--config.data.shards_dir={work}/shards", "--workdir={work}")
GENERATE = ("--mode=generate", "--config=configs/gpt2.py:small")
EVAL_FILE = ("--mode=eval", "--config=configs/eval.py:file")  # fails before a model loads
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def argv(*args: str, setup: Callable[[Path], None] | None = None):
    """make(work): `setup(work)`, then `args` with {work} replaced by the case directory."""
    def make(work):
        if setup is not None:
            setup(work)
        return [a.format(work=work) for a in args]
    return make


def write(name: str, content: str | bytes):
    def setup(work):
        if isinstance(content, bytes):
            (work / name).write_bytes(content)
        else:
            (work / name).write_text(content)
    return setup


def damaged_shards(damage: Callable[[Path], None]):
    """setup(work): char shards prepared in work/shards, then `damage(folder)`."""
    return lambda work: damage(prepared_shards(work))


# Training from the shards folder of a damaged_shards setup (char vocabulary <= 65).
TRAIN_SHARDS = (*TRAIN, "--config.data.source=shards", "--config.data.shards_dir={work}/shards",
                "--config.train.batch_size=8", "--config.train.num_steps=2")
# The catalogue's shard damage that the CLI also shows (the API runs all of it).
CLI_SHARD_CASES = ("shards-meta-empty", "shards-meta-missing-key", "shards-shard-odd-size",
                   "shards-ids-outside-vocab", "shards-old-meta-new-shards")
def shakespeare_checkpoint_of_other_text(work):
    """A checkpoint of configs/shakespeare_char.py:cpu's model whose run read Tiny Shakespeare
    with curly apostrophes and commas: 65 characters, two of them others."""
    text = (REPO / "gpt2jax" / "data" / "assets" / "tinyshakespeare" / "input.txt").read_text()
    fake_checkpoint(work / "run", char_vocabulary(text, straight_to_curly=True),
                    vocab_size=65, n_positions=64, n_layer=4, n_head=4, n_embd=128)


def prompt_file(data: bytes):
    return write("p.txt", data)


def model_with(config_json: str | None = None, nan: bool = False):
    """setup(work): a tiny HF model in work/model, its config.json replaced / a NaN put in."""
    def setup(work):
        model = save_tiny(work / "model")
        if config_json is not None:
            (model / "config.json").write_text(config_json)
        if nan:
            state = load_file(str(model / "model.safetensors"))
            state["transformer.wte.weight"][0, 0] = float("nan")
            save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    return setup


def damaged_newest_checkpoint(work):
    """A workdir with checkpoints 1 and 2 of a 4-layer, 128-wide char model (many arrays, as
    configs/shakespeare_char.py:cpu), the newest one damaged."""
    cfg = tiny_config(vocab_size=65, n_positions=64, n_layer=4, n_head=4, n_embd=128)
    ck = Checkpointer(work / "run", keep=2, keep_best=0, async_save=False)
    for step in (1, 2):
        ck.save(step, {"params": init_params(cfg, jax.random.PRNGKey(step))}, {"position": 0},
                {"model": cfg.to_dict(), "tokenizer": char_vocabulary(SHAKESPEARE_CHARS)})
    ck.close()
    damage_largest_array_file(work / "run" / "checkpoints" / "2")


def pickle_model(work):
    (work / "model").mkdir()
    malicious_pickle(work / "model" / "pytorch_model.bin", work / "pwned")


CASES = [
    Case("config-unknown-key-cli", "--config.model.n_layr=2",
         argv(*TINY, "--config.model.n_layr=2", "--workdir={work}"),
         ("unknown config key", "did you mean 'model.n_layer'")),
    Case("config-unknown-section-cli", "--config.modle.n_layer=2",
         argv(*TINY, "--config.modle.n_layer=2", "--workdir={work}"),
         ("unknown config key", "did you mean 'model'")),
    Case("config-wrong-int-cli", "--config.model.n_layer=two",
         argv("--config=configs/gpt2.py:small", "--config.model.n_layer=two", "--workdir={work}"),
         ("not a valid int", "--config.model.n_layer=")),
    Case("config-wrong-bool-cli", "--config.generate.do_sample=maybe",
         argv(*TINY, "--config.generate.do_sample=maybe", "--workdir={work}"),
         ("not a valid bool", "do_sample=true")),
    Case("config-section-as-value-cli", "--config.model=3",
         argv(*TINY, "--config.model=3", "--workdir={work}"),
         ("is a section", "override one of its keys")),
    Case("config-wrong-tuple-cli", "--config.mesh.rules=3 (rules are (name, axes) pairs)",
         argv(*TRAIN, "--config.mesh.rules=3"),
         ("--config.mesh.rules", "not a valid tuple", "('batch', ('data', 'fsdp'))")),
    Case("config-file-missing-cli", "--config=configs/nope.py",
         argv("--config=configs/nope.py", "--workdir={work}"),
         ("does not exist", "--config=configs/gpt2.py:small")),
    Case("config-file-bad-arg-cli", "--config=configs/gpt2.py:smal",
         argv("--config=configs/gpt2.py:smal", "--workdir={work}"),
         ("unknown gpt-2 size", "choose one of")),
    Case("unknown-flag-cli", "--bogus=1", argv(*TINY, "--bogus=1", "--workdir={work}"),
         ("unknown command line flag", "--helpshort")),
    Case("impossible-shape-cli", "--config.model.n_head=5 with n_embd=128",
         argv(*TRAIN, "--config.model.n_head=5"), ("not divisible by n_head", "choose n_embd")),
    Case("data-missing-cli", "prepare from a missing text file",
         argv(*PREPARE, "--config.data.train_file={work}/missing.txt", *SHARDS),
         ("does not exist", "config.data.train_file")),
    Case("data-binary-cli", "prepare from a binary file",
         argv(*PREPARE, "--config.data.train_file={work}/blob.bin", *SHARDS,
              setup=write("blob.bin", bytes(range(256)) * 4)),
         ("not valid utf-8", "encoding_errors")),
    Case("data-empty-cli", "prepare from an empty file",
         argv(*PREPARE, "--config.data.train_file={work}/empty.txt", *SHARDS,
              setup=write("empty.txt", "   \n")), ("is empty", "contains text")),
    Case("eval-file-missing-cli", "--mode=eval on a --config.eval.file that does not exist",
         argv(*EVAL_FILE, "--config.eval.file={work}/nope.txt"),
         ("does not exist", "give an existing file")),
    Case("eval-file-empty-cli", "--mode=eval on an empty --config.eval.file",
         argv(*EVAL_FILE, "--config.eval.file={work}/empty.txt", setup=write("empty.txt", " \n")),
         ("is empty", "contains text")),
    Case("eval-file-not-utf8-cli", "--mode=eval on a Latin-1 --config.eval.file",
         argv(*EVAL_FILE, "--config.eval.file={work}/latin1.txt",
              setup=write("latin1.txt", "café au lait\n".encode("latin-1"))),
         ("not utf-8", "iconv")),
    *[Case(f"{case_id}-cli", what, argv(*TRAIN_SHARDS, setup=damaged_shards(damage)), expect)
      for case_id, what, damage, expect in SHARD_DAMAGE if case_id in CLI_SHARD_CASES],
    Case("mesh-device-mismatch-cli", "--config.mesh.data=3 on 8 devices",
         argv(*TRAIN, "--config.mesh.data=3"), ("8 are available", "product is 8")),
    Case("train-batch-not-divisible-cli", "--config.train.batch_size=12 on 8 devices",
         argv(*TRAIN, "--config.train.num_steps=2"),
         ("not divisible by the data-parallel size 8", "multiple of 8")),
    Case("workdir-other-model-cli", "--workdir holding another model's checkpoint",
         argv(*TRAIN, "--config.mesh.data=-1",
              setup=lambda work: fake_checkpoint(work / "run", **OTHER_MODEL)),
         ("different model", "new --workdir")),
    Case("workdir-other-vocabulary-cli", "resume on Tiny Shakespeare with its apostrophes "
         "and commas now curly in the saved run",
         argv(*TRAIN, "--config.mesh.data=-1", setup=shakespeare_checkpoint_of_other_text),
         ("another vocabulary", "only in the data", "tokenizer.json", "new --workdir")),
    Case("workdir-under-a-file-cli", "--workdir below a regular file",
         argv("--mode=train", "--config=configs/shakespeare_char.py:cpu",
              "--workdir={work}/afile/run", setup=write("afile", "x")),
         ("workdir", "not a directory")),
    Case("pickle-without-permission-cli", "--config.init_from=DIR with pytorch_model.bin",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi", setup=pickle_model),
         ("pickle", "safetensors")),
    Case("safetensors-truncated-cli", "--config.init_from=DIR with a truncated file",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi",
              setup=lambda work: truncate(save_tiny(work / "model"), 100)),
         ("not a readable safetensors", "again")),
    Case("init-from-fixed-override-cli", "--config.model.n_layer=5 on a loaded 1-layer model",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi",
              "--config.model.n_layer=5", setup=lambda work: save_tiny(work / "model")),
         ("n_layer=5 cannot take effect", "has n_layer=1", "drop the override")),
    Case("learned-positions-longer-context-cli", "--config.model.n_positions=64 on learned wpe",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi",
              "--config.model.n_positions=64", setup=lambda work: save_tiny(work / "model")),
         ("learned positions", "n_positions=64", "position=rope|alibi|none|sinusoidal")),
    Case("finetune-text-too-small-cli", "configs/finetune.py on a 12-token train.txt",
         argv("--mode=train", "--config=configs/finetune.py", "--workdir={work}/ft",
              "--config.init_from={work}/model", "--config.data.train_file={work}/train.txt",
              "--config.data.tokenizer=gpt2",
              setup=lambda work: (save_tiny(work / "model", vocab_size=50257, n_positions=64),
                                  write("train.txt", "To be, or not to be: that is it.")(work))),
         ("too small", "add text")),
    Case("prompt-file-latin1-cli", "--prompt_file in Latin-1 ('caf\\xe9')",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt_file={work}/p.txt",
              setup=prompt_file("café\n".encode("latin-1"))),
         ("--prompt_file", "not utf-8 text", "iconv -f latin1 -t utf-8")),
    Case("prompt-file-utf16-cli", "--prompt_file in UTF-16 (with its byte-order mark)",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt_file={work}/p.txt",
              setup=prompt_file("hello\n".encode("utf-16"))),
         ("--prompt_file", "utf-16 text, not utf-8", "iconv -f utf-16 -t utf-8")),
    Case("prompt-file-folder-cli", "--prompt_file is a folder",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt_file={work}"),
         ("--prompt_file", "is a folder", "one prompt per line")),
    Case("output-json-folder-cli", "--output_json is an existing folder (checked first)",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt=hi", "--output_json={work}"),
         ("--output_json", "is a folder", "results.json")),
    Case("output-json-unwritable-cli", "--output_json in a folder that cannot be made",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt=hi",
              "--output_json={work}/afile/out.json", setup=write("afile", "x")),
         ("--output_json", "cannot be written", "not a directory", "writable folder")),
    Case("data-file-is-a-folder-cli", "--config.data.train_file is a folder",
         argv(*TRAIN, "--config.data.train_file={work}"), ("is a folder", "glob")),
    Case("weights-config-json-array-cli", "--config.init_from=DIR whose config.json is [1, 2]",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi",
              setup=model_with(config_json="[1, 2]")), ("config.json", "json array")),
    Case("weights-nan-cli", "--config.init_from=DIR whose wte holds a NaN",
         argv(*GENERATE, "--config.init_from={work}/model", "--prompt=hi",
              setup=model_with(nan=True)), ("non-finite", "wte.weight", "re-download")),
    Case("checkpoint-damaged-generate-cli", "--config.init_from=WORKDIR, newest checkpoint "
         "damaged (no Orbax echo after the line)",
         argv(*GENERATE, "--config.init_from={work}/run", "--prompt=ROMEO",
              setup=damaged_newest_checkpoint), ("checkpoints/2 cannot be read", "step 1")),
    Case("prompt-file-missing-cli", "--prompt_file that does not exist",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt_file={work}/nope.txt"),
         ("does not exist", "one prompt per line")),
    Case("prompt-and-file-cli", "both --prompt and --prompt_file",
         argv(*GENERATE, "--config.model.n_layer=1", "--prompt=hi", "--prompt_file={work}/p.txt",
              setup=write("p.txt", "hello\n")), ("exactly one of",)),
    Case("generate-bad-top-p-cli", "--config.generate.top_p=1.5 with do_sample",
         argv(*TINY, "--mode=generate", "--prompt=hi", "--config.generate.do_sample=true",
              "--config.generate.top_p=1.5"), ("top_p=1.5", "(0, 1]")),
]

def run_cases(zygote, argvs: list[list[str]], logs: list[Path]) -> list[tuple[int, str]]:
    """Runs each argv through run.py's entry point in a child of the zygote: [(exit code,
    output)]."""
    codes = [zygote.run("zygote:run_py", log=log, argv=["run.py", *a], timeout=CLI_TIMEOUT_S)
             ["exit"] for a, log in zip(argvs, logs)]
    return [(code, log.read_text(errors="replace")) for code, log in zip(codes, logs)]


def _user_lines(output: str) -> list[str]:
    """Output lines without absl/jax log lines (`I1128 ...`, `W1128 ...`) or blank lines."""
    log_line = re.compile(r"^[IWEF]\d{4} ")
    return [ln for ln in output.splitlines() if ln.strip() and not log_line.match(ln)]


@pytest.fixture(scope="module")
def cli_results(zygote, tmp_path_factory):
    """Builds every case and runs them all, one zygote child each: id -> (code, output,
    workdir hash before, after, argv, what changed)."""
    root = tmp_path_factory.mktemp("cli_cases")
    argvs, logs, works, before, paths = [], [], [], [], []
    for c in CASES:
        work = case_dir(root / c.id)
        argvs.append(c.make(work))
        logs.append(root / f"{c.id}.log")
        works.append(work)
        before.append(tree_hash(work))
        paths.append(tree_paths(work))
    outs = run_cases(zygote, argvs, logs)
    results = {}
    for c, (code, out), b, w, a, p in zip(CASES, outs, before, works, argvs, paths):
        after = tree_hash(w)
        results[c.id] = (code, out, b, after, a, tree_change(w, p) if after != b else "")
    return results


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_cli_case(c: Case, cli_results, record_property):
    code, output, before, after, _, change = cli_results[c.id]
    record_property("what", c.what)
    lines = _user_lines(output)
    record_property("message", " | ".join(lines)[:300])
    if change:
        record_property("workdir_change", change)
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    for fragment in c.expect:
        assert fragment in lines[0].lower(), (fragment, output)
    assert after == before, f"the workdir changed: {change}"


def test_real_subprocess_agrees_with_zygote(cli_results):
    """`python run.py ...` prints the same line and exits the same as the zygote's child."""
    c = CASES[0]
    code, output, _, _, argv, _ = cli_results[c.id]
    proc = run_cli(argv, timeout=CLI_TIMEOUT_S, check=False)
    assert proc.returncode == code == 2
    assert _user_lines(proc.stderr + proc.stdout) == _user_lines(output)


def test_cli_catalogue_is_large_enough():
    """With test_bad_inputs_api's: >= 30 cases on two surfaces, ids unique across both."""
    assert len(CASES) >= 10, len(CASES)
    check_ids(CASES, cli=True)
