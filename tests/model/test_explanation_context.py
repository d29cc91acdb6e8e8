"""Explanations that read a retrieved sentence (`model.explanation_context: retrieved`): the encoder row
(ids path = text path), the copy head's mixture, and the same inputs at training, evaluation and serving."""

from __future__ import annotations

import math

import pytest
import torch

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.explanations import split_explanations
from peapod.data.indexing import user_text
from peapod.data.retrieval import ExplanationRetrieval
from peapod.infer.predictor import Predictor
from peapod.infer.requests import EXPLANATION_DECODINGS, Request
from peapod.inputs.examples import explanation_rows
from peapod.inputs.prompt import TASK_IDS, context_tokens, encode_inputs, source_text
from peapod.model.copy_head import NO_SOURCE, CopyHead, copy_sources
from peapod.model.peapod import ModelBundle, build_model
from peapod.train.batches import explanation_contexts
from peapod.train.id_batches import IdTrainingData

TINY_CONTEXT = ["data.path=demo", "model.backbone=tiny", "model.cf_dim=8", "model.cf_iterations=2", "model.explanation_context=retrieved"]


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


@pytest.fixture(scope="module")
def setup(demo):
    torch.manual_seed(0)
    cfg = load_config("demo", TINY_CONTEXT)
    index = build_item_index(demo, "atomic")
    model, tok = build_model(cfg.architecture(), demo, index)
    train, val = split_explanations(demo, 0.1, 0)
    return cfg, index, model.eval(), tok, train, val


def test_training_rows_equal_the_text_the_evaluation_tokenizes(demo, setup):
    cfg, index, model, tok, train, val = setup
    contexts, val_contexts = explanation_contexts(cfg, train, val)
    retrieval = ExplanationRetrieval().fit(train)
    assert contexts == retrieval.leave_one_out()
    assert val_contexts == [retrieval.explain(e.user, e.item)[0] for e in val]
    data = IdTrainingData(demo, index, tok, train, cfg, model.config.max_whole_words, None, contexts)
    for max_length in (64, 12):  # 12 cuts most contexts
        cfg.train.max_input_length = max_length
        data.contexts = context_tokens(tok, contexts, max_length)
        enc = data.encode(explanation_rows(train[:40], None, 0.0, 0))
        texts = [source_text("explanation", None, user_text(e.user), [index.item_text(e.item)], contexts[k]) for k, e in enumerate(train[:40])]
        ref = encode_inputs(tok, texts, max_length, model.config.max_whole_words)
        width = ref.input_ids.shape[1]
        assert enc.input_ids.shape[1] == width
        assert torch.equal(enc.input_ids, ref.input_ids)
        assert torch.equal(enc.attention_mask, ref.attention_mask)
        assert torch.equal(enc.whole_word_ids, ref.whole_word_ids)
    cfg.train.max_input_length = 64


def test_copy_sources_offer_only_the_context_words():
    ids = torch.tensor([[5, 900, 11, 12, 1, 0], [5, 901, 1, 0, 0, 0]])
    mask = (ids != 0).long()
    words = torch.tensor([[1, 2, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0]])
    tasks = torch.tensor([TASK_IDS["explanation"], TASK_IDS["sequential"]])
    source = copy_sources(ids, mask, words, tasks, TASK_IDS["explanation"], (0, 1), prompt_length=2)
    assert source.tolist() == [[NO_SOURCE] * 2 + [NO_SOURCE, NO_SOURCE, 11, 12, NO_SOURCE, NO_SOURCE], [NO_SOURCE] * 8]


def test_copy_head_mixture():
    torch.manual_seed(0)
    head = CopyHead(8)
    hidden, memory = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    logits = torch.randn(2, 3, 20)
    source = torch.tensor([[7, 7, 9, NO_SOURCE], [NO_SOURCE] * 4])
    logp = head(hidden, logits, memory, source)
    p = logp.exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 3), atol=1e-5)
    # a row with nothing to copy is the plain softmax
    assert torch.allclose(logp[1], torch.log_softmax(logits[1], -1), atol=1e-5)
    # closed gate: all mass on the offered tokens, token 7 twice offered
    with torch.no_grad():
        head.gate.bias.fill_(-1e4)
    p = head(hidden, logits, memory, source).exp()
    assert torch.allclose(p[0, :, 7] + p[0, :, 9], torch.ones(3), atol=1e-5)
    scores = head.query(hidden[0]) @ memory[0, :3].T / math.sqrt(8)
    attention = torch.softmax(scores, -1)
    assert torch.allclose(p[0, :, 7], attention[:, 0] + attention[:, 1], atol=1e-5)


