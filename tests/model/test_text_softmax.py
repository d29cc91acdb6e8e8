"""An explanation is text: its training softmax leaves the atomic item tokens out (so its steps never
move the tied item embeddings it does not read), and explanation decoding never writes an item token."""

from __future__ import annotations

import pytest
import torch

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.explanations import split_explanations
from peapod.infer.predictor import Predictor
from peapod.infer.requests import Request
from peapod.inputs.examples import explanation_rows
from peapod.model.peapod import ModelBundle, build_model
from peapod.train.id_batches import IdTrainingData

TINY = ["data.path=demo", "model.backbone=tiny", "model.cf_dim=8", "model.cf_iterations=2", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def setup():
    demo = load_dataset("demo")
    torch.manual_seed(0)
    cfg = load_config("demo", TINY)
    index = build_item_index(demo, "atomic")
    model, tok = build_model(cfg.architecture(), demo, index)
    train, val = split_explanations(demo, 0.1, 0)
    data = IdTrainingData(demo, index, tok, train, cfg, model.config.max_whole_words)
    item_tokens = torch.tensor(tok.convert_tokens_to_ids(index.all_item_texts()))
    return demo, index, model, tok, train, val, data, item_tokens


def test_explanation_rows_normalize_over_every_token_but_the_items(setup):
    demo, index, model, tok, train, val, data, item_tokens = setup
    rows = data.encode(explanation_rows(train, None, 0.0, 0))
    space = rows.label_space
    assert torch.equal(space, torch.sort(space).values)
    assert len(space) + len(item_tokens) == len(tok)
    assert not torch.isin(item_tokens, space).any()
    labels = rows.labels[rows.labels != -100]
    assert torch.isin(labels, space).all() and tok.eos_token_id in space.tolist()
    validation = data.validation(val, None)["explanation"]
    assert torch.isin(validation.labels[validation.labels != -100], space).all()


def test_an_explanation_step_leaves_the_unread_item_embeddings_alone(setup):
    demo, index, model, tok, train, val, data, item_tokens = setup
    table = data.encode(explanation_rows(train[:16], None, 0.0, 0))
    batch = table.batch(range(16), torch.device("cpu"))
    read = torch.isin(item_tokens, batch["input_ids"])  # the items the encoder reads get gradient as inputs
    assert read.any() and not read.all()
    unread = item_tokens[~read]
    grads = {}
    for name, b in (("text", batch), ("whole vocabulary", {k: v for k, v in batch.items() if k != "label_space"})):
        model.train()
        model.zero_grad()
        model(**b).loss.backward()
        grads[name] = model.t5.get_input_embeddings().weight.grad[unread].abs().sum()
    model.eval()
    assert grads["text"] == 0.0
    assert grads["whole vocabulary"] > 0.0  # the whole-vocabulary softmax would push them


def test_explanation_decoding_never_writes_an_item_token(setup):
    demo, index, model, tok, train, val, data, item_tokens = setup
    pred = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), device="cpu", max_history=20, max_input_length=64)
    boost = torch.zeros(len(tok))
    boost[item_tokens] = 1e4  # without suppression every step would write an item
    hook = model.t5.lm_head.register_forward_hook(lambda module, inputs, output: output + boost)
    try:
        requests = [Request("explanation", [e.item], e.user) for e in val[:4]]
        for decoding in ("greedy", "serve", "legacy"):
            for text in pred.explain(requests, decoding):
                assert "<item_" not in text
            assert any(pred.explain(requests, "serve"))
    finally:
        hook.remove()
