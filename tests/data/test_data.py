"""Data layer tests: readers (P5 directories, bring-your-own tables), splits, negatives, indexing.

Everything runs on CPU in a few seconds from small files written to tmp_path or the embedded demo data.
Bad input: test_data_errors.py. The embedded and shared datasets: test_data_embedded.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from p5_files import ITEM_NAMES, USER_NAMES, jsonl, write_p5

from peapod.data import (
    DataError,
    assign_explanation_splits,
    build_item_index,
    ensure_negatives,
    load_dataset,
    load_interactions_table,
    load_p5_dir,
    read_negatives,
    sample_negatives,
    write_negatives,
)
from peapod.data.indexing import dataset_numbers


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
