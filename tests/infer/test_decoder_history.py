"""The dense objective's decoder history, `objective.decoder_history` (inference only).

A decoder trained on the next m items teacher-forced learned, at step j, to predict the item after the
j items it was handed, with the history before them in the encoder. With decoder_history j the
predictor asks exactly that question: the user's last j items go into the decoder, and step j scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from peapod.config import ConfigError, load_config
from peapod.data import build_item_index
from peapod.evaluate.protocol import evaluate_run
from peapod.infer.predictor import Predictor, Request
from peapod.inputs.examples import sequential_rows
from peapod.metrics.ranking import mask_items
from peapod.model.peapod import ModelBundle, ModelConfig, build_model, save_bundle
from peapod.train.id_batches import IdTrainingData

ROOT = Path(__file__).resolve().parents[2]
LAPTOP = "laptop"
SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64",
    "train.epochs=1", "train.max_minutes=null", "train.val_max_users=50", "objective.item_targets=3",
]


def _bundle(demo, overrides, **architecture):
    cfg = load_config(LAPTOP, SMALL + overrides)
    index = build_item_index(demo, "atomic")
    torch.manual_seed(0)
    model, tok = build_model(cfg.architecture().model_copy(update=architecture), demo, index)
    return cfg, ModelBundle(model.eval(), tok, index, demo.user_ids, demo.item_ids)


@pytest.fixture(scope="module")
def pod(demo):
    return _bundle(demo, ["model.variant=pod"])


@pytest.fixture(scope="module")
def peapod(demo):
    return _bundle(demo, [])


def test_the_recipe_reads_one_history_item_in_the_decoder():
    cfg = load_config(LAPTOP)
    assert cfg.objective.decoder_history == 1 < cfg.objective.item_targets
    assert cfg.architecture().decoder_history == 1


def test_decoder_history_needs_a_decoder_trained_on_more_items():
    with pytest.raises(ConfigError, match="decoder_history 3 needs objective.item_targets > it"):
        load_config(LAPTOP, ["objective.item_targets=3", "objective.decoder_history=3"])
    with pytest.raises(ValueError, match="decoder_history"):
        ModelConfig(item_targets=2, decoder_history=2)
    with pytest.raises(ValueError, match="decoder_history"):
        ModelConfig(item_targets=2, decoder_history=-1)


def test_the_scored_step_is_the_step_training_taught(demo, pod):
    """Predictor(decoder_history=1) on the history up to item t scores what training's step 1 scored
    for the example whose encoder holds the items before t-1 and whose first target is item t-1."""
    cfg, bundle = pod
    model = bundle.model
    data = IdTrainingData(demo, bundle.index, bundle.tokenizer, [], cfg, model.config.max_whole_words)
    rows = sequential_rows(data.seqs, np.random.default_rng(0), cfg.train.max_history, 3, 0.0, data.tables.generic_user)
    pick = np.array([r for r in range(0, len(rows), 53) if rows.targets[r, 1] >= 0][:12])
    enc = data.encode(rows)
    batch = enc.batch(pick, torch.device("cpu"))
    with torch.no_grad():
        hidden, mask = model.encode(batch["task_ids"], batch["input_ids"], batch["attention_mask"], batch["whole_word_ids"])
        decoder_ids = torch.cat([torch.zeros(len(pick), 1, dtype=torch.long), batch["labels"][:, :1]], 1)
        logits = model.t5(encoder_outputs=hidden, attention_mask=mask, decoder_input_ids=decoder_ids).logits[:, 1]
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=1)
    first = predictor.item_tokens[0][:, 0]
    expected = torch.log_softmax(logits.float(), -1)[:, first]
    requests = []
    for r in pick:
        before = [int(i) for i in rows.inputs[r] if i >= 0]
        history = tuple(before + [int(rows.targets[r, 0])])  # the encoder's items, then the first target
        requests.append(Request("sequential", history, user=int(rows.users[r])))
        assert predictor.decoder_items(requests[-1]) == history[-1:]
        assert predictor.input_items(requests[-1]) == tuple(before[::-1])  # newest first, without the decoder's item
    got = predictor.score_all_items(requests)
    assert torch.allclose(got, expected, atol=1e-4)
    # And it is not what the first step says.
    assert not torch.allclose(got, Predictor(bundle, max_history=cfg.train.max_history, decoder_history=0).score_all_items(requests), atol=1e-3)


def test_topn_reads_the_profile_and_refuses_without_one(demo, peapod):
    cfg, bundle = peapod
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=2)
    history = tuple(demo.train_items(3))
    cands = (5, 9, 11, 20)
    with pytest.raises(ValueError, match="pass the top-n request's `profile`"):
        predictor.score_candidates([Request("topn", cands, user=3)])
    request = Request("topn", cands, user=3, profile=history)
    assert predictor.decoder_items(request) == history[-2:]
    assert predictor.input_items(request) == ()  # candidate-free input: only the prompts and the user
    got = predictor.score_candidates([request])
    enc = predictor.encode([request])
    first = predictor.item_tokens[0][:, 0]
    decoder_ids = torch.tensor([[0] + first[list(history[-2:])].tolist()])
    with torch.no_grad():
        logits = bundle.model.t5(encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden), attention_mask=enc.mask,
                                 decoder_input_ids=decoder_ids).logits[:, 2]
    assert torch.allclose(got, torch.log_softmax(logits.float(), -1)[:, first[list(cands)]], atol=1e-4)


def test_a_candidate_reading_top_n_keeps_its_first_step(demo):
    """Top-n trained on candidate lists has one target item: only the sequential task reads history there
    (a model saved with the candidate-reading top-n that runs before the dense objective trained)."""
    cfg, bundle = _bundle(demo, [], topn_input="candidates")
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=1)
    assert predictor.decoder_items(Request("topn", (1, 2, 3), user=0)) == ()
    assert predictor.decoder_items(Request("sequential", (1, 2, 3), user=0)) == (3,)


def test_rows_of_a_batch_read_their_own_step(demo, peapod):
    """A one-item history keeps its item in the encoder (no decoder items): in a batch with longer
    histories its scores are those of the first step, and every row matches its own single-row scores."""
    cfg, bundle = peapod
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=2)
    short = Request("sequential", (7,), user=1)
    long = Request("sequential", tuple(demo.train_items(2)), user=2)
    assert predictor.decoder_items(short) == () and predictor.input_items(short) == (7,)
    together = predictor.score_all_items([short, long])
    assert torch.allclose(together[0], Predictor(bundle, max_history=cfg.train.max_history, decoder_history=0).score_all_items([short])[0], atol=1e-4)
    assert torch.allclose(together[1], predictor.score_all_items([long])[0], atol=1e-4)


def test_beam_search_starts_after_the_decoder_items(demo, peapod):
    """Legacy beams hand each row its decoder items first (rows grouped by how many) and search from
    the step after them: unconstrained beams of a multi-item decoder are that step's top tokens."""
    cfg, bundle = peapod
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=2)
    reqs = [Request("sequential", tuple(demo.train_items(u)), user=u) for u in (0, 1)] + [Request("sequential", (7, 8), user=2)]
    assert [len(predictor.decoder_items(r)) for r in reqs] == [2, 2, 1]
    beams = predictor.beam_items(reqs, num_beams=4)
    enc = predictor.encode(reqs)
    decoder_ids, read_at = predictor._decoder_prefix(enc)
    with torch.no_grad():
        logits = bundle.model.t5(encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden), attention_mask=enc.mask,
                                 decoder_input_ids=decoder_ids).logits[torch.arange(3), read_at]
    for row in range(3):
        top = bundle.tokenizer.convert_ids_to_tokens(torch.topk(torch.log_softmax(logits[row], -1), 4).indices.tolist())
        assert beams.items[row] == [predictor.parse_item(t) for t in top]
    constrained = predictor.beam_items(reqs, num_beams=4, constrained=True, exclude=[r.items for r in reqs])
    for row, r in zip(constrained.items, reqs):
        assert len(row) == 4 and all(0 <= i < predictor.n_items and i not in r.items for i in row)
    with pytest.raises(ValueError, match="needs atomic items and a decoder trained on more items"):
        Predictor(bundle, decoder_history=3)


