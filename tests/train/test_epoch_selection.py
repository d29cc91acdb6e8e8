"""What picks the best epoch. Which users' validation items (`train.val_users`, SASRec's `val_users`): the
first ones, or a fixed-seed uniform sample; the pure function, both validation paths, the trainer and SASRec.
How they are ranked: under rigorous the ranking leaves out the user's training items as the evaluation does,
never the validation item itself; under legacy it ranks them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peapod.config import ConfigError, load_config
from peapod.data import build_item_index
from peapod.data.dataset import validation_users
from peapod.data.explanations import split_explanations
from peapod.inputs.examples import validation_examples
from peapod.model.peapod import build_model
from peapod.train import id_batches as id_batches_module
from peapod.train.id_batches import IdTrainingData
from peapod.train.loop import train
from peapod.train.validation import scored_item_ndcg, scored_step

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


# ---- how the validation items are ranked --------------------------------------------------------------
def _tables(demo, protocol: str):
    cfg = load_config(LAPTOP, [*SMALL, f"eval.protocol={protocol}"])
    index = build_item_index(demo, "atomic")
    model, tok = build_model(cfg.architecture(), demo, index)
    data = IdTrainingData(demo, index, tok, [], cfg, 512)
    return data, model, data.validation([], max_users=30)


def test_rigorous_tables_hold_each_users_training_items_and_legacy_none(demo):
    data, _, tables = _tables(demo, "rigorous")
    first = data.tables.item_tokens[:, 0]
    for task, table in tables.items():
        users = table.users.tolist()
        assert [t.tolist() for t in table.seen] == [first[demo.seen_items(u, "val")].tolist() for u in users], task
        assert all(len(t) for t in table.seen)  # every user has training items
    _, _, legacy = _tables(demo, "legacy")
    assert all(table.seen is None for table in legacy.values())


def test_left_out_items_lift_the_target_never_lower_and_the_target_stays():
    torch.manual_seed(0)
    space = torch.arange(10, 20)  # item tokens 10..19, the rank space
    scores = torch.randn(3, 25)
    target = torch.tensor([12, 15, 19])
    scores[0, 12] = -5.0  # a target below most items
    batch = {}
    plain = scored_item_ndcg(scores, target, batch, space)
    above = [np.array([t for t in range(10, 20) if scores[i, t] > scores[i, target[i]]]) for i in range(3)]
    masked = scored_item_ndcg(scores, target, batch, space, exclude=above)
    assert torch.all(masked >= plain) and torch.allclose(masked, torch.ones(3))  # nothing left above: rank 0
    # A target that is also in the user's history is still ranked (the field never removes it).
    with_target = [np.append(a, int(t)) for a, t in zip(above, target)]
    assert torch.allclose(scored_item_ndcg(scores, target, batch, space, exclude=with_target), masked)
    assert torch.equal(scores[0, 12], torch.tensor(-5.0))  # the caller's scores are left alone


def test_rigorous_validation_ndcg_is_at_least_the_legacy_one_row_by_row(demo):
    data, model, tables = _tables(demo, "rigorous")
    model.eval()
    table = tables["sequential"]
    rows = np.arange(len(table))
    batch = table.batch(rows, torch.device("cpu"))
    with torch.no_grad():
        scores, target = scored_step(model(**batch).logits, batch, table.score_step)
    plain = scored_item_ndcg(scores, target, batch, table.rank_space)
    masked = scored_item_ndcg(scores, target, batch, table.rank_space, exclude=table.seen)
    assert torch.all(masked >= plain) and float(masked.sum()) > float(plain.sum())
