"""The embedded datasets (demo, demo-toys): contents, size, provenance, `peapod demo --stats-only`, and the
staged shared P5 datasets (tests marked `shared`, skipped when ../shared/data is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data import DataError, load_dataset, load_demo, sample_negatives

runner = CliRunner()


# ---- the embedded datasets -----------------------------------------------------------------------
DATA_DIR = Path(__file__).resolve().parents[2] / "src" / "peapod" / "data"


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
def test_sports_negatives_are_valid_and_seeded(shared):
    """The largest staged dataset: 99 distinct unseen items per user, the same for the same seed."""
    ds = load_dataset(shared / "sports")
    negs = sample_negatives(ds, n=99, seed=0)
    assert len(negs) == ds.n_users == 35598
    for u in range(0, ds.n_users, 97):
        row = negs[u]
        assert len(set(row)) == 99 and not set(row) & set(ds.sequences[u])
        assert all(0 <= i < ds.n_items for i in row)
    assert negs[:500] == sample_negatives(ds, n=99, seed=0)[:500]