def test_evaluation_reads_the_retrieved_sentence_and_beams_copy_like_greedy(demo, setup):
    cfg, index, model, tok, train, val = setup
    pred = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), device="cpu", max_history=20, max_input_length=64)
    request = Request("explanation", [train[0].item], train[0].user)
    with pytest.raises(ValueError, match="retrieved training sentence"):
        pred.encode([request])
    pred.retrieval = ExplanationRetrieval().fit(train)
    context = pred.retrieval.explain(request.user, request.items[0])[0]
    assert pred.source_text(request) == f"{user_text(request.user)} {index.item_text(request.items[0])} {context}"
    enc = pred.encode([request, Request("sequential", [1, 2, 3], 4)])
    assert (enc.copy_source[0] != NO_SOURCE).any() and (enc.copy_source[1] == NO_SOURCE).all()
    # the head mixes only while an explanation is generated: item scores are the plain model's
    assert model._copy_context is None
    texts = pred.explain([request] * 2, "greedy")
    assert texts[0] == texts[1] and model._copy_context is None
    beams = pred.explain([request, Request("explanation", [train[1].item], train[1].user)], "beam")
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)


def test_a_copying_model_trains_saves_and_loads(tmp_path, demo):
    from peapod.model.peapod import load_bundle, save_bundle
    from peapod.train.loop import train

    cfg = load_config("demo", [*TINY_CONTEXT, "train.epochs=1", "train.max_steps=6", "train.batch_size=16",
                                             "train.val_max_users=16", "train.checkpoint_every=1000", "eval.max_users=8"])
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["steps"] == 6
    bundle = load_bundle(tmp_path / "run" / "best")
    assert bundle.model.config.explanation_context == "retrieved" and hasattr(bundle.model, "copy_head")
    save_bundle(bundle, tmp_path / "copy")
    again = load_bundle(tmp_path / "copy")
    for (name, a), (_, b) in zip(bundle.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    # evaluation and serving fit the retrieval on the run's own training records
    from peapod.evaluate.tasks import load_setup
    from peapod.serve.recommender import Recommender

    loaded = load_setup(tmp_path / "run", device="cpu")
    assert loaded.predictor.retrieval is not None and loaded.predictor.retrieval.records == split_explanations(demo, 0.1, 0)[0]
    rec = Recommender.load(tmp_path / "run", device="cpu", warm_up=False)
    record = demo.explanations_for("test")[0]
    assert rec.predictor.retrieval.records == loaded.predictor.retrieval.records
    assert isinstance(rec.explain(demo.user_ids[record.user], demo.item_ids[record.item]), str)


def test_served_decoding_writes_at_least_8_tokens_and_never_one_three_times_in_a_row(demo, setup):
    cfg, index, model, tok, train, val = setup
    pred = Predictor(ModelBundle(model, tok, index, demo.user_ids, demo.item_ids), device="cpu", max_history=20, max_input_length=64)
    pred.retrieval = ExplanationRetrieval().fit(train)
    enc = pred.encode([Request("explanation", [e.item], e.user) for e in val[:8]])
    with model.copying(enc.hidden, enc.copy_source):
        seqs = pred._generate(enc.hidden, enc.mask, num_return_sequences=1, **EXPLANATION_DECODINGS["serve"])
    eos = model.t5.config.eos_token_id
    for row in seqs[:, 1:].tolist():  # after the start token
        written = row[: row.index(eos)] if eos in row else row
        assert len(written) >= 8
        assert not any(a == b == c for a, b, c in zip(written, written[1:], written[2:]))
