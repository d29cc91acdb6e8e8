"""Run configuration: YAML + `--set` overrides validated by pydantic, and the `peapod train` command's
handling of bad configurations (one `error:` line, exit code 2, no run directory left behind).

Nothing here trains a model; the CLI cases all stop before training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from peapod.cli import app
from peapod.config import OLD_KEYS, RECIPES, ConfigError, RunConfig, load_config, saved_config
from peapod.model.peapod import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = "tiny"


def _write_yaml(path: Path, obj) -> Path:
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return path


# ---- load_config ------------------------------------------------------------------------------
def test_defaults_validate_and_match_the_models():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.path is None
    assert cfg.train.tasks == ["sequential", "topn", "explanation"]
    assert cfg.objective.kind == "dense"
    assert cfg == RunConfig()


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load_by_name(name):
    cfg = load_config(name)
    assert cfg.train.epochs >= 1
    assert set(cfg.train.tasks) == {"sequential", "topn", "explanation"}


def test_tiny_yaml_is_the_documented_smoke_config():
    cfg = load_config(TINY)
    assert cfg.data.path == "demo-toys"  # the small embedded Toys subset keeps the 3-epoch run short
    assert cfg.model.backbone == "tiny"
    assert cfg.train.epochs == 3  # the acceptance: three epochs, val loss of each task goes down
    assert cfg.train.tasks == ["sequential", "topn", "explanation"]


def test_set_values_are_parsed_as_yaml_scalars():
    cfg = load_config(
        None,
        [
            "train.lr=1e-3",  # YAML 1.1 reads this as a string; the float field must still get a float
            "train.batch_size=16",
            "runtime.bf16=false",
            "train.max_steps=",  # empty -> null
            "train.tasks=[sequential, topn]",
            "eval.seeds=[1, 2, 3]",
            "model.composer=pool",
            "train.val_max_users=null",
        ],
    )
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.batch_size == 16 and isinstance(cfg.train.batch_size, int)
    assert cfg.runtime.bf16 is False
    assert cfg.train.max_steps is None
    assert cfg.train.tasks == ["sequential", "topn"]
    assert cfg.eval.seeds == [1, 2, 3]
    assert cfg.model.composer == "pool"
    assert cfg.train.val_max_users is None


def test_set_overrides_a_file_key_by_key(tmp_path):
    # A file with a partial `train` section and no `eval` section: overrides replace single keys,
    # leave their siblings alone, create missing sections, and the last of repeated overrides wins.
    path = _write_yaml(tmp_path / "c.yaml", {"data": {"path": "demo"}, "train": {"lr": 0.01, "epochs": 7}})
    cfg = load_config(path, ["train.lr=0.5", "eval.max_users=5", "train.epochs=2", "train.epochs=4"])
    assert cfg.train.lr == 0.5
    assert cfg.train.epochs == 4
    assert cfg.data.path == "demo"  # untouched section
    assert cfg.eval.max_users == 5  # section created by the override
    assert cfg.train.batch_size == RunConfig().train.batch_size  # untouched key keeps its default


def test_values_after_the_first_equals_sign_belong_to_the_value():
    cfg = load_config(None, ["data.path=a=b.csv"])
    assert cfg.data.path == "a=b.csv"


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.lr", "--set expects section.key=value, got 'train.lr'"),
        ("lr=0.1", "--set key must name a section and a key (e.g. train.lr), got 'lr'"),
        ("train.tasks=[topn", "--set train.tasks: cannot parse value '[topn'"),
        ("train.lr.x=1", "--set train.lr.x=1: lr is not a section"),
    ],
)
def test_set_parse_errors(tmp_path, item, message):
    path = _write_yaml(tmp_path / "c.yaml", {"train": {"lr": 0.01}})
    with pytest.raises(ConfigError) as e:
        load_config(path, [item])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.lrr=0.1"], "train.lrr: unknown key"),
        (["trian.lr=0.1"], "trian: unknown key"),
        (["train.lr=-0.001"], "train.lr: Input should be greater than 0"),
        (["train.lr=0"], "train.lr: Input should be greater than 0"),
        (["train.batch_size=abc"], "train.batch_size: Input should be a valid integer"),
        (["train.batch_size=2.5"], "train.batch_size: Input should be a valid integer"),
        (["objective.kind=published", "objective.schedule=roundrobin"], "objective.schedule: Input should be 'rotate' or 'mixed'"),
        (["train.tasks=[sequential, rating]"], "train.tasks.1: Input should be 'sequential', 'topn' or 'explanation'"),
        (["model.variant=p6"], "model.variant: Input should be 'p5', 'pod' or 'peapod'"),
        (["data.explanation_val_fraction=1.0"], "data.explanation_val_fraction: Input should be less than 1"),
    ],
)
def test_validation_errors_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert msg.startswith("invalid config (defaults): ")
    assert expected in msg
    assert "\n" not in msg  # one line


def test_all_problems_are_reported_in_one_message(tmp_path):
    path = _write_yaml(tmp_path / "bad.yaml", {"train": {"lr": -1, "colour": "red"}, "model": {"cf_dim": "big"}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"invalid config {path}: ")
    for part in ("train.lr: Input should be greater than 0", "train.colour: unknown key", "model.cf_dim: Input should be a valid integer"):
        assert part in msg
    assert msg.count("; ") == 2


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        load_config(bad)
    assert "\n" not in str(e.value) and "line 2, column 1" in str(e.value)  # one line, with the place
    listy = _write_yaml(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty) == RunConfig()


def test_resolved_config_round_trips_through_json(tmp_path):
    # `peapod train` saves cfg.model_dump() as RUN/config.json and `--resume` reads it back with load_config.
    cfg = load_config(TINY, ["train.lr=1e-3", "train.max_steps=24", "eval.seeds=[0, 1]"])
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(cfg.model_dump(), indent=2), encoding="utf-8")
    assert load_config(saved) == cfg


def test_architecture_carries_the_model_section_and_the_training_seed():
    cfg = load_config(TINY, ["train.seed=7", "model.n_neighbors=4", "model.variant=pod"])
    arch = cfg.architecture()
    assert isinstance(arch, ModelConfig)
    assert arch.seed == 7 and arch.n_neighbors == 4 and arch.variant == "pod"
    assert arch.cf_dim == cfg.model.cf_dim == 32


def test_assignment_is_validated():
    cfg = load_config()
    with pytest.raises(ValueError):
        cfg.train.lr = -1.0


# ---- `peapod train` with a bad configuration ------------------------------------------------------
runner = CliRunner()


def _train(*args: str):
    return runner.invoke(app, ["train", *args])


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "config, args, expected",
    [
        ({"data": {"path": "demo"}, "train": {"learning_rate": 0.1}}, [], "train.learning_rate: unknown key"),
        ({"data": {"path": "demo"}}, ["--set", "train.lr=-1e-3"], "train.lr: Input should be greater than 0"),
        ({"data": {"path": "demo"}, "train": {"epochs": "three"}}, [], "train.epochs: Input should be a valid integer"),
        ({"data": {"path": "demo"}}, ["--set", "train.epochs"], "--set expects section.key=value, got 'train.epochs'"),
        ({"data": {"path": "demo"}}, ["--set", "train.tasks=[topn"], "--set train.tasks: cannot parse value"),
        ({"data": {"path": "/nonexistent/peapod-data"}}, [], "data path does not exist: /nonexistent/peapod-data"),
        ({"train": {"epochs": 1}}, [], "no data: set data.path in the config or pass --data"),
        ({"data": {"path": "demo"}}, ["--data", "/nonexistent/[odd] #name"], "data path does not exist: /nonexistent/[odd] #name"),
        ({"data": {"path": "demo"}, "model": {"backbone": "/nonexistent/t5"}}, [], "model.backbone '/nonexistent/t5' is neither a preset"),
    ],
    ids=["unknown-key", "negative-lr", "wrong-type", "set-without-value", "set-bad-yaml", "missing-data", "no-data", "odd-data-path", "bad-backbone"],
)
def test_bad_config_is_one_error_exit_2_and_no_run_dir(tmp_path, config, args, expected):
    path = _write_yaml(tmp_path / "c.yaml", config)
    run = tmp_path / "run"
    result = _train("--config", str(path), "--out", str(run), *args)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert expected in line
    assert not run.exists()


def test_missing_config_file(tmp_path):
    run = tmp_path / "run"
    result = _train("--config", str(tmp_path / "nope.yaml"), "--out", str(run))
    assert result.exit_code == 2
    assert "config file not found" in _one_error_line(result)
    assert not run.exists()


def test_non_empty_run_dir_is_refused_and_left_alone(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    result = _train("--config", str(TINY), "--out", str(run))
    assert result.exit_code == 2
    assert "is not empty; use --resume" in _one_error_line(result)
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    result = _train("--config", str(TINY), "--out", str(out))
    assert result.exit_code == 2
    assert "is a file, not a run directory" in _one_error_line(result)


def test_resume_needs_a_run_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = _train("--resume", "--out", str(run))
    assert result.exit_code == 2
    assert "nothing to resume" in _one_error_line(result)
    assert not run.exists()
    # A run directory killed before its first checkpoint: config.json but no checkpoint/.
    run.mkdir()
    (run / "config.json").write_text(json.dumps(load_config(TINY).model_dump()))
    result = _train("--resume", "--out", str(run))
    assert result.exit_code == 2
    assert "holds no checkpoint" in _one_error_line(result)


# ---- the objective, recipes by name, configs saved before the objective ----------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_defaults_are_the_laptop_recipe_and_paper_is_the_published_objective():
    assert load_config("laptop") == RunConfig()
    cfg = RunConfig()
    assert cfg.objective.kind == "dense" and cfg.index.strategy == "atomic" and cfg.model.item_init == "cf"
    assert (cfg.objective.item_targets, cfg.objective.decoder_history) == (5, 1)
    paper = load_config("paper")
    assert paper.objective.kind == "published" and paper.index.strategy == "p5-sequential"
    assert paper.model.backbone == "t5-small" and paper.model.n_neighbors == 20 and paper.train.lr == 5e-4
    arch = paper.architecture()
    assert (arch.topn_input, arch.item_targets, arch.history_order) == ("candidates", 1, "oldest-first")


def test_a_recipe_name_is_read_from_the_package_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    assert load_config("demo").data.path == "demo"
    monkeypatch.chdir(tmp_path)
    _write_yaml(tmp_path / "demo", {"data": {"path": "mine"}})
    assert load_config("demo").data.path == "mine"
    with pytest.raises(ConfigError, match="a YAML file, or a recipe: laptop, demo, tiny, paper"):
        load_config("laptops")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["index.strategy=p5-sequential", "model.item_init=random"], "objective dense (item tokens, k next items) needs index.strategy atomic"),
        (["model.variant=p5"], "model.variant p5 needs objective.kind published"),
        (["objective.kind=published", "index.strategy=random"], "model.item_init cf needs index.strategy atomic"),
        (["model.cf_trainable=true"], "needs model.cf_trainable false"),
        (["objective.decoder_history=5"], "objective.decoder_history 5 needs objective.item_targets > it"),
        (["objective.kind=published", "objective.item_targets=3"], "objective.item_targets: unknown key"),
        (["objective.kind=dense", "objective.topn_candidates=20"], "objective.topn_candidates: unknown key"),
    ],
)
def test_a_half_of_each_objective_cannot_be_written(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert expected in str(e.value)


def test_switching_the_objective_kind_drops_the_other_objectives_settings():
    cfg = load_config("demo", ["objective.kind=published", "objective.topn_candidates=20"])
    assert cfg.objective.kind == "published" and cfg.objective.topn_candidates == 20
    assert load_config(None, ["objective.item_targets=3"]).objective.kind == "dense"  # the tag may be left out


@pytest.mark.parametrize("key", sorted(OLD_KEYS))
def test_an_old_key_in_a_config_of_today_names_its_new_place(key):
    with pytest.raises(ConfigError, match=f"old key\\(s\\): {key} \\(now (objective|runtime)\\."):
        load_config(None, [f"{key}=1"])


@pytest.mark.parametrize("name, recipe", [("laptop", "laptop"), ("tiny", "tiny")])
def test_configs_saved_before_the_objective_load_as_their_recipe(name, recipe):
    # config.json of a run trained before `objective` existed (every key of its day, flat switches).
    old = json.loads((FIXTURES / f"config_before_objective_{name}.json").read_text())
    assert "objective" not in old and old["train"]["input_encoding"] in ("ids", "text")
    now = saved_config(old)
    assert now.data.path == old["data"]["path"]
    # What the recipes changed since: early stopping and the validation users (both), the dropout masks (tiny).
    since = ["train.patience=3", "train.val_users=first", *(["runtime.dropout_masks=bernoulli"] if name == "tiny" else [])]
    assert now.model_dump() == load_config(recipe, [f"data.path={old['data']['path']}", *since]).model_dump()


def test_an_old_config_keeps_the_defaults_it_was_written_against():
    # A key the old config predates takes the default of then, not today's.
    old = json.loads((FIXTURES / "config_before_objective_tiny.json").read_text())
    del old["train"]["max_minutes"], old["model"]["dropout_masks"], old["index"]["strategy"]
    now = saved_config(old)
    assert now.train.max_minutes is None and now.runtime.dropout_masks == "bernoulli" and now.index.strategy == "p5-sequential"


def test_an_old_config_that_mixes_the_objectives_is_one_clear_error(tmp_path):
    old = json.loads((FIXTURES / "config_before_objective_laptop.json").read_text())
    old["train"]["seq_positions"] = "one"  # an ablation of a switch the dense objective now fixes
    with pytest.raises(ConfigError, match="mixes the two objectives' switches.*published train.seq_positions: one"):
        saved_config(old)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(json.loads((FIXTURES / "config_before_objective_laptop.json").read_text())))
    assert load_config(path, ["train.epochs=3"], saved=True).train.epochs == 3  # `peapod train --resume` reads it so
