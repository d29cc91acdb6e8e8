"""`peapod data from-reviews`: raw reviews -> a P5-style directory, explanation extraction, bad input.

Everything runs on the hand-written fixture tests/fixtures/reviews_small.json (15 Amazon-style reviews: 5 users,
one with 2 reviews that is dropped, one empty text, equal times) in well under a second per test, except the
`shared` test on the Amazon Musical Instruments file in ../shared/data (skipped when absent).
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peapod.cli import app
from peapod.data import DataError, load_dataset
from peapod.data.reviews import output as reviews_output
from peapod.data.reviews.convert import convert_reviews
from peapod.data.reviews.extraction import (
    build_feature_lexicon,
    opinion_words,
    pick_explanation,
    split_sentences,
    tokens,
)
from peapod.data.reviews.read import FieldMap

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reviews_small.json"
runner = CliRunner()
SEED = 10  # the seed whose draws put the fixture's four free records in test, train, val and train


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def convert(tmp_path: Path, src: Path = FIXTURE, **kwargs) -> tuple[Path, dict]:
    out = tmp_path / "out"
    kwargs.setdefault("min_df", 2)
    kwargs.setdefault("seed", SEED)
    return out, convert_reviews(src, out, **kwargs)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "explanation.jsonl").read_text().splitlines()]


# ---- the fixture, end to end ---------------------------------------------------------------------
EXPECTED_RECORDS = [  # (user, item, sentence, feature, rating, split), by user then time
    (1, 1, "The tuner is bright and easy to read.", "tuner", 5.0, "train"),
    (1, 2, "These strings sound warm on my old guitar.", "strings", 4.0, "train"),
    (1, 3, "The cable broke after a week!", "cable", 1.0, "train"),
    (2, 1, "The tuner works, and the display is clear in sunlight.", "tuner", 4.0, "train"),
    (2, 4, "The gig bag is a nice bonus with this capo.", "gig bag", 5.0, "train"),
    (2, 3, "The cable is fine for practice at home.", "cable", 3.0, "test"),
    (2, 2, "The strings are great.", "strings", 5.0, "train"),
    (3, 1, "The tuner is accurate, and the clip is strong.", "tuner", 5.0, "train"),
    (3, 3, "The cable is noisy and the plug feels weak.", "cable", 2.0, "val"),
    (3, 4, "The capo holds well and the spring is strong.", "capo", 4.0, "train"),
    (4, 2, "Great strings, bright tone and a clean feel.", "strings", 5.0, "train"),
]


def test_fixture_sequences_datamaps_and_time_order_with_ties(tmp_path):
    out, stats = convert(tmp_path)
    # EVE (2 reviews) is dropped, and with her the only item she alone reviewed (B-STRAP).
    assert (out / "sequential_data.txt").read_text() == "1 1 2 3\n2 1 4 3 2\n3 1 3 4\n4 4 2 1\n"
    maps = json.loads((out / "datamaps.json").read_text())
    assert maps["user2id"] == {"ALICE": "1", "BOB": "2", "CAROL": "3", "DAVE": "4"}
    assert maps["item2id"] == {"B-TUNER": "1", "B-STRINGS": "2", "B-CABLE": "3", "B-CAPO": "4"}
    assert maps["id2item"]["4"] == "B-CAPO" and maps["id2user"]["1"] == "ALICE"
    # BOB reviewed the cable (line 6) and the strings (line 7) at the same time: file order, not item order.
    assert stats["users_dropped"] == 1 and stats["reviews_dropped"] == 2 and stats["reviews_read"] == 15
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 4, 13)


def test_fixture_exact_sentences_features_and_splits(tmp_path):
    out, stats = convert(tmp_path)
    got = [(r["user"], r["item"], r["explanation"], r["feature"], r["rating"], r["split"]) for r in records(out)]
    assert got == EXPECTED_RECORDS
    assert (out / "feature_lexicon.tsv").read_text().splitlines() == [
        "feature\treviews", "cable\t3", "strings\t3", "tuner\t3", "capo\t2", "gig bag\t2", "plug\t2"]
    assert stats["explanations"] == {"total": 11, "train": 9, "val": 1, "test": 1}
    assert stats["explanation_share"] == round(11 / 13, 4) and stats["lexicon_size"] == 6
    assert stats["empty_texts"] == 1 and stats["empty_text_lines"] == [10]
    assert stats["source"]["sha256"] and stats["source"]["compression"] == "none"
    assert (out / "README.md").read_text().startswith("# Dataset built from raw reviews")


def test_output_loads_with_the_existing_reader(tmp_path):
    out, _ = convert(tmp_path)
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (4, 4, 13)
    assert ds.stats()["explanations"] == {"train": 9, "val": 1, "test": 1}
    assert ds.user_names == {"1": "ALICE", "2": "BOB", "3": "CAROL", "4": "DAVE"}
    # Every user and item with an explanation has one in train (P5's rule).
    train = ds.explanations_for("train")
    assert {e.user for e in ds.explanations} <= {e.user for e in train}
    assert {e.item for e in ds.explanations} <= {e.item for e in train}
    test = ds.explanations_for("test")[0]
    assert (ds.user_ids[test.user], ds.item_ids[test.item], test.text) == ("2", "3", "The cable is fine for practice at home.")


def test_output_is_deterministic_and_gzip_is_detected_by_magic_bytes(tmp_path):
    a, _ = convert(tmp_path / "a")
    packed = tmp_path / "reviews.data"  # no .gz suffix: the magic bytes decide
    packed.write_bytes(gzip.compress(FIXTURE.read_bytes(), mtime=0))
    b, stats = convert(tmp_path / "b", packed)
    assert stats["source"]["compression"] == "gzip"
    for name in ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "feature_lexicon.tsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _generic_rows() -> list[dict]:
    out = []
    for r in fixture_rows():
        iso = datetime.fromtimestamp(r["unixReviewTime"], timezone.utc).isoformat()
        out.append({"uid": r["reviewerID"], "iid": r["asin"], "when": iso, "stars": str(r["overall"]), "body": r["reviewText"]})
    return out


GENERIC = FieldMap(user="uid", item="iid", time="when", rating="stars", text="body")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv"])
def test_generic_field_mapping_gives_the_same_dataset(tmp_path, kind):
    ref, _ = convert(tmp_path / "ref")
    rows = _generic_rows()
    src = tmp_path / f"reviews.{kind}"
    if kind == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with src.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if kind == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    out, stats = convert(tmp_path / "gen", src, fields=GENERIC)
    assert stats["source"]["format"] == kind
    for name in ("sequential_data.txt", "datamaps.json", "explanation.jsonl"):
        assert (out / name).read_text() == (ref / name).read_text(), name


def test_csv_multiline_text_and_no_rating_field(tmp_path):
    src = tmp_path / "r.csv"
    rows = [["u", "i", "t", "text"]] + [[f"u{k % 2}", f"i{k}", str(k), f"Row {k}.\nThe strap is great."] for k in range(6)]
    with src.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out, _ = convert(tmp_path, src, fields=FieldMap("u", "i", "t", None, "text"), min_df=1)
    assert (out / "sequential_data.txt").read_text() == "1 1 3 5\n2 2 4 6\n"
    recs = records(out)
    assert {r["explanation"] for r in recs} == {"The strap is great."} and {r["rating"] for r in recs} == {None}


def test_csv_review_longer_than_the_csv_module_default_field_limit(tmp_path):
    src = tmp_path / "r.csv"
    long_text = "The strap is great. " + "x" * 200_000
    rows = [["u", "i", "t", "text"]] + [[f"u{k % 2}", f"i{k}", str(k), long_text if k == 2 else "The strap is great."] for k in range(6)]
    with src.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out, _ = convert(tmp_path, src, fields=FieldMap("u", "i", "t", None, "text"), min_df=1)
    assert (out / "sequential_data.txt").read_text() == "1 1 3 5\n2 2 4 6\n"


# ---- extraction rules ----------------------------------------------------------------------------
def test_sentence_splitter_handles_missing_spaces():
    assert split_sentences("It is quite affordable.I did not  realize it.\nGreat!") == [
        "It is quite affordable.", "I did not realize it.", "Great!"]


def test_first_qualifying_sentence_and_nearest_feature_tie_break():
    ops = opinion_words()
    lexicon = {"cable": 3, "plug": 2, "capo": 2, "gig bag": 2}
    sents = ["The gig bag has room for this capo.", "The cable is noisy and the plug feels weak."]
    found = pick_explanation(sents, [tokens(s) for s in sents], lexicon, ops)
    # The first sentence names features but no opinion word; in the second, cable and plug are both 2 tokens
    # from an opinion word, and cable is in more reviews.
    assert (found.sentence, found.feature, found.sentence_index) == (sents[1], "cable", 1)
    assert pick_explanation(["Too short, great."], [tokens("Too short, great.")], lexicon, ops) is None


def test_lexicon_keeps_noun_like_terms_only():
    docs = [[tokens(s)] for s in ["The tuner is small.", "A tuner is very small.", "My new tuner is great.", "Some new picks."]]
    lex = build_feature_lexicon(docs, opinion_words(), min_df=2, top_k=10)
    assert lex.terms == (("tuner", 3),)  # "small" follows a copula/intensifier, "new" modifies the next word


# ---- bad input -----------------------------------------------------------------------------------
def _lines_with(tmp_path: Path, line: int, text: str, name: str = "bad.json") -> Path:
    lines = FIXTURE.read_text().splitlines()
    lines.insert(line - 1, text)
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _without(field: str):
    def make(tmp_path):
        rows = fixture_rows()
        del rows[1][field]
        path = tmp_path / "bad.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    return make


def _truncated_gzip(tmp_path):
    gz = gzip.compress(FIXTURE.read_bytes(), mtime=0)
    path = tmp_path / "bad.json.gz"
    path.write_bytes(gz[: len(gz) // 2])
    return path


def _gzip_line(tmp_path) -> int:
    part = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress((tmp_path / "bad.json.gz").read_bytes())
    return part.count(b"\n") + 1


def _no_short_users(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in fixture_rows() if r["reviewerID"] != "EVE"))
    return path


def _bytes(tmp_path, data: bytes) -> Path:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    return path


def _set(field, value, row=2):
    def make(tmp_path):
        rows = fixture_rows()
        rows[row - 1][field] = value
        path = tmp_path / "bad.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    return make


BAD = {  # name: (make file, extra CLI args, line (or a function of tmp_path), message)
    "non-json line": (lambda t: _lines_with(t, 3, '{"reviewerID": "X", '), [], 3, "invalid JSON"),
    "not an object": (lambda t: _lines_with(t, 2, "[1, 2]"), [], 2, "must be a JSON object"),
    "missing item": (_without("asin"), [], 2, "missing field 'asin'"),
    "missing text": (_without("reviewText"), [], 2, "missing field 'reviewText'"),
    "empty user": (_set("reviewerID", " "), [], 2, "empty 'reviewerID' field"),
    "bad time": (_set("unixReviewTime", "yesterday"), [], 2, "neither a number nor an ISO 8601 date"),
    "bad rating": (_set("overall", "five"), [], 2, "rating field 'overall' is not a number"),
    "text not a string": (_set("reviewText", 7), [], 2, "must be a string"),
    "corrupt gzip": (_truncated_gzip, [], _gzip_line, "corrupt gzip data"),
    "invalid utf-8": (lambda t: _bytes(t, FIXTURE.read_bytes().replace(b"Monday", b"Mon\xffday")), [], 5, "not valid UTF-8"),
    "empty file": (lambda t: _bytes(t, b"\n"), [], 1, "empty file"),
    "short user, strict": (lambda t: _lines_with(t, 16, ""), ["--strict"], 4, "user 'EVE' has 2 review(s); at least 3"),
    "empty text, strict": (_no_short_users, ["--strict"], 9, "empty review text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_line_and_leaves_nothing(tmp_path, case):
    make, args, line, message = BAD[case]
    src = make(tmp_path)
    line = line(tmp_path) if callable(line) else line
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        convert_reviews(src, out, strict="--strict" in args)
    text = str(err.value)
    assert text.startswith(f"{src}:{line}: ") and message in text, text
    assert (err.value.path, err.value.line) == (str(src), line)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    result = runner.invoke(app, ["data", "from-reviews", str(src), "--out", str(out), *args])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {text}"], result.output
    assert not out.exists()


def test_csv_missing_column_is_line_1(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text("user,item,time,text\nu,i,1,hello\n")
    with pytest.raises(DataError, match=r"r\.csv:1: missing column 'rating'"):
        convert_reviews(src, tmp_path / "out", fields=FieldMap("user", "item", "time", "rating", "text"))


def test_failure_while_writing_leaves_no_directory(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(reviews_output, "_readme", boom)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---- CLI -----------------------------------------------------------------------------------------
def test_cli_from_reviews_then_stats(tmp_path):
    out = tmp_path / "mi"
    result = runner.invoke(app, ["data", "from-reviews", str(FIXTURE), "--out", str(out), "--min-df", "2", "--seed", str(SEED)])
    assert result.exit_code == 0, result.output
    assert "dropped 1 user(s) with fewer than 3 reviews (2 reviews)" in result.output
    assert "4 users, 4 items, 13 interactions; 11 explanations (train 9 / val 1 / test 1" in result.output
    stats = json.loads(runner.invoke(app, ["data", "stats", str(out)]).output)
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 4, 13)
    assert stats["explanations"] == {"train": 9, "val": 1, "test": 1}
    # A non-empty --out is refused (and kept) unless --force.
    again = runner.invoke(app, ["data", "from-reviews", str(FIXTURE), "--out", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output and (out / "explanation.jsonl").is_file()
    forced = runner.invoke(app, ["data", "from-reviews", str(FIXTURE), "--out", str(out), "--force", "--min-df", "3", "-q"])
    assert forced.exit_code == 0 and len((out / "feature_lexicon.tsv").read_text().splitlines()) == 4


def test_cli_generic_fields(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _generic_rows()))
    args = ["--user-field", "uid", "--item-field", "iid", "--time-field", "when", "--rating-field", "stars", "--text-field", "body"]
    result = runner.invoke(app, ["data", "from-reviews", str(src), "--out", str(tmp_path / "o"), "--min-df", "2", *args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "sequential_data.txt").read_text() == "1 1 2 3\n2 1 4 3 2\n3 1 3 4\n4 4 2 1\n"
    bad = runner.invoke(app, ["data", "from-reviews", str(src), "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and f"{src}:1: missing field 'reviewerID'" in bad.output


# ---- the real file -------------------------------------------------------------------------------
@pytest.mark.shared
def test_amazon_musical_instruments(shared, tmp_path):
    src = shared / "amazon-mi" / "reviews_Musical_Instruments_5.json.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    out = tmp_path / "mi"
    stats = convert_reviews(src, out)
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (1429, 900, 10261)
    assert stats["source"]["sha256"] == "03f9cc27ae13a454cb4ea6cb620fb10546cc1194ef921441d1c5f34addff2748"
    assert stats["empty_texts"] == 7 and stats["users_dropped"] == 0
    per_split = ds.stats()["explanations"]
    assert sum(per_split.values()) == stats["explanations"]["total"] and min(per_split.values()) > 500
    assert 0.8 < stats["explanation_share"] < 0.95 and stats["lexicon_size"] == 1000
    train = ds.explanations_for("train")
    assert {e.user for e in ds.explanations} <= {e.user for e in train}
    assert {e.item for e in ds.explanations} <= {e.item for e in train}
    # The embedded `demo` is this conversion, shipped unchanged (benchmarks/make_demo_data.py).
    shipped = Path(__file__).resolve().parents[2] / "src" / "peapod" / "data" / "demo"
    for name in ("sequential_data.txt", "datamaps.json", "explanation.jsonl", "feature_lexicon.tsv"):
        assert (out / name).read_bytes() == (shipped / name).read_bytes(), name
    shipped_stats = json.loads((shipped / "reviews_stats.json").read_text())
    assert shipped_stats["source"].pop("path") == "../shared/data/amazon-mi/reviews_Musical_Instruments_5.json.gz"
    stats = json.loads((out / "reviews_stats.json").read_text())
    stats["source"].pop("path")
    assert stats == shipped_stats
