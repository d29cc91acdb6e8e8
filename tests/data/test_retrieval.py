"""The explanation retrieval baseline: its rule on a tiny case, its metrics file, `peapod bench retrieval`, the grid cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peapod.baselines.retrieval import ExplanationRetrieval, evaluate_retrieval
from peapod.cli import app
from peapod.data import Dataset, Explanation
from peapod.data.reviews.convert import convert_reviews

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "reviews_small.json"
runner = CliRunner()

TRAIN = [
    Explanation(0, 0, "warm rich tone", "tone", "train"),
    Explanation(1, 0, "the strap is long", "strap", "train"),
    Explanation(0, 1, "rich warm sound from this amp", "sound", "train"),
    Explanation(2, 2, "the strap is long", "strap", "train"),
    Explanation(1, 5, "bright display", "display", "train"),
    Explanation(2, 5, "quick setup", "setup", "train"),
]


@pytest.fixture(scope="module")
def model():
    return ExplanationRetrieval().fit(TRAIN)


@pytest.mark.parametrize(
    "user, item, expected",
    [
        (0, 0, ("warm rich tone", "item")),  # the item's sentence closest to how user 0 writes
        (1, 0, ("the strap is long", "item")),
        (0, 5, ("bright display", "item")),  # both score 0 for user 0: the earlier record
        (9, 0, ("warm rich tone", "item")),  # unseen user: the item's most typical sentence (a tie: the earlier)
        (1, 9, ("the strap is long", "user")),  # unseen item: the user's own sentence
        (9, 9, ("the strap is long", "global")),  # unseen both: closest to all training sentences
    ],
)
def test_retrieval_rule(model, user, item, expected):
    assert model.explain(user, item) == expected


@pytest.mark.parametrize(
    "record, expected",
    [
        # user 0 on item 0: the item's other sentence (record 1); the profile keeps only user 0's record 2
        (0, ("the strap is long", "item")),
        # user 2 on item 2: the item has no other sentence -> user 2's other sentence
        (3, ("quick setup", "user")),
        # user 1 on item 5: the item's other sentence, scored against user 1's other record (ties: the earlier)
        (4, ("quick setup", "item")),
    ],
)
def test_leave_one_out_never_sees_the_record_itself(model, record, expected):
    assert model.explain(TRAIN[record].user, TRAIN[record].item, exclude=record) == expected


def test_leave_one_out_answers_every_training_record_without_its_own_sentence(model):
    contexts = model.leave_one_out()
    assert len(contexts) == len(TRAIN)
    assert contexts == [model.explain(r.user, r.item, exclude=k)[0] for k, r in enumerate(TRAIN)]
    # record 3's sentence also exists as record 1: leaving record 3 out must not leave its twin out
    assert all(c != r.text or sum(t.text == r.text for t in TRAIN) > 1 for c, r in zip(contexts, TRAIN))
    alone = ExplanationRetrieval().fit(TRAIN[:1])
    assert alone.leave_one_out() == [""]


def test_no_training_sentences_is_an_invalid_output():
    assert ExplanationRetrieval().fit([]).explain(0, 0) == ("", "none")


def _dataset(with_val: bool = True) -> Dataset:
    exps = list(TRAIN) + [Explanation(1, 0, "the strap is long", "strap", "test")]
    if with_val:
        exps.append(Explanation(2, 1, "rich tone", "tone", "val"))
    return Dataset(name="tiny", user_ids=["a", "b", "c"], item_ids=[str(k) for k in range(6)],
                   sequences=[[0, 1, 2], [3, 4, 5], [0, 2, 5]], explanations=exps)


def test_evaluate_retrieval_metrics_and_protocol():
    result = evaluate_retrieval(_dataset())
    sec = result["tasks"]["explanation"]
    assert result["format"] == "peapod-metrics/1" and result["protocol"].startswith("retrieval")
    assert set(result["protocol_details"]) == {"legacy", "rigorous"} and result["variant"] == "retrieval"
    assert sec["records"] == 1 and sec["train_records"] == 6 and sec["sources"]["item"] == 1
    m = sec["metrics"]
    assert m["BLEU-4"] == pytest.approx(100.0) and m["ROUGE-1-F"] == pytest.approx(100.0, abs=1e-4)
    assert m["SacreBLEU"] == pytest.approx(100.0) and m["FHR"] == m["FMR"] == 1.0 and m["USR"] > 0 and "sacrebleu_signature" in sec
    # Without validation records a trained model holds out part of train; the baseline learns from the same rest.
    assert evaluate_retrieval(_dataset(with_val=False))["tasks"]["explanation"]["train_records"] == 5
    assert evaluate_retrieval(_dataset(), "val")["tasks"]["explanation"]["records"] == 1


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fx") / "fixture"
    convert_reviews(FIXTURE, out, min_df=2, seed=10)
    return out


def test_cli_bench_retrieval_writes_metrics(reviews_dir, tmp_path):
    target = tmp_path / "m.json"
    result = runner.invoke(app, ["bench", "retrieval", str(reviews_dir), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert "explanation [retrieval]" in result.output and "BLEU-4" in result.output
    metrics = json.loads(target.read_text())
    sec = metrics["tasks"]["explanation"]
    assert metrics["dataset"]["path"] == str(reviews_dir) and sec["records"] == 1
    # The test record is BOB's cable; the cable's other training sentences are ALICE's and CAROL's.
    assert sec["sources"] == {"item": 1, "user": 0, "global": 0, "none": 0}


def test_cli_bench_retrieval_needs_explanations(tmp_path):
    (tmp_path / "sequential_data.txt").write_text("1 1 2 3\n")
    result = runner.invoke(app, ["bench", "retrieval", str(tmp_path), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {tmp_path} has no explanation records (explanation.json / explanation.jsonl)"]


def test_grid_retrieval_cell(reviews_dir, tmp_path):
    from peapod.bench.grid import Cell, grid_markdown, load_grid_spec, plan_cells, run_grid

    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "r", "config": "tiny",
                                         "datasets": {"fx": str(reviews_dir)}, "variants": ["retrieval"]}))
    spec = load_grid_spec(spec_path)
    assert plan_cells(spec) == [Cell("fx", "retrieval", "any", 0)]
    [cell] = run_grid(spec_path, tmp_path / "results")
    assert cell["cell"]["variant"] == "retrieval" and set(cell["tasks"]) == {"explanation"}
    assert cell["evaluation"]["protocol"].startswith("retrieval")
    assert "| retrieval |" in grid_markdown([cell], spec, spec_path)


def test_reference_tokenizer_cuts_legacy_references_only(tmp_path):
    from peapod.inputs.tokenizer import train_tokenizer

    tok = train_tokenizer([e.text for e in TRAIN] * 5, vocab_size=64)
    tok.save_pretrained(str(tmp_path / "best" / "tokenizer"))
    result = evaluate_retrieval(_dataset(), reference_tokenizer=tmp_path, truncate_references=2)
    sec = result["tasks"]["explanation"]
    assert sec["references_truncated_to_tokens"] == 2 and sec["reference_tokenizer"] == str(tmp_path / "best" / "tokenizer")
    assert sec["metrics"]["ROUGE-1-P"] < 100.0  # the legacy reference lost words; the hypothesis did not
    assert sec["metrics"]["rouge-score-rouge1-F"] == pytest.approx(100.0)  # rigorous: whole references
    assert "cut to the reference tokenizer" in result["protocol_details"]["legacy"]
