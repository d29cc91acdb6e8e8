"""Best-epoch selection under the run's protocol: under rigorous, the validation ranking leaves out the
user's training items as the evaluation does, never the validation item itself; under legacy it ranks them."""

from __future__ import annotations

import numpy as np
import torch

from peapod.config import load_config
from peapod.data import build_item_index
from peapod.model.peapod import build_model
from peapod.train.id_batches import IdTrainingData
from peapod.train.validation import scored_item_ndcg

SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=1", "train.max_steps=2", "train.max_minutes=null", "train.val_max_users=30", "train.checkpoint_every=1000",
]


def _tables(demo, protocol: str):
    cfg = load_config("laptop", [*SMALL, f"eval.protocol={protocol}"])
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
    from peapod.train.validation import scored_step

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