def test_evaluation_records_and_applies_the_override(demo, peapod, tmp_path):
    cfg, bundle = peapod
    save_bundle(bundle, tmp_path / "model", extra_files=None)
    common = dict(tasks="seq,topn", protocol="rigorous", max_users=30, write=False, progress=False, data="demo", batch_size=16)
    plain = evaluate_run(tmp_path / "model", **common)
    read = evaluate_run(tmp_path / "model", decoder_history=2, **common)
    assert plain["decoder_history"] == 1  # the model's own setting (the laptop recipe)
    assert read["decoder_history"] == 2
    assert "decoder_history" in read["tasks"]["topn"] and "step 2 scores" in read["tasks"]["sequential"]["decoder_history"]
    assert plain["tasks"]["topn"]["per_seed"] != read["tasks"]["topn"]["per_seed"] or plain["tasks"]["sequential"]["per_seed"] != read["tasks"]["sequential"]["per_seed"]


def test_the_user_prompt_ablation_reads_the_decoder_history_it_is_given(peapod, tmp_path):
    from peapod.bench.prompt_ablation import run_user_prompt_ablation

    cfg, bundle = peapod
    save_bundle(bundle, tmp_path / "model", extra_files=None)
    result = run_user_prompt_ablation(tmp_path / "model", tasks=("topn",), max_users=12, data="demo", batch_size=16, decoder_history=2)
    assert result["decoder_history"] == 2 and result["users"] == 12


