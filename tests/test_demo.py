"""`peapod demo`: its recipe is the laptop recipe sized for the demo data, --out safety, and a --quick run end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from peapod.cli import app
from peapod.config import load_config
from peapod.data import load_dataset
from peapod.demo import DEMO_OUTPUTS, demo_config, prepare_out_dir
from peapod.train.loop import LANGUAGE_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_recipe_is_the_laptop_recipe_sized_for_the_demo_data():
    demo, laptop = demo_config(), load_config("laptop")
    assert demo.data.path == "demo"
    assert demo.objective.kind == laptop.objective.kind == "dense"  # the same objective: only sizes differ
    for section in ("index", "model"):
        for key in ("strategy",) if section == "index" else ("variant", "composer", "backbone", "item_init"):
            assert getattr(getattr(demo, section), key) == getattr(getattr(laptop, section), key), f"{section}.{key}"
    # The demo's explanation task learns its language alone first (a readable sentence); --quick skips that.
    assert demo.train.language_epochs > 0 and demo.train.max_minutes and LANGUAGE_DIR in DEMO_OUTPUTS
    quick = demo_config(quick=True)
    assert quick.train.max_steps and quick.data.path == "demo" and quick.train.language_epochs == 0


def _demo_users() -> str:
    return f"{load_dataset('demo').n_users:,}"


def test_out_dir_must_be_empty_unless_forced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    (out / "best").mkdir()
    (out / "best" / "model.safetensors").write_text("old")
    (out / "log.jsonl").write_text("{}\n")
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: output directory")
    assert _demo_users() in r.stdout or _demo_users().replace(",", "") in r.stdout  # the dataset stats still come first
    prepare_out_dir(out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # only demo outputs are removed
    assert "log.jsonl" in DEMO_OUTPUTS
    (tmp_path / "file").write_text("x")
    assert CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "file")]).exit_code == 2


def first_test_explanation() -> tuple[str, str, str]:
    from peapod.data import load_dataset

    ds = load_dataset("demo")
    r = ds.explanations_for("test")[0]
    return ds.user_ids[r.user], ds.item_ids[r.item], r.text


def test_demo_quick_end_to_end(tmp_path):
    import matplotlib.image

    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output + str(r.exception)
    text = r.stdout
    # dataset stats first, then metrics of both protocols, a top-10 and an explanation
    assert text.index("users") < text.index("interactions") < text.index("metrics")
    head = text.split("metrics")[0]
    assert _demo_users() in head or _demo_users().replace(",", "") in head
    assert "legacy" in text and "rigorous" in text and "HR@10" in text and "BLEU-4" in text
    assert "top-10 for user" in text
    assert sum(1 for line in text.splitlines() if "log-likelihood" in line) == 10
    assert "why item" in text

    for protocol in ("legacy", "rigorous"):
        metrics = json.loads((out / f"metrics_{protocol}.json").read_text())
        assert metrics["protocol"] == protocol and set(metrics["tasks"]) == {"sequential", "topn", "explanation"}
    example = json.loads((out / "example.json").read_text())
    assert len(example["items"]) == 10 and isinstance(example["explanation"], str)
    # one test record's three sentences, printed one under another, in example.json and in the report
    sentences = example["sentences"]
    first = first_test_explanation()
    assert (sentences["user"], sentences["item"], sentences["real"]) == first
    assert sentences["retrieved"] and sentences["retrieved"] != sentences["real"]
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.strip().startswith(("generated:", "retrieved:", "real:"))]
    assert len(at) == 3 and at == list(range(at[0], at[0] + 3))
    assert lines[at[2]].split("real:", 1)[1].strip() == sentences["real"]

    report = (out / "report.md").read_text()
    assert f"- real: *{sentences['real']}*" in report and f"- retrieved: *{sentences['retrieved']}*" in report
    assert "![training curves](training_curves.png)" in report and "![metrics by task](metrics.png)" in report
    assert "| task | metric | legacy | rigorous | popularity |" in report
    assert "popularity" in text.split("top-10 for user")[0]  # a column of the printed table
    for name in ("training_curves.png", "metrics.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_stats_only_prints_the_dataset_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["demo", "--stats-only"])
    assert r.exit_code == 0, r.output
    assert "1,429" in r.stdout and "train 7,788 / val 741 / test 665" in r.stdout and "training" not in r.stdout
    assert list(tmp_path.iterdir()) == []
