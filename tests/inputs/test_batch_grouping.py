"""How an epoch's rows are cut into batches (PeaPOD's dense objective and SASRec alike): every row once
per epoch, in batches of about one input length, computing fewer padded positions, and the same batches
for the same seed and epoch (what exact resume needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peapod.config import load_config
from peapod.data import build_item_index, load_dataset
from peapod.data.batch_order import GROUP_WINDOW, length_grouped_batches, padded_tokens
from peapod.data.explanations import split_explanations
from peapod.model.peapod import build_model
from peapod.train.batches import id_training_data

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.path=demo", "model.backbone=tiny", "model.cf_dim=16", "model.cf_iterations=4", "train.batch_size=32",
    "train.max_minutes=null", "train.val_max_users=50",
]


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 28, n)


def test_length_grouping_covers_every_row_once_in_uniform_batches():
    n, size = 3 * GROUP_WINDOW * 16 + 50, 16  # three full windows and a short one
    lengths = _lengths(n)
    batches = length_grouped_batches(lengths, size, np.random.default_rng(1))
    random = np.array_split(np.random.default_rng(1).permutation(n), len(batches))
    rows = np.concatenate(batches)
    assert len(rows) == n and len(np.unique(rows)) == n
    assert sum(len(b) < size for b in batches) == 1  # only the last window's last batch is short
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in random])
    assert spread < 0.25 * random_spread
    assert padded_tokens(lengths, batches) < 0.75 * padded_tokens(lengths, random)
    # the batches are shuffled: long and short ones alternate, not a sorted run per window
    maxima = np.array([lengths[b].max() for b in batches[:GROUP_WINDOW]])
    assert not (np.all(np.diff(maxima) <= 0) or np.all(np.diff(maxima) >= 0))


def test_length_grouping_is_a_function_of_the_rng():
    lengths = _lengths(700)
    a = length_grouped_batches(lengths, 32, np.random.default_rng([0, 3, 1]))
    b = length_grouped_batches(lengths, 32, np.random.default_rng([0, 3, 1]))
    c = length_grouped_batches(lengths, 32, np.random.default_rng([0, 4, 1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _random_batches(n: int, size: int) -> list[np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


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
        task: [(parts[0][0], rows) for rows in _random_batches(len(parts[0][0]), 32)]
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