def test_validation_reads_the_step_the_evaluation_scores(demo, pod):
    """Best-epoch selection ranks the validation item where the evaluation will: the last training item
    in the decoder, step 1 read, its NDCG@10 that of the predictor's full-catalogue scores with the
    user's training items left out (the rigorous protocol)."""
    from contextlib import nullcontext

    from peapod.train.validation import validation_losses

    cfg, bundle = pod  # decoder_history 1 (the laptop recipe), item_targets 3
    data = IdTrainingData(demo, bundle.index, bundle.tokenizer, [], cfg, bundle.model.config.max_whole_words)
    n = 24
    tables = data.validation([], max_users=n)
    predictor = Predictor(bundle, max_history=cfg.train.max_history, decoder_history=1)
    first = predictor.item_tokens[0][:, 0]
    expected, expected_se = {}, {}
    for task, table in tables.items():
        history = [tuple(demo.train_items(u)) for u in range(n)]
        val = [demo.history_and_target(u, "val")[1] for u in range(n)]
        assert table.score_step.tolist() == [min(1, len(h) - (task == "sequential")) for h in history]
        assert table.labels[:, 0].tolist() == [int(first[h[-1]]) for h in history]  # the decoder's item
        assert table.labels[torch.arange(n), table.score_step].tolist() == [int(first[v]) for v in val]
        if task == "sequential":
            requests = [Request("sequential", h, user=u) for u, h in enumerate(history)]
        else:
            requests = [Request("topn", (0,), user=u, profile=h) for u, h in enumerate(history)]
        scores = mask_items(predictor.score_all_items(requests), [demo.seen_items(u, "val") for u in range(n)])
        target = scores[torch.arange(n), val]
        rank = (scores >= target[:, None]).sum(1) - 1
        gains = torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.zeros(n)).double()
        expected[task] = float(gains.mean())
        expected_se[task] = float(gains.std() / n**0.5)  # the sample std over the validation rows
    losses, ndcg, se = validation_losses(bundle.model, tables, None, 8, torch.device("cpu"), 0, 1, nullcontext)
    bundle.model.eval()  # validation leaves the model in training mode; the fixture is shared
    assert ndcg == pytest.approx(expected, abs=1e-6)
    assert se == pytest.approx(expected_se, abs=1e-6) and all(v > 0 for v in se.values())
    assert all(np.isfinite(v) for v in losses.values())
    # Without decoder history the first step is read, as before.
    cfg0 = load_config(LAPTOP, SMALL + ["model.variant=pod", "objective.decoder_history=0"])
    plain = IdTrainingData(demo, bundle.index, bundle.tokenizer, [], cfg0, bundle.model.config.max_whole_words).validation([], max_users=n)
    assert plain["sequential"].score_step is None and plain["sequential"].labels.shape[1] == 1
