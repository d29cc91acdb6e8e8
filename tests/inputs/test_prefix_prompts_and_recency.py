"""Two parts of the dense objective: newest-first histories and prefix prompts.

* `history_order: newest-first`: the id path and the inference text path write the history
  most recent item first, so the last item always has whole-word id 2.
* `prompt_history: prefix`: a training example's user prompt is folded in from the items
  before its target, never from the target or later items.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peapod.config import ConfigError, load_config
from peapod.data import build_item_index
from peapod.data.cf import fold_in, nearest_neighbors
from peapod.data.indexing import user_text
from peapod.infer.predictor import Predictor, Request
from peapod.inputs.examples import TrainSequences, newest_first, sequential_rows, topn_rows
from peapod.inputs.owners import PrefixPrompts
from peapod.inputs.prompt import encode_inputs, source_text
from peapod.model.peapod import ModelBundle, build_model
from peapod.train.id_batches import IdTrainingData

ROOT = Path(__file__).resolve().parents[2]
LAPTOP = "laptop"
SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=1", "train.max_minutes=null", "train.val_max_users=50",
]


@pytest.fixture(scope="module")
def setup(demo):
    cfg = load_config(LAPTOP, SMALL)
    index = build_item_index(demo, "atomic")
    model, tok = build_model(cfg.architecture(), demo, index)
    prompts = PrefixPrompts(model.cf_users, model.cf_items, model.neighbor_index, model.config.als(), with_neighbors=True)
    return cfg, index, model, tok, prompts


def test_the_dense_objective_writes_histories_newest_first_and_the_published_oldest_first():
    cfg = load_config(LAPTOP)
    assert cfg.objective.history_order == "newest-first" and cfg.architecture().history_order == "newest-first"
    assert load_config("paper").architecture().history_order == "oldest-first"


def test_newest_first_reverses_each_row_and_keeps_padding():
    items = np.array([[1, 2, 3, -1], [7, -1, -1, -1], [-1, -1, -1, -1], [4, 5, 6, 8]])
    assert newest_first(items).tolist() == [[3, 2, 1, -1], [7, -1, -1, -1], [-1, -1, -1, -1], [8, 6, 5, 4]]


def test_newest_first_id_inputs_equal_the_predictor_text(demo, setup):
    cfg, index, model, tok, _ = setup
    assert model.config.history_order == "newest-first"
    data = IdTrainingData(demo, index, tok, [], cfg, model.config.max_whole_words)
    rows = sequential_rows(data.seqs, np.random.default_rng(0), cfg.train.max_history, 5, 0.0, data.tables.generic_user)
    pick = np.arange(0, len(rows), max(1, len(rows) // 30))
    enc = data.encode(rows)
    predictor = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), max_history=cfg.train.max_history, decoder_history=0)
    texts = []
    for r in pick:
        history = tuple(int(i) for i in rows.inputs[r] if i >= 0)
        request = Request("sequential", history, user=int(rows.users[r]))
        shown = predictor.input_items(request)
        assert shown == history[::-1]  # the most recent item first
        texts.append(source_text("sequential", None, user_text(int(rows.users[r])), [index.item_text(i) for i in shown]))
    ref = encode_inputs(tok, texts, cfg.train.max_input_length, model.config.max_whole_words)
    width = ref.input_ids.shape[1]
    assert torch.equal(enc.input_ids[pick][:, :width], ref.input_ids)
    assert torch.equal(enc.whole_word_ids[pick][:, :width], ref.whole_word_ids)
    # The last item before the target is whole word 2 in every row.
    last = torch.from_numpy(np.array([data.tables.item_tokens[rows.inputs[r][rows.inputs[r] >= 0][-1], 0] for r in pick]))
    at_word2 = torch.stack([enc.input_ids[r][enc.whole_word_ids[r] == 2][0] for r in torch.from_numpy(pick)])
    assert torch.equal(at_word2, last)


def test_prefix_prompts_are_folded_in_from_the_items_before_the_target(demo, setup):
    cfg, index, model, tok, prompts = setup
    data = IdTrainingData(demo, index, tok, [], cfg, model.config.max_whole_words, prompts)
    rows = sequential_rows(data.seqs, np.random.default_rng(1), cfg.train.max_history, 5, 0.0, data.tables.generic_user)
    enc = data.encode(rows)
    assert enc.cf_query.shape == (len(rows), model.cf_users.shape[1])
    for r in range(0, len(rows), max(1, len(rows) // 25)):
        u, t = int(rows.users[r]), int(rows.prefix[r])
        before = demo.train_items(u)[:t]
        assert rows.targets[r, 0] == demo.train_items(u)[t]  # the prompt stops right before the first target
        expected = fold_in([before], model.cf_items, model.config.als())[0]
        assert torch.allclose(enc.cf_query[r], expected, atol=1e-5)
        assert u not in enc.neighbors[r].tolist()  # the user's own full vector holds its targets
        want = nearest_neighbors(expected[None], model.cf_users, model.config.n_neighbors, exclude=torch.tensor([u]))[0]
        assert enc.neighbors[r].tolist() == want.tolist()
    # A prompt folded in from all the user's training items is the user's trained vector and neighbours.
    full = rows.users[:40]
    q, n = prompts.for_rows(data.seqs, full, data.seqs.lengths[full])
    assert torch.allclose(q, model.cf_users[torch.from_numpy(full)], atol=1e-5)
    assert torch.equal(n, model.neighbor_index[torch.from_numpy(full)])
    # The batch hands the model these prompt owners.
    batch = enc.batch(np.arange(8), torch.device("cpu"))
    assert torch.equal(batch["cf_query"], enc.cf_query[:8]) and torch.equal(batch["neighbors"], enc.neighbors[:8])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_prefix_topn_rows_predict_the_items_after_the_prompt(demo):
    seqs = TrainSequences.from_dataset(demo)
    rows = topn_rows(seqs, np.random.default_rng(3), 5, 0.0, demo.n_users, prefix=True)
    assert rows.inputs.shape[1] == 0 and rows.prefix is not None
    for r in range(0, len(rows), 97):
        items, t = demo.train_items(int(rows.users[r])), int(rows.prefix[r])
        assert 1 <= t < len(items)
        assert [i for i in rows.targets[r] if i >= 0] == items[t : t + 5]


def test_without_the_lever_rows_read_the_model_prompts(demo, setup):
    cfg, index, model, tok, _ = setup
    data = IdTrainingData(demo, index, tok, [], cfg, model.config.max_whole_words)
    rows = sequential_rows(data.seqs, np.random.default_rng(1), cfg.train.max_history, 5, 0.0, data.tables.generic_user)
    enc = data.encode(rows)
    assert enc.cf_query is None and "cf_query" not in enc.batch(np.arange(4), torch.device("cpu"))


def test_prefix_prompts_refuse_trainable_cf_vectors():
    with pytest.raises(ConfigError, match="cf_trainable false"):
        load_config(LAPTOP, ["model.cf_trainable=true"])


def test_nearest_neighbors_exclude_checks_its_shape():
    keys = torch.randn(10, 4)
    with pytest.raises(ValueError, match="one key index per query"):
        nearest_neighbors(keys[:3], keys, 2, exclude=torch.tensor([0, 1]))
    got = nearest_neighbors(keys[:3], keys, 9, exclude=torch.tensor([0, 1, 2]))
    assert all(i not in row for i, row in enumerate(got.tolist()))
