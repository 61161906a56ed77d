"""--mode=prepare at corpus scale against the tokenizer's own speed and nanoGPT's approach.

    GPT2JAX_DATA_DIR=../shared/data python bench/prepare.py [--mb 60] [--rss_scale 10]

The corpus: `--mb` MB of parquet (text column, 2,000-row groups, files of <= 64 MB like hub
shards), synthesised from the real text of the shared data folder (Tiny Shakespeare,
WikiText-2 valid/test, PTB valid/test, LAMBADA): each document is a run of 1-12 consecutive
paragraphs starting at a seeded random paragraph, so the words, lines and document lengths
are real text's (the text repeats: the shared folder holds ~7 MB).

Rates, one after the other in this process, on the same cores (tokens/s, wall clock):
1. tiktoken `encode_ordinary_batch(docs, num_threads=cores)` on the documents already in
   memory (the ceiling: no reading, no writing);
2. gpt2jax `prepare_shards` (source hf, parquet streamed, tokenized on all cores, shards
   written with sha256, committed) from the parquet files;
3. nanoGPT's `data/openwebtext/prepare.py` approach on the same files: `load_dataset`
   (Arrow conversion, fresh cache), `train_test_split(0.0005, seed=2357)`,
   `.map(encode_ordinary + EOT, num_proc=cores)`, then one `np.memmap` per split written in
   1,024 contiguous `shard(...).with_format("numpy")` batches (re-implemented from its steps;
   fewer batches when a split has fewer than 1,024 rows).
Token counts are checked equal between 1 and 2.

Memory (`--rss_scale K`): peak RSS of `prepare_shards` child processes on the corpus and on
one K times larger (the same documents repeated K times): the hf source streamed from the
parquet files, and the `text` source (the path that existed before: its files are read
into memory) on the same documents written as one text file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hardware  # noqa: E402
from configs import common  # noqa: E402
from gpt2jax.data import prepare  # noqa: E402
from gpt2jax.data.tokenizers import Gpt2Tokenizer  # noqa: E402

SOURCES = ["tinyshakespeare/input.txt", "wikitext-2/wiki.valid.tokens",
           "wikitext-2/wiki.test.tokens", "wikitext-2-raw/wiki.test.raw", "ptb/ptb.valid.txt",
           "ptb/ptb.test.txt", "lambada/lambada_test.jsonl"]
FILE_MB = 64


def paragraphs(data_dir: Path) -> list[str]:
    out = []
    for name in SOURCES:
        text = (data_dir / name).read_text(encoding="utf-8")
        sep = "\n" if name.endswith((".jsonl", ".txt")) and "shakespeare" not in name else "\n\n"
        out += [p for p in text.split(sep) if p.strip()]
    return out


def write_corpus(data_dir: Path, folder: Path, mb: float, repeat: int = 1,
                 seed: int = 0) -> tuple[list[str], int]:
    """Writes ~`mb` MB of documents (x `repeat`) as parquet files; returns (files, bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paras = paragraphs(data_dir)
    rng = np.random.default_rng(seed)
    docs, size = [], 0
    while size < mb * 1e6:
        start, k = int(rng.integers(0, len(paras) - 12)), int(rng.integers(1, 13))
        docs.append("\n\n".join(paras[start:start + k]))
        size += len(docs[-1].encode())
    folder.mkdir(parents=True, exist_ok=True)
    files, part, part_size = [], [], 0
    for doc in docs * repeat:
        part.append(doc)
        part_size += len(doc)
        if part_size >= FILE_MB * 1e6:
            files.append(_write(pq, pa, folder, len(files), part))
            part, part_size = [], 0
    if part:
        files.append(_write(pq, pa, folder, len(files), part))
    return files, size * repeat


def _write(pq, pa, folder: Path, i: int, docs: list[str]) -> str:
    path = folder / f"train-{i:05d}.parquet"
    pq.write_table(pa.table({"text": docs}), path, row_group_size=2000)
    return str(path)


def hf_config(files_glob: str, out: Path):
    return common.data_config(source="hf", hf_path="parquet", hf_data_files=files_glob,
                              shards_dir=str(out), val_fraction=0.0005, streaming=True)


def timed(fn, *args):
    """(fn(*args), wall seconds, CPU seconds of this process and its finished children)."""
    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    start, cpu0 = time.perf_counter(), cpu()
    out = fn(*args)
    return out, time.perf_counter() - start, cpu() - cpu0


def nanogpt_prepare(files: list[str], out: Path, cache: Path, num_proc: int) -> int:
    """nanoGPT's data/openwebtext/prepare.py steps on local parquet; returns tokens written."""
    from datasets import load_dataset

    enc = Gpt2Tokenizer().encoding  # tiktoken's gpt2 Encoding, from the local ranks (offline)
    dataset = load_dataset("parquet", data_files=files, cache_dir=str(cache))
    split = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = split.map(process, remove_columns=["text"], num_proc=num_proc)
    total = 0
    for name, dset in tokenized.items():
        arr_len = int(np.sum(dset["len"], dtype=np.uint64))
        arr = np.memmap(out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        idx, total_batches = 0, min(1024, len(dset))  # (a small val split has < 1024 rows)
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True)
            arr_batch = np.concatenate(batch.with_format("numpy")["ids"])
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        total += arr_len
    return total


def rates(data_dir: Path, tmp: Path, mb: float, reps: int) -> list[str]:
    import pyarrow.parquet as pq

    files, size = write_corpus(data_dir, tmp / "corpus", mb)
    docs = [d for f in files for d in pq.read_table(f).column("text").to_pylist()]
    cores = os.cpu_count() or 1
    tok = Gpt2Tokenizer()
    pattern = str(tmp / "corpus" / "*.parquet")
    # a process's first datasets.load_dataset imports its modules (and tries the hub's
    # telemetry): ~2.5 s once, paid here, outside every timing
    prepare.doc_source(hf_config(pattern, tmp / "warm"))
    raw, ours = [], []
    for rep in range(reps):  # interleaved, so that a change of machine load hits both
        ids, wall, cpu = timed(lambda: tok.encoding.encode_ordinary_batch(docs,
                                                                          num_threads=cores))
        raw_tokens = sum(len(x) for x in ids)
        del ids
        raw.append((wall, cpu))
        meta, wall, cpu = timed(prepare.prepare_shards, hf_config(pattern, tmp / f"s{rep}"),
                                None, False)
        ours.append((wall, cpu))
        assert meta["num_tokens"] - (meta["num_documents"] - 2) == raw_tokens  # EOTs aside
    (tmp / "nanogpt").mkdir()
    nano_tokens, t_nano, c_nano = timed(nanogpt_prepare, files, tmp / "nanogpt",
                                        tmp / "hf_cache", cores)
    n = meta["num_tokens"]
    t_raw, c_raw = min(raw)
    t_ours, c_ours = min(ours)
    rows = [
        f"corpus: {len(files)} parquet file(s), {size / 1e6:.1f} MB of text, {len(docs):,} "
        f"documents, {raw_tokens:,} tokens (+ EOTs); {cores} cores; load average before "
        f"{LOAD['before']:.2f}",
        "per repetition, wall s (tiktoken / gpt2jax): "
        + ", ".join(f"{a[0]:.1f} / {b[0]:.1f}" for a, b in zip(raw, ours)),
        "| what | wall s (best) | tokens/s | tokens per CPU-s | vs tiktoken | vs nanoGPT |",
        "|---|---:|---:|---:|---:|---:|",
        f"| tiktoken encode_ordinary_batch, in memory | {t_raw:.1f} | {raw_tokens / t_raw:,.0f} "
        f"| {raw_tokens / c_raw:,.0f} | 1.00 | |",
        f"| gpt2jax prepare (parquet -> committed shards) | {t_ours:.1f} | {n / t_ours:,.0f} | "
        f"{n / c_ours:,.0f} | {n / t_ours / (raw_tokens / t_raw):.2f} | "
        f"{n / t_ours / (nano_tokens / t_nano):.2f}x |",
        f"| nanoGPT prepare.py approach | {t_nano:.1f} | {nano_tokens / t_nano:,.0f} | "
        f"{nano_tokens / c_nano:,.0f} | {nano_tokens / t_nano / (raw_tokens / t_raw):.2f} "
        "| 1.00x |",
    ]
    return rows


_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from configs import common
from gpt2jax.data import prepare
source, files, out = sys.argv[2:5]
if source == "hf":
    cfg = common.data_config(source="hf", hf_path="parquet", hf_data_files=files,
                             shards_dir=out, val_fraction=0.01)
else:
    cfg = common.data_config(source="text", train_file=files, shards_dir=out, val_fraction=0.01)
start = time.perf_counter()
tokens = prepare.prepare_shards(cfg, progress=False)["num_tokens"]
# VmHWM: this process image's peak RSS (ru_maxrss would keep the forking parent's peak)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0].split()[1]
print(tokens, time.perf_counter() - start, int(hwm) / 1024)
"""


def _as_text(folder: Path) -> Path:
    """The documents of folder/*.parquet as one text file, `<|endoftext|>` between them (the
    input of the `text` source, which reads its files into memory)."""
    import pyarrow.parquet as pq

    path = folder / "corpus.txt"
    with open(path, "w", encoding="utf-8") as f:
        for i, part in enumerate(sorted(folder.glob("*.parquet"))):
            docs = pq.read_table(part).column("text").to_pylist()
            f.write(("<|endoftext|>" if i else "") + "<|endoftext|>".join(docs))
    return path


def peak_rss(data_dir: Path, tmp: Path, mb: float, scale: int) -> list[str]:
    """Peak RSS of prepare child processes: the streamed hf source and the in-memory text
    source, each on the corpus and on `scale` times it."""
    rows = ["| source | corpus | tokens | seconds | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for k in (1, scale):
        folder = tmp / f"rss_{k}"
        write_corpus(data_dir, folder, mb, repeat=k)
        text = _as_text(folder)
        for source, files in (("hf (parquet, streamed)", str(folder / "*.parquet")),
                              ("text (read into memory)", str(text))):
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).parents[1]),
                                   source.split()[0], files, str(tmp / f"out_{k}_{source[:2]}")],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-2000:]
            tokens, seconds, rss = proc.stdout.split()
            rows.append(f"| {source} | {mb * k:.0f} MB of text | {int(tokens):,} | "
                        f"{float(seconds):.1f} | {float(rss):,.0f} |")
        shutil.rmtree(folder)
    return rows


LOAD = {"before": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=60.0, help="corpus size, MB of text")
    parser.add_argument("--rss_scale", type=int, default=10, help="0 = skip the memory part")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of the rates part")
    parser.add_argument("--skip_rates", action="store_true")
    args = parser.parse_args()
    print(hardware.describe(), flush=True)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    data_dir = Path(os.environ.setdefault("GPT2JAX_DATA_DIR", str(default)))
    LOAD["before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_rates:
            print("\n".join(rates(data_dir, tmp, args.mb, args.reps)), flush=True)
        if args.rss_scale:
            print("\n".join(peak_rss(data_dir, tmp, args.mb, args.rss_scale)), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}; this process's peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
