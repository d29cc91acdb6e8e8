"""Data layer tests: readers, splits, negatives, indexing, bad input, `data stats`, the embedded demo.

Everything runs on CPU in a few seconds from small files written to tmp_path, except the tests marked
`shared`, which read the staged P5 files in ../shared/data beside the repository (skipped when absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data import (
    DataError,
    assign_explanation_splits,
    build_item_index,
    ensure_negatives,
    load_dataset,
    load_demo,
    load_interactions_table,
    load_p5_dir,
    read_negatives,
    sample_negatives,
    write_negatives,
)
from peapod.data.indexing import dataset_numbers

runner = CliRunner()



# ---- small fixtures ------------------------------------------------------------------------------
SEQ_LINES = [
    "1 1 2 3 4 5",
    "2 3 10 9 2",
    "3 4 5 6 7 8 9",
    "4 10 1 6",
]
USER_NAMES = {"1": "AU1", "2": "AU2", "3": "AU3", "4": "AU4"}
ITEM_NAMES = {str(i): f"B{i:03d}" for i in range(1, 11)}


def write_p5(
    root: Path,
    lines: list[str] = SEQ_LINES,
    *,
    newline: str = "\n",
    seq_name: str = "sequential_data.txt",
    datamaps: str = "user2id",
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A small P5 directory; `datamaps` is "user2id" (P5 layout), "id2user" (toys layout) or "" (none)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / seq_name).write_bytes((newline.join(lines) + newline).encode())
    if datamaps == "user2id":
        maps = {
            "user2id": {v: k for k, v in USER_NAMES.items()},
            "item2id": {v: k for k, v in ITEM_NAMES.items()},
            "id2user": USER_NAMES,
            "id2item": ITEM_NAMES,
        }
        (root / "datamaps.json").write_text(json.dumps(maps))
    elif datamaps == "id2user":
        (root / "datamaps.json").write_text(json.dumps({"id2user": USER_NAMES, "id2item": ITEM_NAMES}, indent=4))
    for name, content in (files or {}).items():
        data = content if isinstance(content, bytes) else content.encode()
        (root / name).write_bytes(data)
    return root


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ---- P5 directories --------------------------------------------------------------------------
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_p5_dir_lf_and_crlf(tmp_path, newline):
    ds = load_p5_dir(write_p5(tmp_path / "d", newline=newline))
    assert ds.name == "d"
    assert ds.user_ids == ["1", "2", "3", "4"]  # file order
    assert ds.item_ids == [str(i) for i in range(1, 11)]  # numeric order: "10" last, internal = raw - 1
    assert ds.sequences[1] == [2, 9, 8, 1]  # time order kept
    assert ds.n_interactions == 5 + 4 + 6 + 3
    assert ds.negatives is None and ds.explanations == []


def test_p5_datamaps_user2id_and_id2user_agree(tmp_path):
    a = load_p5_dir(write_p5(tmp_path / "a", datamaps="user2id"))
    b = load_p5_dir(write_p5(tmp_path / "b", seq_name="sequential.txt", datamaps="id2user"))
    c = load_p5_dir(write_p5(tmp_path / "c", datamaps=""))
    assert a.user_names == b.user_names == USER_NAMES
    assert a.item_names == b.item_names == ITEM_NAMES
    assert a.sequences == b.sequences == c.sequences
    assert c.user_names == {} and c.item_names == {}


def test_p5_user2id_preferred_over_id2user(tmp_path):
    root = write_p5(tmp_path / "d", datamaps="")
    maps = {"user2id": {"REAL": "1"}, "id2user": {"1": "STALE"}}
    (root / "datamaps.json").write_text(json.dumps(maps))
    assert load_p5_dir(root).user_names == {"1": "REAL"}


def test_p5_non_integer_raw_ids_are_canonical(tmp_path):
    ds = load_p5_dir(write_p5(tmp_path / "d", ["01 1 2 3", "2 003 1 2"]))
    assert ds.user_ids == ["1", "2"]
    assert ds.item_ids == ["1", "2", "3"]


def test_p5_json_explanations(tmp_path):
    exp = {
        "train": [
            {"user": 1, "item": 1, "explanation": "great fun", "feature": "fun"},
            {"user": 2, "item": 3, "explanation": "sturdy", "feature": "sturdy"},
        ],
        "val": [{"user": 3, "item": 4, "explanation": "colorful", "feature": "color"}],
        "test": [{"reviewerID": "AU4", "asin": "B010", "explanation": "small", "feature": "size"}],
    }
    ds = load_p5_dir(write_p5(tmp_path / "d", files={"explanation.json": json.dumps(exp, indent=4)}))
    assert [(e.user, e.item, e.split) for e in ds.explanations] == [
        (0, 0, "train"),
        (1, 2, "train"),
        (2, 3, "val"),
        (3, 9, "test"),
    ]
    assert ds.explanations[0].text == "great fun" and ds.explanations[0].feature == "fun"
    assert ds.stats()["explanations"] == {"train": 2, "val": 1, "test": 1}


def test_p5_jsonl_explanations_with_and_without_split(tmp_path):
    records = [
        {"user": 1, "item": 1, "explanation": "a", "feature": "x", "split": "test"},
        {"user": "2", "item": "3", "explanation": "b", "feature": "y", "split": "val"},
        {"user": 3, "item": 4, "explanation": "c", "feature": "z"},  # no split: first of user 3 -> train
    ]
    ds = load_p5_dir(write_p5(tmp_path / "d", files={"explanation.jsonl": jsonl(records)}))
    assert [e.split for e in ds.explanations] == ["test", "val", "train"]


def test_p5_explanation_sample_name_is_read(tmp_path):
    records = [{"user": 1, "item": 2, "explanation": "a", "feature": "x", "split": "train"}]
    ds = load_p5_dir(write_p5(tmp_path / "d", files={"explanation-sample.jsonl": jsonl(records)}))
    assert len(ds.explanations) == 1


def test_p5_negatives_file(tmp_path):
    root = write_p5(tmp_path / "d")
    negatives = "1 6 7\n2 1 4\n3 1 2\n4 2 3\n"
    (root / "negative_samples.txt").write_text(negatives)
    ds = load_p5_dir(root)
    assert ds.negatives == [[5, 6], [0, 3], [0, 1], [1, 2]]


# ---- bring-your-own tables -------------------------------------------------------------------
TABLE_ROWS = [  # user, item, timestamp, rating; deliberately not sorted by time
    ("alice", "i30", 30, 5),
    ("alice", "i10", 10, 4),
    ("bob", "i20", 5, 3),
    ("alice", "i20", 20, 4),
    ("bob", "i10", 7, 2),
    ("bob", "i40", 7, 1),  # tie with the row above: file order kept
    ("carol", "i40", 1, 5),
    ("carol", "i30", 2, 5),
    ("carol", "i50", 3, 5),
]


def table_frame() -> pd.DataFrame:
    return pd.DataFrame(TABLE_ROWS, columns=["user", "item", "timestamp", "rating"])


def check_table(ds) -> None:
    assert ds.user_ids == ["alice", "bob", "carol"]
    assert ds.item_ids == ["i30", "i10", "i20", "i40", "i50"]  # non-integer ids: first appearance
    named = [[ds.item_ids[i] for i in s] for s in ds.sequences]
    assert named == [["i10", "i20", "i30"], ["i20", "i10", "i40"], ["i40", "i30", "i50"]]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_table_formats(tmp_path, suffix):
    path = tmp_path / f"interactions{suffix}"
    df = table_frame()
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    else:
        df.to_parquet(path, index=False)
    ds = load_dataset(path)
    check_table(ds)
    assert ds.name == "interactions"


def test_table_integer_ids_sorted_numerically_and_iso_dates(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "user,item,timestamp\n"
        "7,10,2024-01-03\n7,9,2024-01-01\n7,100,2024-01-02T12:00:00\n"
        "8,9,2023-05-01\n8,10,2023-05-02\n8,2,2023-05-03\n"
    )
    ds = load_interactions_table(path)
    assert ds.item_ids == ["2", "9", "10", "100"]
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["9", "100", "10"], ["9", "10", "2"]]


def test_table_explanations_jsonl(tmp_path):
    path = tmp_path / "t.csv"
    table_frame().to_csv(path, index=False)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(
        jsonl(
            [
                {"user": "alice", "item": "i10", "explanation": "nice", "feature": "n", "split": "val"},
                {"user": "bob", "item": "i20", "explanation": "ok", "feature": "o"},
            ]
        )
    )
    ds = load_interactions_table(path, reviews)
    assert [(ds.user_ids[e.user], ds.item_ids[e.item], e.split) for e in ds.explanations] == [
        ("alice", "i10", "val"),
        ("bob", "i20", "train"),
    ]


# ---- splits ----------------------------------------------------------------------------------
def test_leave_one_out(tmp_path):
    ds = load_p5_dir(write_p5(tmp_path / "d"))
    seq = ds.sequences[2]
    assert ds.train_items(2) == seq[:-2]
    assert ds.history_and_target(2, "val") == (seq[:-2], seq[-2])
    assert ds.history_and_target(2, "test") == (seq[:-1], seq[-1])
    s = ds.stats()["split_interactions"]
    assert s == {"train": ds.n_interactions - 2 * ds.n_users, "val": ds.n_users, "test": ds.n_users}
    with pytest.raises(ValueError):
        ds.history_and_target(0, "train")


def test_explanation_split_rule_deterministic_and_covering():
    import random

    rnd = random.Random(1)
    users = [rnd.randrange(200) for _ in range(5000)]
    items = [rnd.randrange(300) for _ in range(5000)]
    a = assign_explanation_splits(users, items, seed=0)
    assert a == assign_explanation_splits(users, items, seed=0)
    assert a != assign_explanation_splits(users, items, seed=1)
    train = [k for k, s in enumerate(a) if s == "train"]
    assert {users[k] for k in train} == set(users)  # every user and item is seen in training
    assert {items[k] for k in train} == set(items)
    # The first record of each user goes to train.
    first = {}
    for k, u in enumerate(users):
        first.setdefault(u, k)
    assert all(a[k] == "train" for k in first.values())
    # The rest is 80/10/10.
    rest = [s for k, s in enumerate(a) if k not in set(first.values())]
    assert 0.08 < rest.count("val") / len(a) < 0.12
    assert 0.08 < rest.count("test") / len(a) < 0.12


def test_explanation_split_rule_keeps_given_splits():
    splits = assign_explanation_splits([0, 0, 1], [0, 1, 1], given=["test", None, "val"])
    assert splits[0] == "test" and splits[2] == "val"
    assert splits[1] == "train"  # user 0 had no training record yet


# ---- negatives -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_sample_negatives_properties(demo):
    negs = sample_negatives(demo, n=99, seed=0)
    assert len(negs) == demo.n_users
    for u, row in enumerate(negs):
        assert len(row) == 99
        assert len(set(row)) == 99
        assert not set(row) & set(demo.sequences[u])
        assert all(0 <= i < demo.n_items for i in row)
    assert negs == sample_negatives(demo, n=99, seed=0)
    assert negs != sample_negatives(demo, n=99, seed=1)


def test_sample_negatives_dense_user_and_too_few_items(tmp_path):
    ds = load_p5_dir(write_p5(tmp_path / "d"))  # 10 items; user 3 has 6 of them
    negs = sample_negatives(ds, n=4, seed=3)
    assert sorted(negs[2]) == [0, 1, 2, 9]  # the whole complement
    with pytest.raises(DataError, match="cannot draw 5 negatives"):
        sample_negatives(ds, n=5)


def test_negatives_round_trip_and_cache(tmp_path, demo):
    negs = sample_negatives(demo, n=99, seed=5)
    path = tmp_path / "negative_samples.txt"
    write_negatives(demo, negs, path)
    assert read_negatives(demo, path) == negs
    assert [p.name for p in tmp_path.iterdir()] == ["negative_samples.txt"]  # no temp file left
    first = path.read_text().split("\n")[0].split()
    assert first[0] == demo.user_ids[0] and len(first) == 100  # P5 format, raw ids

    cache = tmp_path / "cache" / "neg.txt"
    a = ensure_negatives(demo, cache, seed=7)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    assert ensure_negatives(demo, cache, seed=123) == a  # read back, not resampled
    assert cache.stat().st_mtime_ns == stamp
    assert a == sample_negatives(demo, n=99, seed=7)
    with pytest.raises(DataError, match="99 items per user, 10 were asked"):
        ensure_negatives(demo, cache, n=10)


def test_demo_negatives_match_seed_zero(demo):
    assert demo.negatives == sample_negatives(demo, n=99, seed=0)


# ---- indexing --------------------------------------------------------------------------------
def test_random_indexing_bijection_and_seeded(demo):
    a = build_item_index(demo, "random", seed=0)
    assert sorted(a.numbers) == list(range(1, demo.n_items + 1))
    assert a.numbers == build_item_index(demo, "random", seed=0).numbers
    assert a.numbers != build_item_index(demo, "random", seed=1).numbers
    assert all(a.parse(a.item_text(i)) == i for i in range(0, demo.n_items, 97))


def test_atomic_indexing_one_token_per_item(demo):
    idx = build_item_index(demo, "atomic")
    texts = idx.all_item_texts()
    assert len(set(texts)) == demo.n_items
    assert all(t.startswith("<item_") and t.endswith(">") and " " not in t for t in texts)


def test_p5_sequential_keeps_p5_numbers(demo):
    idx = build_item_index(demo, "p5-sequential")
    assert list(idx.numbers) == [int(r) for r in demo.item_ids]
    assert idx.item_text(0) == f"item_{demo.item_ids[0]}"


def test_byo_fallback_numbering_uses_training_order_only(tmp_path):
    path = tmp_path / "t.csv"
    # "z" and "y" are only ever validation/test items; "a" "b" "c" "d" are training items.
    path.write_text("user,item,timestamp\nu1,c,1\nu1,a,2\nu1,z,3\nu1,y,4\nu2,b,1\nu2,d,2\nu2,y,3\nu2,z,4\n")
    ds = load_interactions_table(path)
    numbers = dict(zip(ds.item_ids, dataset_numbers(ds)))
    assert numbers == {"c": 1, "a": 2, "b": 3, "d": 4, "y": 5, "z": 6}
    assert build_item_index(ds, "p5-sequential").numbers == tuple(dataset_numbers(ds))


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


# ---- the embedded datasets -----------------------------------------------------------------------
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "peapod" / "data"


@pytest.fixture(scope="module")
def demo_toys():
    return load_demo("demo-toys")


def test_demo_dataset_is_musical_instruments(demo):
    assert demo.name == "demo" and demo.source == "peapod:data/demo"
    assert (demo.n_users, demo.n_items, demo.n_interactions) == (1429, 900, 10261)
    assert demo.stats()["explanations"] == {"train": 7788, "val": 741, "test": 665}  # every task has all splits
    assert len(demo.user_names) == 1429 and len(demo.item_names) == 900
    assert demo.user_names["1"] == "A2IBPI20UZIR0U" and demo.item_names["1"] == "1384719342"  # the source's first review
    assert all(len(n) == 99 for n in demo.negatives)
    assert load_dataset("demo").sequences == demo.sequences and load_demo().sequences == demo.sequences


def test_demo_toys_dataset(demo_toys):
    assert demo_toys.name == "demo-toys" and demo_toys.source == "peapod:data/demo_toys"
    assert demo_toys.n_users == 878
    assert demo_toys.n_items == 6135
    assert demo_toys.n_interactions == 14534
    assert demo_toys.stats()["explanations"] == {"train": 485, "val": 0, "test": 491}
    assert len(demo_toys.user_names) == 878 and len(demo_toys.item_names) == 6135
    assert demo_toys.user_names["14577"] and demo_toys.item_names[demo_toys.item_ids[0]]
    assert all(len(n) == 99 for n in demo_toys.negatives)
    assert demo_toys.negatives == sample_negatives(demo_toys, n=99, seed=0)
    assert load_dataset("demo-toys").sequences == demo_toys.sequences


def test_unknown_embedded_name():
    with pytest.raises(DataError, match="unknown embedded dataset"):
        load_demo("demo-nothing")
    with pytest.raises(DataError, match="expected 'demo', 'demo-toys'"):
        load_dataset("demo-nothing")


@pytest.mark.parametrize(
    ("folder", "data_files", "limit"),
    [
        ("demo", ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "negative_samples.txt",
                  "feature_lexicon.tsv", "reviews_stats.json"), 3_000_000),
        ("demo_toys", ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "negative_samples.txt"), 1_000_000),
    ],
)
def test_embedded_files_small_and_documented(folder, data_files, limit):
    import hashlib

    files = {p.name: p for p in (DATA_DIR / folder).iterdir()}
    assert set(files) == {"README.md", *data_files}
    assert sum(p.stat().st_size for p in files.values()) < limit
    readme = files["README.md"].read_text()
    for name in data_files:
        assert hashlib.sha256(files[name].read_bytes()).hexdigest() in readme, name


def test_demo_readme_records_the_command_and_source():
    readme = (DATA_DIR / "demo" / "README.md").read_text()
    stats = json.loads((DATA_DIR / "demo" / "reviews_stats.json").read_text())
    command = ("peapod data from-reviews ../shared/data/amazon-mi/reviews_Musical_Instruments_5.json.gz "
               "--out src/peapod/data/demo --seed 0 --min-df 10 --top-k 1000 --force")
    assert readme.count(command) == 2  # the provenance section and the command's own README
    sha = "03f9cc27ae13a454cb4ea6cb620fb10546cc1194ef921441d1c5f34addff2748"
    assert sha in readme and stats["source"]["sha256"] == sha
    assert "He and J. McAuley" in readme and "1,429" in readme and "7,788" in readme


@pytest.mark.shared
def test_demo_toys_is_a_subset_of_toys(shared, demo_toys):
    toys = load_dataset(shared / "toys")
    for u, raw in enumerate(demo_toys.user_ids):
        full = toys.sequences[toys.user_index[raw]]
        assert [demo_toys.item_ids[i] for i in demo_toys.sequences[u]] == [toys.item_ids[i] for i in full]
    assert all(toys.item_names[r] == n for r, n in demo_toys.item_names.items())
    assert all(toys.user_names[r] == n for r, n in demo_toys.user_names.items())


def test_cli_demo_and_stats_demo():
    result = runner.invoke(app, ["demo", "--stats-only"])
    assert result.exit_code == 0, result.output
    assert "1,429" in result.output and "train 7,788 / val 741 / test 665" in result.output
    result = runner.invoke(app, ["data", "stats", "demo"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["users"] == 1429
    result = runner.invoke(app, ["data", "stats", "demo-toys"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["name"] == "demo-toys" and stats["users"] == 878 and stats["explanations"]["val"] == 0


# ---- shared datasets -------------------------------------------------------------------------
EXPECTED = {
    "beauty": (22363, 12101, 198502),
    "sports": (35598, 18357, 296337),
    "toys": (19412, 11924, 167597),
}


@pytest.mark.shared
@pytest.mark.parametrize("name", list(EXPECTED))
def test_data_stats_shared(shared, name):
    result = runner.invoke(app, ["data", "stats", str(shared / name)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["users"], stats["items"], stats["interactions"]) == EXPECTED[name]
    assert stats["sequence_length"]["min"] == 5


@pytest.mark.shared
def test_shared_toys_explanation_sample_and_names(shared):
    ds = load_dataset(shared / "toys")
    assert ds.stats()["explanations"] == {"train": 485, "val": 0, "test": 491}
    assert ds.user_names["1"] == "AQW172A5SG5OC" and ds.item_names["1"] == "B001RNFQNK"
    beauty = load_dataset(shared / "beauty")
    assert beauty.user_names["1"] == "A1YJEY40YUW4SE" and beauty.item_names["1"] == "B004756YJA"
    assert beauty.sequences[0] == [0, 1, 2, 3, 4]  # CRLF file, first line "1 1 2 3 4 5"


@pytest.mark.shared
def test_sports_load_and_negatives_are_fast(shared):
    start = time.perf_counter()
    ds = load_dataset(shared / "sports")
    loaded = time.perf_counter() - start
    negs = sample_negatives(ds, n=99, seed=0)
    sampled = time.perf_counter() - start - loaded
    assert len(negs) == 35598
    # Generous bounds (about 0.4 s and 1.5 s on 2 cores) so a loaded CI machine does not flake.
    assert loaded < 10 and sampled < 20
