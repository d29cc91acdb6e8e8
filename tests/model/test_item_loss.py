"""The item-softmax loss (`restricted_lm_output`) in training mode runs the head at labelled positions
only: the same loss and gradients as the cross entropy over every position, and a batch with no
label gives a zero loss, not NaN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.model.peapod import build_model
from peapod.train.id_batches import IdTrainingData

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=64", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def model_and_batch():
    cfg = load_config("laptop", SMALL)
    ds = load_dataset("demo")
    index = build_item_index(ds, "atomic")
    torch.manual_seed(0)
    model, tok = build_model(cfg.architecture(), ds, index)
    batch, _ = IdTrainingData(ds, index, tok, [], cfg, 512).epoch(0).batch(0, 0, 1, torch.device("cpu"))
    return model, batch


def test_training_mode_loss_and_gradients_equal_the_cross_entropy_over_every_position(model_and_batch):
    model, batch = model_and_batch
    labels, space = batch["labels"], batch["label_space"]
    assert (labels == -100).any() and (labels != -100).any()  # rows with fewer than 5 next items
    model.eval()
    logits = model(**batch).logits  # [B, T, V'] over every position
    pos = torch.full((int(space.max()) + 1,), -1, dtype=torch.long)
    pos[space] = torch.arange(len(space))
    mapped = torch.where(labels == -100, labels, pos[labels.clamp(min=0)])
    reference = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mapped.reshape(-1), ignore_index=-100)
    model.zero_grad()
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.train()  # dropout 0: the same function, now the labelled-positions path
    model.zero_grad()
    out = model(**batch)
    assert out.logits is None
    assert torch.allclose(out.loss, reference, atol=1e-6)
    out.loss.backward()
    for name, grad in expected.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-4), name
    model.eval()


def test_a_batch_without_labels_gives_a_zero_loss_that_backpropagates(model_and_batch):
    model, batch = model_and_batch
    empty = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    model.train()
    out = model(**empty)
    assert float(out.loss.detach()) == 0.0
    out.loss.backward()  # the optimizer step sees zero gradients, not an error
    model.eval()
