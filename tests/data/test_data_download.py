"""`peapod data download` against a loopback HTTP server laid out as OWNER/REPO/COMMIT/PATH.

No network: a `http.server` thread serves a temp directory. The synthetic tests always run; the CLI
tests copy the staged toys files from ../shared/data and are skipped when that is absent.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data.download import SOURCES, DownloadError, Source, download_dataset, sources_for

runner = CliRunner()



class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(served root directory, base URL) of a loopback HTTP server running in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def publish(root: Path, source: Source, data: bytes) -> None:
    path = root / source.repo / source.commit / source.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def synthetic(payloads: dict[str, bytes]) -> list[Source]:
    return [
        Source("tiny", name, "owner/repo", "c0ffee", f"data/tiny/{name}", len(data), hashlib.sha256(data).hexdigest())
        for name, data in payloads.items()
    ]


PAYLOADS = {"sequential_data.txt": b"1 1 2 3\n2 2 3 4\n", "datamaps.json": b'{"id2user": {"1": "A", "2": "B"}}'}


def test_table_matches_provenance():
    assert {s.dataset for s in SOURCES} == {"beauty", "sports", "toys", "yelp"}
    toys = sources_for("toys")
    assert [s.file for s in toys] == ["sequential.txt", "datamaps.json"]
    assert toys[0].url() == (
        "https://raw.githubusercontent.com/WangXFng/RDRec/4055c3028d3afbd57a0fffd54076825836b7cad7/data/toys/sequential.txt"
    )
    with pytest.raises(DownloadError, match="unknown dataset 'movies'"):
        sources_for("movies")


def test_download_ok_then_kept(server, tmp_path):
    root, base = server
    sources = synthetic(PAYLOADS)
    for s in sources:
        publish(root, s, PAYLOADS[s.file])
    out = tmp_path / "out"
    paths = download_dataset("tiny", out, base_url=base, progress=False, sources=sources)
    assert [p.read_bytes() for p in paths] == list(PAYLOADS.values())
    assert sorted(p.name for p in (out / "tiny").iterdir()) == sorted(PAYLOADS)  # no temp files
    # Present and correct: not fetched again (the server no longer has it).
    shutil.rmtree(root / "owner")
    assert download_dataset("tiny", out, base_url=base, progress=False, sources=sources) == paths


@pytest.mark.parametrize("corruption", ["checksum", "size", "missing"])
def test_download_failure_leaves_nothing(server, tmp_path, corruption):
    root, base = server
    sources = synthetic(PAYLOADS)
    publish(root, sources[0], PAYLOADS["sequential_data.txt"])  # the first file is fine
    second = PAYLOADS["datamaps.json"]
    if corruption == "checksum":
        publish(root, sources[1], second.replace(b"A", b"Z"))  # same size, other bytes
    elif corruption == "size":
        publish(root, sources[1], second + b"\n")
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as err:
        download_dataset("tiny", out, base_url=base, progress=False, sources=sources)
    message = str(err.value)
    assert {"checksum": "sha256 mismatch", "size": "expected", "missing": "HTTP 404"}[corruption] in message
    assert not (out / "tiny").exists()  # not even the good first file, nor a temp file


@pytest.mark.shared
def test_cli_download_toys(server, tmp_path, shared):
    root, base = server
    for s in sources_for("toys"):
        publish(root, s, (shared / "toys" / s.file).read_bytes())
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "download", "toys", "--to", str(out), "--base-url", base])
    assert result.exit_code == 0, result.output
    for s in sources_for("toys"):
        assert (out / "toys" / s.file).read_bytes() == (shared / "toys" / s.file).read_bytes()
    stats = runner.invoke(app, ["data", "stats", str(out / "toys")])
    assert stats.exit_code == 0 and '"users": 19412' in stats.output


@pytest.mark.shared
def test_cli_download_corrupt_exits_2(server, tmp_path, shared):
    root, base = server
    for s in sources_for("toys"):
        data = bytearray((shared / "toys" / s.file).read_bytes())
        if s.file == "datamaps.json":
            data[100] ^= 1  # one flipped bit
        publish(root, s, bytes(data))
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "download", "toys", "--to", str(out), "--base-url", base, "-q"])
    assert result.exit_code == 2
    assert "error:" in result.output and "sha256 mismatch" in result.output
    assert not out.exists() or not any(out.rglob("*"))


def test_cli_download_unknown_name(tmp_path):
    result = runner.invoke(app, ["data", "download", "movies", "--to", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown dataset 'movies'" in result.output
