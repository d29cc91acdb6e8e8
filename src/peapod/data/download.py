"""Fetch the public P5 sequence files (beauty, sports, toys, yelp) from pinned GitHub commits.

Every file is checked against its size and sha256 before it appears under its final name: all files of a
dataset are downloaded to temporary files first, then renamed into place, so a failed or corrupt
download leaves nothing behind. Sources are those of the "Download sources" table of the staged data's
PROVENANCE.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from peapod.io import default_mode

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download that failed or did not match its pinned checksum."""


@dataclass(frozen=True)
class Source:
    """One pinned file: served at `{base_url}/{repo}/{commit}/{path}`, saved as `file`."""

    dataset: str
    file: str
    repo: str  # OWNER/REPO
    commit: str
    path: str
    size: int
    sha256: str

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_LLM_RECSYS_ID = ("Wenyueh/LLM-RecSys-ID", "2200ad9fef647ef755c01d6d7e5c5de3082606c5")
_RDREC = ("WangXFng/RDRec", "4055c3028d3afbd57a0fffd54076825836b7cad7")

# fmt: off
SOURCES: tuple[Source, ...] = (
    Source("beauty", "sequential_data.txt", *_LLM_RECSYS_ID, "data/beauty/sequential_data.txt", 1112457,
           "f85a84ab47d70e82bf0e7301804270af10fb51e127ab8f0885697d593f6f6d43"),
    Source("beauty", "datamaps.json", *_LLM_RECSYS_ID, "data/beauty/datamaps.json", 1835529,
           "715ab04838ff1ba21238475ed453a89e8c30aa6214b904d27a79e4168fc7b612"),
    Source("sports", "sequential_data.txt", *_LLM_RECSYS_ID, "data/sports/sequential_data.txt", 1707483,
           "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"),
    Source("sports", "datamaps.json", *_LLM_RECSYS_ID, "data/sports/datamaps.json", 2916593,
           "4a4d9785ab99a89a499f25023892a647a2280086041c9c9d7169c9dc2ee0b715"),
    Source("yelp", "sequential_data.txt", *_LLM_RECSYS_ID, "data/yelp/sequential_data.txt", 1814224,
           "724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed"),
    Source("yelp", "datamaps.json", *_LLM_RECSYS_ID, "data/yelp/datamaps.json", 3534826,
           "52d07e709fc00e5e75fcf993af92db68a44b10f62a9c6b06b61732ae141367d1"),
    Source("toys", "sequential.txt", *_RDREC, "data/toys/sequential.txt", 921692,
           "fa1cff57550387966440a93219753b97df62269455b3497612cdca3e8db0ceee"),
    Source("toys", "datamaps.json", *_RDREC, "data/toys/datamaps.json", 1021832,
           "a67fd09b5bbca12aea613015d9d1ed99610bb35015d3bbe8cd9e7a3eeda2c90c"),
)
# fmt: on

DATASETS: tuple[str, ...] = tuple(dict.fromkeys(s.dataset for s in SOURCES))


def sources_for(name: str, sources: Sequence[Source] = SOURCES) -> list[Source]:
    """The pinned files of dataset `name`."""
    found = [s for s in sources if s.dataset == name]
    if not found:
        known = ", ".join(dict.fromkeys(s.dataset for s in sources))
        raise DownloadError(f"unknown dataset {name!r}; choose one of {known}")
    return found


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(source: Source, url: str, tmp: Path, progress: bool, timeout: float) -> None:
    """Stream `url` into `tmp`, then check size and sha256."""
    h = hashlib.sha256()
    size = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,
            open(tmp, "wb") as out,
            tqdm(
                total=source.size, unit="B", unit_scale=True, desc=source.file, disable=not progress, leave=False
            ) as bar,
        ):
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: {reason}") from None
    if size != source.size:
        raise DownloadError(f"{url}: got {size} bytes, expected {source.size}; nothing was written")
    digest = h.hexdigest()
    if digest != source.sha256:
        raise DownloadError(f"{url}: sha256 mismatch (got {digest}, expected {source.sha256}); nothing was written")


def download_dataset(
    name: str,
    to: str | Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    timeout: float = 60.0,
    sources: Sequence[Source] = SOURCES,
) -> list[Path]:
    """Download dataset `name` into `to/name/` and return the file paths.

    Files already present with the right checksum are kept. On any failure no new file is left behind
    (and `to/name/` is removed again if this call created it).
    """
    wanted = sources_for(name, sources)
    target = Path(to) / name
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for source in wanted:
            dest = target / source.file
            if dest.is_file() and dest.stat().st_size == source.size and sha256_file(dest) == source.sha256:
                continue
            fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{source.file}.", suffix=".part")
            os.close(fd)
            tmp = Path(tmp_name)
            temps.append((tmp, dest))
            _fetch(source, source.url(base_url), tmp, progress, timeout)
        mode = default_mode()
        for tmp, dest in temps:
            os.chmod(tmp, mode)  # mkstemp files are private; the data is not
            os.replace(tmp, dest)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        if created:
            try:
                target.rmdir()  # only if empty
            except OSError:
                pass
        raise
    return [target / s.file for s in wanted]
