"""Checksummed, atomic, retried HTTP downloads (and zip members) into the data cache.

Every byte goes to a temporary file beside the destination; only a file whose sha256
matches the pinned value is renamed into place, so the cache never holds a half or a wrong
file. A dropped connection (including a body shorter than its Content-Length, which
`http.client` reports as a quiet end of data) is retried from the start.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

from tqdm import tqdm

from gpt2jax.errors import DataError

CHUNK = 1 << 20
USER_AGENT = "gpt2jax-data/0.1 (python urllib)"
# Errors after which another try may succeed (a dropped or refused connection, a timeout).
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
              socket.timeout, TimeoutError)


class DownloadError(DataError):
    """A download that failed, or whose bytes are not the pinned ones."""


class _ShortBody(ConnectionError):
    """The server closed the connection before sending Content-Length bytes."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (hashlib reads it in chunks, releasing the GIL)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _temp_beside(dest: Path) -> Path:
    # Unique per attempt and process, so concurrent downloaders never share a file.
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")


def _stream(url: str, tmp: Path, desc: str, timeout: float) -> str:
    """Writes the body of `url` to `tmp`; returns its sha256. Raises on a short body."""
    # `download` admits http(s) URLs only (S310)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310
    digest = hashlib.sha256()
    with (urllib.request.urlopen(request, timeout=timeout) as resp,  # noqa: S310
          open(tmp, "wb") as out):
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
            for block in iter(lambda: resp.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                bar.update(len(block))
    if total is not None and done != total:
        raise _ShortBody(f"connection closed after {done:,} of {total:,} bytes")
    return digest.hexdigest()


def _permanent(error: Exception) -> bool:
    """HTTP 4xx (but timeouts / rate limits) will not change on a retry."""
    return (isinstance(error, urllib.error.HTTPError) and 400 <= error.code < 500
            and error.code not in (408, 429))


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    return f"{type(error).__name__}: {reason}"


def download(url: str, dest: str | os.PathLike, sha256: str | None, *, what: str,
             hint: str, attempts: int = 3, backoff_s: float = 1.0,
             timeout_s: float = 60.0) -> Path:
    """Downloads `url` to `dest` atomically, checking the sha256; returns `dest`.

    Args:
      url: http(s) URL.
      dest: final path; its folder is created. Nothing is left there unless the check passed.
      sha256: the pinned hex digest; None accepts any bytes (the caller decided that).
      what: the file's name for messages and the progress bar.
      hint: how to avoid the download (appended to the offline error).
      attempts: tries on a dropped / refused connection or a 5xx answer.
      backoff_s: wait before the 2nd try, doubled before each further one.
      timeout_s: socket timeout per read.
    Raises:
      DownloadError: one line naming the file, the URL and the way around it.
    """
    if not url.startswith(("http://", "https://")):  # no file:, ftp: or custom schemes
        raise DownloadError(f"Cannot download {what} from {url!r}: only http(s) URLs are "
                            "fetched; check GPT2JAX_DOWNLOAD_BASE_URL (or copy the file into "
                            "the data folder).")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        tmp = _temp_beside(dest)
        try:
            digest = _stream(url, tmp, what, timeout_s)
        except _TRANSIENT as e:
            tmp.unlink(missing_ok=True)
            error = e
            if _permanent(e):
                break
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)   # Ctrl-C or a full disk: still no half file
            raise
        if sha256 is not None and digest != sha256:
            tmp.unlink(missing_ok=True)
            raise DownloadError(
                f"{what} downloaded from {url} has sha256 {digest}, not the pinned {sha256}; "
                "nothing was cached (a corrupted transfer or a changed file). " + hint)
        os.replace(tmp, dest)
        return dest
    tries = "1 try" if attempts == 1 else f"{attempts} tries"
    raise DownloadError(f"Could not download {what} from {url} ({_reason(error)}, {tries}; "
                        f"offline?). {hint}")


def extract_members(archive: str | os.PathLike, members: dict[str, tuple[str, str | None]],
                    dest_dir: str | os.PathLike, what: str) -> None:
    """Extracts zip members atomically, checking each pinned sha256.

    Args:
      archive: the zip file.
      members: layout name -> (path inside the zip, sha256 of the member or None).
      dest_dir: folder that receives each member at its layout name.
      what: the archive's name for messages.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            for name, (member, sha256) in members.items():
                dest = Path(dest_dir) / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = _temp_beside(dest)
                try:
                    with zf.open(member) as src, open(tmp, "wb") as out:
                        for block in iter(lambda: src.read(CHUNK), b""):
                            out.write(block)
                    digest = sha256_of(tmp)
                    if sha256 is not None and digest != sha256:
                        raise DownloadError(
                            f"{member} in {what} has sha256 {digest}, not the pinned {sha256}; "
                            "nothing was cached.")
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
    except KeyError as e:
        raise DownloadError(f"{what} does not contain {e.args[0]}; nothing more was "
                            "extracted (a different archive than expected?).") from None
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{what} is not a valid zip file ({e}).") from None
