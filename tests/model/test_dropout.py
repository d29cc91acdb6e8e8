"""`model.dropout_masks: chunked`: the same dropout as torch's, its mask cut from 16-bit chunks of
random words. Checked: keep rate, scaling, independence, gradients, and that a model built with it
has torch's weights and outputs (only the training-time random stream differs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from peapod.config import load_config
from peapod.data import build_item_index
from peapod.data.loaders import load_dataset
from peapod.inputs.prompt import TASK_IDS
from peapod.model.dropout import ChunkedDropout
from peapod.model.peapod import build_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4"]


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_chunked_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales(p):
    torch.manual_seed(0)
    drop = ChunkedDropout(p).train()
    n = 1 << 20
    y = drop(torch.ones(n))
    kept = y > 0
    expected = 1.0 - round(p * 65536) / 65536  # p rounded to 16 bits
    sigma = (expected * (1 - expected) / n) ** 0.5
    assert abs(kept.float().mean().item() - expected) < 5 * sigma
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    # the four chunks of one random word are independent: neighbours' keep decisions do not correlate
    pairs = kept.view(-1, 4).float()
    corr = torch.corrcoef(pairs.T)
    assert corr[0, 1:].abs().max().item() < 5 / n**0.5 * 2


def test_chunked_dropout_is_the_identity_in_eval_or_at_zero_and_its_gradient_is_the_mask():
    x = torch.randn(3, 50, 8)
    assert torch.equal(ChunkedDropout(0.5).eval()(x), x)
    assert torch.equal(ChunkedDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ChunkedDropout(1.0)
    torch.manual_seed(1)
    x.requires_grad_(True)
    y = ChunkedDropout(0.25).train()(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() / 0.75)
    assert 0 < int((y == 0).sum()) < x.numel()


def test_a_model_with_chunked_masks_has_torchs_weights_and_outputs_but_no_torch_dropout():
    demo = load_dataset("demo")
    index = build_item_index(demo, "p5-sequential")
    built = {}
    for masks in ("bernoulli", "chunked"):
        cfg = load_config("tiny", [*SMALL, f"runtime.dropout_masks={masks}", "model.dropout=0.2"])
        built[masks], tok = build_model(cfg.architecture(), demo, index)
    ref, fast = built["bernoulli"], built["chunked"]
    swapped = [m for m in fast.modules() if isinstance(m, ChunkedDropout)]
    assert swapped and all(m.p == 0.2 for m in swapped)
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    assert any(type(m) is nn.Dropout for m in ref.modules())
    assert ref.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), fast.state_dict().values()))
    batch = dict(
        task_ids=torch.zeros(2, dtype=torch.long), users=torch.tensor([0, 1]), input_ids=torch.tensor([[5, 6, 1], [7, 1, 0]]),
        attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), whole_word_ids=torch.zeros(2, 3, dtype=torch.long),
        labels=torch.tensor([[8, 1], [9, 1]]),
    )
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(ref(**batch).logits, fast(**batch).logits)
    fast.train()
    torch.manual_seed(0)
    first = fast(**batch).loss
    torch.manual_seed(0)
    assert torch.equal(first, fast(**batch).loss)  # seeded: a run with chunked masks is reproducible
    with pytest.raises(Exception, match="dropout_masks"):
        load_config("tiny", [*SMALL, "runtime.dropout_masks=fast"])


@pytest.mark.parametrize("masks", ["bernoulli", "chunked"])
def test_explanation_batches_train_at_their_own_dropout(masks):
    demo = load_dataset("demo")
    index = build_item_index(demo, "p5-sequential")
    cfg = load_config("tiny", [*SMALL, f"runtime.dropout_masks={masks}", "model.dropout=0.3", "model.explanation_dropout=0.05"])
    model, _ = build_model(cfg.architecture(), demo, index)

    def rates() -> set[float]:
        found = {m.p for m in model.modules() if isinstance(m, (nn.Dropout, ChunkedDropout))}
        return found | {m.dropout for m in model.modules() if isinstance(getattr(m, "dropout", None), float)}

    def batch(task: int) -> dict:
        return dict(
            task_ids=torch.full((2,), task, dtype=torch.long), users=torch.tensor([0, 1]), input_ids=torch.tensor([[5, 6, 1], [7, 1, 0]]),
            attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), whole_word_ids=torch.zeros(2, 3, dtype=torch.long),
            labels=torch.tensor([[8, 1], [9, 1]]),
        )

    assert rates() == {0.3}
    model.train()
    model(**batch(TASK_IDS["explanation"]))
    assert rates() == {0.05}
    if masks == "chunked":
        assert all(m.threshold == round(0.05 * 65536) - 32768 for m in model.modules() if isinstance(m, ChunkedDropout))
    model(**batch(TASK_IDS["sequential"]))
    assert rates() == {0.3}
    mixed = batch(TASK_IDS["sequential"])
    mixed["task_ids"][0] = TASK_IDS["explanation"]
    model(**batch(TASK_IDS["explanation"]))
    model(**mixed)  # a batch of several tasks trains at the model's dropout
    assert rates() == {0.3}
