"""How an epoch's rows are cut into batches: `random` (the published objective's) keeps the old
batches bit for bit; `length` (the dense objective's) covers every row once per epoch, in batches of
about one input length, computing fewer padded encoder positions, and replays the same batches for
the same seed and epoch (what exact resume needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.explanations import split_explanations
from peapod.model.peapod import build_model
from peapod.train.batch_order import GROUP_WINDOW, batch_rows, padded_tokens
from peapod.train.batches import id_training_data

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=32",
    "train.max_minutes=null", "train.val_max_users=50",
]


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 28, n)


def test_random_grouping_is_the_plain_permutation_cut_in_order():
    lengths = _lengths(1000)
    batches = batch_rows(lengths, 64, np.random.default_rng(5), "random")
    order = np.random.default_rng(5).permutation(1000)
    assert len(batches) == 16 and all(np.array_equal(b, order[i * 64 : (i + 1) * 64]) for i, b in enumerate(batches))


def test_length_grouping_covers_every_row_once_in_uniform_batches():
    n, size = 3 * GROUP_WINDOW * 16 + 50, 16  # three full windows and a short one
    lengths = _lengths(n)
    batches = batch_rows(lengths, size, np.random.default_rng(1), "length")
    rows = np.concatenate(batches)
    assert len(rows) == n and len(np.unique(rows)) == n
    assert sum(len(b) < size for b in batches) == 1  # only the last window's last batch is short
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in batch_rows(lengths, size, np.random.default_rng(1), "random")])
    assert spread < 0.25 * random_spread
    assert padded_tokens(lengths, batches) < 0.75 * padded_tokens(lengths, batch_rows(lengths, size, np.random.default_rng(1), "random"))
    # the batches are shuffled: long and short ones alternate, not a sorted run per window
    maxima = np.array([lengths[b].max() for b in batches[:GROUP_WINDOW]])
    assert not (np.all(np.diff(maxima) <= 0) or np.all(np.diff(maxima) >= 0))


def test_length_grouping_is_a_function_of_the_rng():
    lengths = _lengths(700)
    a = batch_rows(lengths, 32, np.random.default_rng([0, 3, 1]), "length")
    b = batch_rows(lengths, 32, np.random.default_rng([0, 3, 1]), "length")
    c = batch_rows(lengths, 32, np.random.default_rng([0, 4, 1]), "length")
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="unknown batch grouping"):
        batch_rows(lengths, 32, np.random.default_rng(0), "sorted")


def _epoch(epoch: int = 0):
    cfg = load_config("laptop", SMALL)
    ds = load_dataset("demo")
    index = build_item_index(ds, "atomic")
    model, tok = build_model(cfg.architecture(), ds, index)
    explanations, _ = split_explanations(ds, cfg.data.explanation_val_fraction, cfg.train.seed)
    return id_training_data(cfg, model, ds, index, tok, explanations).epoch(epoch)


def _rows_per_task(epoch) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for position, (table, rows) in enumerate(epoch.plan):
        out.setdefault(epoch.task(position), []).append((table, rows))
    return out


def test_a_length_grouped_epoch_holds_the_same_rows_with_less_padding():
    grouped = _rows_per_task(_epoch())
    assert "sequential" in grouped
    plain = {  # the same tables cut at random
        task: [(parts[0][0], rows) for rows in batch_rows(parts[0][0].attention_mask.sum(1).numpy(), 32, np.random.default_rng(0), "random")]
        for task, parts in grouped.items()
    }
    for task in plain:
        (table, _), *_ = grouped[task]
        n = len(table)
        assert sorted(np.concatenate([r for _, r in grouped[task]]).tolist()) == list(range(n))
        assert sorted(np.concatenate([r for _, r in plain[task]]).tolist()) == list(range(n))
    lengths = grouped["sequential"][0][0].attention_mask.sum(1).numpy()
    cost = {name: padded_tokens(lengths, [r for _, r in parts["sequential"]]) for name, parts in (("plain", plain), ("grouped", grouped))}
    assert cost["grouped"] < 0.8 * cost["plain"]
    # the model's batch is trimmed to its longest row, so the saving reaches the encoder
    (table, rows), = grouped["sequential"][:1]
    batch = table.batch(rows, device="cpu")
    assert batch["input_ids"].shape[1] == int(lengths[rows].max())


def test_a_grouped_epoch_replays_identically_and_differs_by_epoch():
    a, b, c = _epoch(1), _epoch(1), _epoch(2)
    assert len(a) == len(b) and all(np.array_equal(x[1], y[1]) for x, y in zip(a.plan, b.plan))
    assert a.tasks == b.tasks
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a.plan, c.plan))

