"""The benchmark grid: spec validation, cell planning, a tiny end-to-end grid on the demo data
(the smoke test of the real grid), resuming, and the Markdown aggregation with POD anchors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from train_runs import cli_env, peapod_cmd

from peapod.bench.grid import (
    POD_ANCHORS,
    Cell,
    GridError,
    grid_markdown,
    load_grid_spec,
    load_results,
    machine_text,
    plan_cells,
    run_grid,
    update_markdown_section,
)
from peapod.config import RECIPES, load_config

ROOT = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "t",
        "config": "tiny",
        "datasets": {"demo": "demo"},
        "variants": ["pod", "popularity"],
        "protocols": ["legacy", "rigorous"],
        "seeds": {"legacy": [0], "rigorous": [0, 1]},
        "budget": {"max_steps": 2},
        "eval": {"max_users": 5},
        "set": ["train.val_max_users=10"],
        "sasrec": {"dim": 16, "max_len": 10, "epochs": 1},
    }
    spec.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- spec and plan ----------------------------------------------------------------------------
def test_shipped_grid_specs_are_valid():
    for path in sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")):
        spec = load_grid_spec(path)
        load_config(spec.config if spec.config in RECIPES else ROOT / spec.config)  # a recipe, or a valid file
        assert plan_cells(spec)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"variants": ["pod", "t5"]}, "unknown variant"),
        ({"protocols": ["fast"]}, "unknown protocol"),
        ({"budget": {"max_steps": 0}}, "budget.max_steps"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"sasrec": {"depth": 3}}, "sasrec: unknown key"),
        ({"sasrec": {"val_users": "last"}}, "sasrec: SASRec val_users must be"),
        ({"eval": {"split": "train"}}, "split"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(tmp_path, changes, message):
    with pytest.raises(GridError, match=message):
        load_grid_spec(write_spec(tmp_path, **changes))


def test_a_missing_spec_or_unreadable_yaml_is_a_grid_error(tmp_path):
    with pytest.raises(GridError, match="not found"):
        load_grid_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(GridError, match="invalid YAML"):
        load_grid_spec(bad)


def test_plan_runs_popularity_once_per_protocol_and_sasrec_like_a_generative_variant(tmp_path):
    spec = load_grid_spec(write_spec(tmp_path, variants=["pod", "popularity", "sasrec"]))
    cells = plan_cells(spec)
    assert cells == [
        Cell("demo", "pod", "legacy", 0), Cell("demo", "pod", "rigorous", 0), Cell("demo", "pod", "rigorous", 1),
        Cell("demo", "popularity", "legacy", 0), Cell("demo", "popularity", "rigorous", 0),
        Cell("demo", "sasrec", "legacy", 0), Cell("demo", "sasrec", "rigorous", 0), Cell("demo", "sasrec", "rigorous", 1),
    ]
    assert plan_cells(spec, protocols=["legacy"], variants=["pod", "sasrec"]) == [
        Cell("demo", "pod", "legacy", 0), Cell("demo", "sasrec", "legacy", 0)]
    assert plan_cells(spec, seeds=[1]) == [Cell("demo", "pod", "rigorous", 1), Cell("demo", "popularity", "legacy", 0),
                                           Cell("demo", "popularity", "rigorous", 0), Cell("demo", "sasrec", "rigorous", 1)]
    # the protocols of a baseline share one trained model
    from peapod.bench.grid.run import run_key

    assert run_key(spec, Cell("demo", "sasrec", "legacy", 0)) == run_key(spec, Cell("demo", "sasrec", "rigorous", 0))
    with pytest.raises(GridError, match="beauty"):
        plan_cells(spec, datasets=["beauty"])
    with pytest.raises(GridError, match="p5"):
        plan_cells(spec, variants=["p5"])


# ---- one tiny grid on the demo data --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    spec_path = write_spec(tmp, seeds={"legacy": [0], "rigorous": [0]})
    out = tmp / "results"
    # Leftovers of a run killed before its first checkpoint must not stop the cell.
    stale = out / "runs" / "demo__pod__rigorous__seed0"
    stale.mkdir(parents=True)
    (stale / "log.jsonl").write_text('{"event": "train"')
    seen = []
    results = run_grid(spec_path, out, on_cell=lambda cell, result, computed: seen.append((cell, computed)))
    return spec_path, out, results, seen


def test_tiny_grid_writes_one_json_per_cell_with_its_protocol(tiny_grid):
    spec_path, out, results, seen = tiny_grid
    assert [(c.variant, c.protocol, computed) for c, computed in seen] == [
        ("pod", "legacy", True), ("pod", "rigorous", True), ("popularity", "legacy", True), ("popularity", "rigorous", True)]
    files = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert files == ["demo__pod__legacy__seed0.json", "demo__pod__rigorous__seed0.json",
                     "demo__popularity__legacy__seed0.json", "demo__popularity__rigorous__seed0.json"]
    legacy, rigorous, pop_legacy, pop = (json.loads((out / "cells" / f).read_text()) for f in files)
    # the field's history rule is the rigorous protocol's, for every model; legacy keeps the published one
    assert rigorous["tasks"]["sequential"]["history"] == pop["tasks"]["sequential"]["history"] == "excluded"
    assert legacy["tasks"]["sequential"]["history"] == pop_legacy["tasks"]["sequential"]["history"] == "included"
    assert pop["evaluation"]["history"] == "excluded"
    assert legacy["evaluation"]["indexing"] == "p5-sequential" and rigorous["evaluation"]["indexing"] == "random"
    assert legacy["tasks"]["sequential"]["decoding"] == "beam" and rigorous["tasks"]["sequential"]["decoding"] == "full"
    assert legacy["tasks"]["topn"]["decoding"] == "beam" and rigorous["tasks"]["topn"]["decoding"] == "score"
    assert set(legacy["tasks"]) == {"sequential", "topn", "explanation"}  # the demo has explanations
    for r in (legacy, rigorous, pop):
        assert r["format"] == "peapod-grid-cell/1" and r["machine"]["cpu_count"] >= 1
        assert r["machine"]["cpu_isa"] == torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512"
        for task in ("sequential", "topn"):
            sec = r["tasks"][task]
            assert sec["users"] == 5 and 0.0 <= sec["invalid_output_rate"] <= 1.0
            assert all(0.0 <= v <= 1.0 for v in sec["metrics"].values())
    assert legacy["training"]["steps"] == 2 and legacy["config"]["train"]["max_steps"] == 2
    assert legacy["config"]["model"]["variant"] == "pod" and legacy["config"]["train"]["seed"] == 0
    assert legacy["command"].startswith("peapod bench grid ") and "--variants pod" in legacy["command"]
    assert "--protocols legacy" in legacy["command"] and "--seeds 0" in legacy["command"]
    assert pop["tasks"]["topn"]["candidates"].startswith("1+99 sampled, fixed file")


def test_finished_cells_are_never_recomputed(tiny_grid):
    spec_path, out, results, _ = tiny_grid
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    seen = []
    again = run_grid(spec_path, out, on_cell=lambda cell, result, computed: seen.append(computed))
    assert seen == [False, False, False, False]
    assert again == results
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} == before


def test_a_cell_recomputed_in_a_fresh_folder_reproduces_its_row(tiny_grid, tmp_path):
    spec_path, out, results, _ = tiny_grid
    again = run_grid(spec_path, tmp_path / "again", variants=["pod"], protocols=["legacy"])
    first = next(r for r in results if r["cell"]["variant"] == "pod" and r["cell"]["protocol"] == "legacy")
    assert again[0]["training"]["weights_sha256"] == first["training"]["weights_sha256"]
    assert {t: s["metrics"] for t, s in again[0]["tasks"].items()} == {t: s["metrics"] for t, s in first["tasks"].items()}


def test_a_trained_run_is_re_read_only_under_its_own_configuration(tiny_grid, tmp_path):
    """A cell whose run finished is evaluated again without training; a recipe changed since is refused."""
    import shutil

    spec_path, out, results, _ = tiny_grid
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    (copy / "cells" / "demo__pod__rigorous__seed0.json").unlink()
    again = run_grid(spec_path, copy, variants=["pod"], protocols=["rigorous"])
    first = next(r for r in results if r["cell"]["variant"] == "pod" and r["cell"]["protocol"] == "rigorous")
    assert again[0]["training"] == first["training"]  # read back from the run, not retrained
    (copy / "cells" / "demo__pod__rigorous__seed0.json").unlink()
    changed = write_spec(tmp_path, seeds={"legacy": [0], "rigorous": [0]}, set=["train.val_max_users=10", "train.lr=0.002"])
    with pytest.raises(GridError, match=r"trained under another configuration \(train.lr: trained 0.003, cell 0.002\)"):
        run_grid(changed, copy, variants=["pod"], protocols=["rigorous"])
    # a run from before a switch existed was trained as under its default: re-read at the default, refused otherwise
    saved = copy / "runs" / "demo__pod__rigorous__seed0" / "config.json"
    older = json.loads(saved.read_text())
    del older["runtime"]["dropout_masks"]
    saved.write_text(json.dumps(older))
    assert run_grid(spec_path, copy, variants=["pod"], protocols=["rigorous"])[0]["training"] == first["training"]
    (copy / "cells" / "demo__pod__rigorous__seed0.json").unlink()
    switched = write_spec(tmp_path, seeds={"legacy": [0], "rigorous": [0]}, set=["train.val_max_users=10", "runtime.dropout_masks=bernoulli"])
    with pytest.raises(GridError, match=r"runtime.dropout_masks: trained 'chunked', cell 'bernoulli'"):
        run_grid(switched, copy, variants=["pod"], protocols=["rigorous"])


def test_bench_grid_cli_dry_run_and_report(tiny_grid, tmp_path):
    spec_path, out, _, _ = tiny_grid
    env = cli_env()
    dry = subprocess.run(peapod_cmd("bench", "grid", spec_path, "--out", out, "--dry-run"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[0] for line in dry.stdout.splitlines()] == ["done"] * 4
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\nhand-written text\n")
    rep = subprocess.run(peapod_cmd("bench", "report", spec_path, "--out", out, "--markdown", bench_md),
                         capture_output=True, text=True, env=env, timeout=120)
    assert rep.returncode == 0, rep.stderr
    text = bench_md.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert text.count("<!-- grid:t:begin -->") == 1 and "| pod |" in text and "| popularity |" in text
    bad = subprocess.run(peapod_cmd("bench", "grid", spec_path, "--variants", "sasrec,bert4rec"),
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "bert4rec" in bad.stderr


# ---- aggregation ------------------------------------------------------------------------------
def fake_result(dataset, variant, protocol, seed, seq, topn, indexing="p5-sequential"):
    return {
        "cell": {"dataset": dataset, "variant": variant, "protocol": protocol, "seed": seed},
        "command": f"peapod bench grid g.yaml --datasets {dataset} --variants {variant}",
        "machine": {"cpu": "cpu", "cpu_count": 2, "gpu": None}, "started": "2026-12-03T00:00:00+00:00",
        "peapod_version": "0", "training": {"steps": 10, "train_seconds": 60},
        "tasks": {
            "sequential": {"users": 100, "invalid_output_rate": 0.1, "metrics": {"HR@5": seq, "NDCG@5": seq / 2, "HR@10": seq, "NDCG@10": seq / 2, "NDCG@20": seq / 2}},
            "topn": {"users": 100, "invalid_output_rate": 0.0, "metrics": {"HR@5": topn, "NDCG@5": topn / 2, "NDCG@10": topn / 2}},
        },
    }


def test_markdown_has_pod_anchor_ratios_mean_std_and_target_checks():
    anchor = POD_ANCHORS["toys"]
    results = [
        fake_result("toys", "pod", "legacy", 0, anchor["seq HR@5"] * 0.5, anchor["top-n HR@5"] * 0.5),
        fake_result("toys", "peapod-neighbors", "legacy", 0, anchor["seq HR@5"] * 1.2, anchor["top-n HR@5"] * 2.0),
        fake_result("toys", "peapod-neighbors", "rigorous", 0, 0.02, 0.3),
        fake_result("toys", "peapod-neighbors", "rigorous", 1, 0.04, 0.3),
        fake_result("toys", "sasrec", "any", 0, 0.05, 0.4),
        fake_result("toys", "pod", "rigorous", 0, 0.01, 0.2),
        fake_result("toys", "pod", "rigorous", 1, 0.01, 0.2),
    ]
    md = grid_markdown(results)
    assert "| POD (logged) | 6.91 | 5.99 | 14.33 | 10.09 |" in md
    assert "| peapod-neighbors / POD | 1.20× |" in md and "| pod / POD | 0.50× |" in md
    assert "| peapod-neighbors | 3.00 ± 1.41 | 1.50 ± 0.71 |" in md  # rigorous seq HR@10, NDCG@10 over 2 seeds
    assert "seq NDCG@10 ≥ SASRec's: not met (1.50 vs 2.50, 0.60×)" in md
    assert "top-n HR@5 ≥ SASRec's: not met (30.00 vs 40.00, 0.75×)" in md
    # paired over seeds 0 and 1: seq NDCG@10 differences 0.5 and 1.5 points, top-n HR@5 10 and 10
    assert "pod seq NDCG@10 over seeds 0,1: +1.00 ± 0.71 (mean ± std of the paired differences): does not beat POD" in md
    assert "pod top-n HR@5 over seeds 0,1: +10.00 ± 0.00 (mean ± std of the paired differences): beats POD" in md
    # seq NDCG@5 is 0.5 * 1.2 * HR@5 = 0.0415 vs POD's 0.0599: not 1.10x on every metric.
    assert "≥ 1.10 × POD's logged seq/top-n HR@5, NDCG@5: not met" in md
    assert "legacy, peapod-neighbors beats pod in the same harness: higher in 6 of 6 columns" in md


def test_machine_text_names_the_isa_where_the_cell_recorded_it():
    old = {"cpu": "AMD EPYC", "cpu_count": 2, "gpu": None}
    assert machine_text(old) == "AMD EPYC (2 cores)"
    assert machine_text(dict(old, cpu_isa="AVX512")) == "AMD EPYC (2 cores, AVX512)"
    assert machine_text(dict(old, cpu_isa="AVX2", gpu="NVIDIA H100")) == "AMD EPYC (2 cores, AVX2), GPU NVIDIA H100"
    results = [fake_result("toys", "pod", "rigorous", 0, 0.01, 0.2), fake_result("toys", "pod", "rigorous", 1, 0.01, 0.2)]
    results[1]["machine"] = dict(old, cpu_isa="AVX512")
    assert "Measured on AMD EPYC (2 cores, AVX512); cpu (2 cores), " in grid_markdown(results)


def test_update_markdown_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "B.md"
    update_markdown_section(path, "a", "first")
    update_markdown_section(path, "b", "other grid")
    update_markdown_section(path, "a", "second")
    text = path.read_text()
    assert "first" not in text and text.count("second") == 1 and "other grid" in text
    assert text.index("grid:a:begin") < text.index("grid:b:begin")  # kept in place


def test_load_results_on_an_empty_folder(tmp_path):
    assert load_results(tmp_path) == []
    assert "No cell" in grid_markdown([])


def test_ablations_are_extra_generative_variants_with_their_overrides(tmp_path):
    from peapod.bench.grid import _generative_overrides

    spec = load_grid_spec(write_spec(tmp_path, ablations={"peapod-k3": {"base": "peapod-neighbors", "set": ["model.n_neighbors=3"]}},
                                     variants=["pod", "peapod-k3"], set=["train.lr=0.01"]))
    cells = plan_cells(spec, protocols=["legacy"])
    assert cells == [Cell("demo", "pod", "legacy", 0), Cell("demo", "peapod-k3", "legacy", 0)]
    # An ablation left out of `variants` runs only when named.
    spec2 = load_grid_spec(write_spec(tmp_path, ablations={"peapod-k3": {"base": "peapod-neighbors", "set": ["model.n_neighbors=3"]}}))
    assert all(c.variant != "peapod-k3" for c in plan_cells(spec2))
    assert plan_cells(spec2, variants=["peapod-k3"], protocols=["legacy"]) == [Cell("demo", "peapod-k3", "legacy", 0)]
    assert cells[1].generative
    over = _generative_overrides(spec, cells[1], ["sequential"])
    i = over.index("model.variant=peapod")
    assert over[i : i + 3] == ["model.variant=peapod", "model.composer=neighbors", "model.n_neighbors=3"]
    assert over[-1] == "train.lr=0.01" and "train.max_steps=2" in over  # the spec's own overrides apply last
    rows = [fake_result("demo", "peapod-k3", "legacy", 0, 0.1, 0.2), fake_result("demo", "pod", "legacy", 0, 0.1, 0.2)]
    md = grid_markdown(rows)
    assert md.index("| pod |") < md.index("| peapod-k3 |")  # built-in variants first, ablations after
    with pytest.raises(GridError, match="base must be one of"):
        load_grid_spec(write_spec(tmp_path, ablations={"x": {"base": "sasrec", "set": ["model.n_heads=1"]}}))
    with pytest.raises(GridError, match="clash"):
        load_grid_spec(write_spec(tmp_path, ablations={"pod": {"base": "pod", "set": ["model.n_heads=1"]}}))
    with pytest.raises(GridError, match="unknown variant"):
        load_grid_spec(write_spec(tmp_path, variants=["peapod-k9"]))


def test_variant_set_applies_to_one_variant_and_protocols_with_one_indexing_share_a_run(tmp_path):
    from peapod.bench.grid import _generative_overrides
    from peapod.bench.grid.run import run_key

    spec = load_grid_spec(write_spec(tmp_path, variants=["p5", "pod"], variant_set={"p5": ["train.lr=0.5"]}))
    p5, pod = (Cell("demo", v, "legacy", 0) for v in ("p5", "pod"))
    assert "train.lr=0.5" in _generative_overrides(spec, p5, ["sequential"])
    assert "train.lr=0.5" not in _generative_overrides(spec, pod, ["sequential"])
    legacy, rigorous = Cell("demo", "pod", "legacy", 1), Cell("demo", "pod", "rigorous", 1)
    assert run_key(spec, legacy) != run_key(spec, rigorous)  # p5-sequential vs random indexing: two models
    shared = load_grid_spec(write_spec(tmp_path, indexing={"legacy": "random", "rigorous": "random"}))
    assert run_key(shared, legacy) == run_key(shared, rigorous) == "demo__pod__legacy__seed1"
    over = _generative_overrides(shared, rigorous, ["sequential"])
    assert "index.strategy=random" in over and "eval.protocol=legacy" in over  # the shared run's config
    assert run_key(shared, Cell("demo", "popularity", "rigorous", 0)) == "demo__popularity__seed0"
    with pytest.raises(GridError, match="variant_set names sasrec"):
        load_grid_spec(write_spec(tmp_path, variant_set={"sasrec": ["train.lr=0.5"]}))


def test_dataset_set_applies_to_one_dataset_and_an_ablation_lever_still_wins(tmp_path):
    from peapod.bench.grid import _generative_overrides
    from peapod.config import load_config

    spec = load_grid_spec(write_spec(
        tmp_path, datasets={"demo": "demo", "other": "demo"}, dataset_set={"other": ["train.epochs=4"]},
        ablations={"epochs-1": {"base": "pod", "set": ["train.epochs=1"]}}, variants=["pod", "epochs-1"],
    ))
    def epochs(cell: Cell) -> int:
        return load_config(spec.config, _generative_overrides(spec, cell, ["sequential"])).train.epochs

    base = load_config(spec.config).train.epochs
    assert base not in (1, 4)
    assert epochs(Cell("demo", "pod", "rigorous", 0)) == base
    assert epochs(Cell("other", "pod", "rigorous", 0)) == 4
    assert epochs(Cell("other", "epochs-1", "rigorous", 0)) == 1
    with pytest.raises(GridError, match="dataset_set names sports"):
        load_grid_spec(write_spec(tmp_path, dataset_set={"sports": ["train.epochs=4"]}))
