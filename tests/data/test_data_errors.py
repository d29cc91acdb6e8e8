"""Bad input to the data layer: each error names the file and line, and the CLI exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from p5_files import jsonl, write_p5
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data import DataError, load_dataset

runner = CliRunner()


# ---- bad input -------------------------------------------------------------------------------
BAD_CASES = {
    "empty sequence file": (lambda p: write_p5(p / "bad", [""]), "sequential_data.txt", 1, "empty file"),
    "non-integer item id": (
        lambda p: write_p5(p / "bad", ["1 1 2 3", "2 1 x 3"]),
        "sequential_data.txt",
        2,
        "non-integer item id 'x'",
    ),
    "non-integer user id": (
        lambda p: write_p5(p / "bad", ["u1 1 2 3"]),
        "sequential_data.txt",
        1,
        "non-integer user id 'u1'",
    ),
    "duplicate user line": (
        lambda p: write_p5(p / "bad", ["1 1 2 3", "2 1 2 3", "1 4 5 6"]),
        "sequential_data.txt",
        3,
        "duplicate line for user 1 (first on line 1)",
    ),
    "too few items": (
        lambda p: write_p5(p / "bad", ["1 1 2 3", "2 1 2"]),
        "sequential_data.txt",
        2,
        "user 2 has 2 item(s); at least 3",
    ),
    "non-UTF-8 bytes": (
        lambda p: _non_utf8(p),
        "sequential_data.txt",
        2,
        "not valid UTF-8",
    ),
    "invalid datamaps JSON": (
        lambda p: _with(write_p5(p / "bad", datamaps=""), "datamaps.json", '{\n"id2user": {"1": "A",}\n}'),
        "datamaps.json",
        2,
        "invalid JSON",
    ),
    "invalid explanation JSONL": (
        lambda p: write_p5(
            p / "bad", files={"explanation.jsonl": '{"user": 1, "item": 1, "explanation": "a"}\n{"user": 2,\n'}
        ),
        "explanation.jsonl",
        2,
        "invalid JSON",
    ),
    "invalid explanation JSON": (
        lambda p: write_p5(
            p / "bad",
            files={"explanation.json": '{"train": [\n  {"user": 1, "item": 1, "explanation": "a"}\n  {"user": 2}\n]}'},
        ),
        "explanation.json",
        3,
        "invalid JSON",
    ),
    "unknown user in explanation": (
        lambda p: write_p5(
            p / "bad",
            files={
                "explanation.jsonl": jsonl(
                    [{"user": 1, "item": 1, "explanation": "a"}, {"user": 99, "item": 1, "explanation": "b"}]
                )
            },
        ),
        "explanation.jsonl",
        2,
        "unknown user 99",
    ),
    "unknown item in explanation JSON": (
        lambda p: write_p5(
            p / "bad",
            files={
                "explanation.json": json.dumps(
                    {
                        "train": [{"user": 1, "item": 1, "explanation": "a"}],
                        "test": [{"user": 2, "item": 77, "explanation": "b"}],
                    },
                    indent=2,
                )
            },
        ),
        "explanation.json",
        10,
        "unknown item 77",
    ),
    "bad split value": (
        lambda p: write_p5(
            p / "bad", files={"explanation.jsonl": jsonl([{"user": 1, "item": 1, "explanation": "a", "split": "dev"}])}
        ),
        "explanation.jsonl",
        1,
        "unknown split 'dev'",
    ),
    "negative that is a positive": (
        lambda p: write_p5(p / "bad", files={"negative_samples.txt": "1 6 7\n2 3 4\n"}),
        "negative_samples.txt",
        2,
        "negative item 3 is one of user 2's own items",
    ),
    "unknown negative item": (
        lambda p: write_p5(p / "bad", files={"negative_samples.txt": "1 6 7\n2 1 42\n"}),
        "negative_samples.txt",
        2,
        "unknown item '42'",
    ),
    "CSV user with fewer than 3 items": (
        lambda p: _with(p, "t.csv", "user,item,timestamp\na,1,1\na,2,2\na,3,3\nb,1,1\nb,2,2\n"),
        "t.csv",
        5,
        "user 'b' has 2 interaction(s); at least 3",
    ),
    "CSV missing column": (
        lambda p: _with(p, "t.csv", "user,item,rating\na,1,1\n"),
        "t.csv",
        1,
        "missing required column 'timestamp'",
    ),
    "TSV bad timestamp": (
        lambda p: _with(p, "t.tsv", "user\titem\ttimestamp\na\t1\t1\na\t2\tyesterday\na\t3\t3\n"),
        "t.tsv",
        3,
        "timestamp 'yesterday'",
    ),
    "CSV with a saved index column": (
        lambda p: _with(p, "t.csv", "user,item,timestamp\nX,a,x,1\nY,a,y,2\nZ,a,z,3\n"),
        "t.csv",
        2,
        "4 fields where the header has 3",
    ),
    "CSV id with whitespace": (
        lambda p: _with(p, "t.csv", "user,item,timestamp\na,1,1\na,2 b,2\na,3,3\n"),
        "t.csv",
        3,
        "item id '2 b' contains whitespace",
    ),
    "CSV columns that clash once lower-cased": (
        lambda p: _with(p, "t.csv", "user,User,item,timestamp\na,b,1,1\na,b,2,2\na,b,3,3\n"),
        "t.csv",
        1,
        "columns 'user', 'User' are the same name once lower-cased",
    ),
    "empty CSV": (lambda p: _with(p, "t.csv", ""), "t.csv", 1, "empty file"),
    "CSV non-UTF-8": (lambda p: _with(p, "t.csv", b"user,item,timestamp\na,\xe9,1\n"), "t.csv", 2, "not valid UTF-8"),
}


def _with(root: Path, name: str, content: str | bytes) -> Path:
    """Write one file under `root`; return the path to load (the directory for P5 files, else the file)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root if name in ("datamaps.json",) else path


