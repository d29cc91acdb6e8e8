"""Which users' validation items pick the best epoch (`train.val_users`, SASRec's `val_users`): the first
ones, or a fixed-seed uniform sample. The pure function, both validation paths, the trainer and SASRec."""

from __future__ import annotations

import numpy as np
import pytest

from peapod.config import ConfigError, load_config
from peapod.data import build_item_index
from peapod.data.dataset import validation_users
from peapod.data.explanations import split_explanations
from peapod.inputs.examples import validation_examples
from peapod.model.peapod import build_model
from peapod.train import id_batches as id_batches_module
from peapod.train.id_batches import IdTrainingData
from peapod.train.loop import train

LAPTOP = "laptop"
SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=1", "train.max_steps=2", "train.max_minutes=null", "train.val_max_users=30", "train.checkpoint_every=1000",
]


def test_first_takes_the_lowest_indices_and_none_takes_everyone():
    assert validation_users(10, 4, "first") == [0, 1, 2, 3]
    assert validation_users(10, None, "random") == list(range(10))
    assert validation_users(10, 25, "random") == list(range(10))


def test_random_is_a_fixed_sorted_sample_spread_over_the_users():
    users = validation_users(1000, 100, "random")
    assert users == sorted(set(users)) and len(users) == 100
    assert users == validation_users(1000, 100, "random")  # fixed seed: every run selects on the same users
    assert users != list(range(100)) and max(users) > 500
    assert validation_users(1000, 100, "random", seed=1) != users


def test_unknown_sample_is_refused():
    with pytest.raises(ValueError, match="'first' or 'random'"):
        validation_users(10, 4, "last")
    with pytest.raises(ConfigError, match="train.val_users"):
        load_config(LAPTOP, [*SMALL, "train.val_users=last"])


def test_id_validation_tables_hold_the_sampled_users(demo):
    cfg = load_config(LAPTOP, [*SMALL, "train.val_users=random"])
    index = build_item_index(demo, "atomic")
    _, tok = build_model(cfg.architecture(), demo, index)
    data = IdTrainingData(demo, index, tok, [], cfg, 512)
    expected = validation_users(demo.n_users, 30, "random")
    tables = data.validation([], max_users=30, users_sample="random")
    for task, table in tables.items():
        assert table.users.tolist() == expected, task
        rows = np.arange(len(table))
        at = table.score_step[rows].numpy()
        index_of = {t: i for i, t in enumerate(data.tables.item_tokens[:, 0].tolist())}
        got = [index_of[int(t)] for t in table.labels.numpy()[rows, at]]
        assert got == [demo.history_and_target(u, "val")[1] for u in expected], task
    first = data.validation([], max_users=30)["sequential"]
    assert first.users.tolist() == list(range(30))


def test_text_validation_examples_hold_the_sampled_users(demo):
    index = build_item_index(demo, "p5-sequential")
    _, val_expl = split_explanations(demo, 0.1, 0)
    ex = validation_examples(demo, index, "peapod", val_expl, demo.negatives, 10, max_users=40, users_sample="random")
    expected = validation_users(demo.n_users, 40, "random")
    assert [e.user for e in ex["sequential"]] == expected
    assert [e.user for e in ex["topn"]] == expected


def test_the_trainer_selects_on_the_configured_users(demo, tmp_path, monkeypatch):
    seen = []
    original = id_batches_module.IdTrainingData.validation

    def spy(self, explanations_val, max_users, users_sample="first", contexts_val=None):
        seen.append((max_users, users_sample))
        return original(self, explanations_val, max_users, users_sample, contexts_val)

    monkeypatch.setattr(id_batches_module.IdTrainingData, "validation", spy)
    train(load_config(LAPTOP, [*SMALL, "train.val_users=random"]), tmp_path / "run", quiet=True)
    assert seen == [(30, "random")]


def test_full_ranking_over_given_users(demo):
    from peapod.baselines.popularity import PopularityModel

    model = PopularityModel().fit(demo)
    assert model.evaluate_full(demo, "val", users=range(30)) == model.evaluate_full(demo, "val", max_users=30)
    sample = validation_users(demo.n_users, 30, "random")
    assert model.evaluate_full(demo, "val", users=sample) != model.evaluate_full(demo, "val", max_users=30)


def test_sasrec_selects_on_the_configured_users(demo, monkeypatch):
    from peapod.baselines import SASRecConfig, sasrec

    seen = []
    original = sasrec.SASRec.evaluate_full

    def spy(self, ds, split="test", max_users=None, history="excluded", users=None):
        seen.append((split, None if users is None else list(users)))
        return original(self, ds, split, max_users=max_users, history=history, users=users)

    monkeypatch.setattr(sasrec.SASRec, "evaluate_full", spy)
    config = SASRecConfig(dim=16, max_len=10, epochs=1, patience=1, val_max_users=30, val_users="random")
    sasrec.train_sasrec(demo, config)
    assert seen == [("val", validation_users(demo.n_users, 30, "random"))]
    with pytest.raises(ValueError, match="val_users"):
        SASRecConfig(val_users="last")