def _non_utf8(p: Path) -> Path:
    root = write_p5(p / "bad")
    (root / "sequential_data.txt").write_bytes(b"1 1 2 3\n2 1 2 \xff3\n")
    return root


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_names_file_and_line(tmp_path, case):
    make, filename, line, message = BAD_CASES[case]
    target = make(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(target)
    text = str(err.value)
    assert f"{filename}:{line}: " in text, text
    assert message in text, text
    assert err.value.line == line and err.value.path.endswith(filename)
    # The CLI prints the same single line and exits 2.
    result = runner.invoke(app, ["data", "stats", str(target)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {text}"]


def test_parquet_missing_column(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"user": ["a"], "item": ["b"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"t\.parquet: missing required column 'timestamp'"):
        load_dataset(path)


def test_unknown_format_and_missing_path(tmp_path):
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset(other)
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no sequential_data.txt or sequential.txt"):
        load_dataset(tmp_path)


def test_main_exits_2_on_data_error(tmp_path):
    """The installed entry point (`peapod.cli:main`) turns a DataError into one line and exit code 2."""
    root = write_p5(tmp_path / "bad", ["1 1 2 3", "1 4 5 6"])
    code = "import sys; from peapod.cli import main; sys.argv = ['peapod', 'data', 'stats', sys.argv[1]]; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {root}/sequential_data.txt:2: duplicate line for user 1 (first on line 1)"
    assert proc.stdout == ""



def test_repeated_interactions_are_dropped_and_counted_or_refused(tmp_path):
    # a's test item 3 repeats its last training row: kept, it would sit in a's own test history
    table = _with(tmp_path, "t.csv", "user,item,timestamp\na,1,1\na,2,2\na,3,3\na,3,3\nb,1,1\nb,2,2\nb,3,3\n")
    ds = load_dataset(table)
    assert ds.sequences[0] == [0, 1, 2] and ds.duplicates_dropped == 1 and ds.stats()["duplicates_dropped"] == 1
    result = runner.invoke(app, ["data", "stats", str(table)])
    assert result.exit_code == 0 and json.loads(result.stdout)["duplicates_dropped"] == 1
    with pytest.raises(DataError, match=r"t\.csv:5: duplicate interaction \(user 'a', item '3'"):
        load_dataset(table, strict=True)
    result = runner.invoke(app, ["data", "stats", str(table), "--strict"])
    assert result.exit_code == 2 and "duplicate interaction" in result.output


def test_the_shifted_csv_exits_2_from_the_command_line(tmp_path):
    table = _with(tmp_path, "t.csv", "user,item,timestamp\nX,a,x,1\nY,a,y,2\nZ,a,z,3\n")
    proc = subprocess.run([sys.executable, "-m", "peapod.cli", "data", "stats", str(table)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {table}:2: 4 fields where the header has 3 (an index column saved with the table?)"
