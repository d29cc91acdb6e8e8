"""The small seeded world the model tests share: a synthetic dataset, its item indexes, cached tiny models,
and fixed batches. conftest.py registers this module as a plugin, so its fixtures (`ds`, `indexes`, `models`)
reach every test module; the constants and helpers are imported by name.
"""

from __future__ import annotations

import random

import pytest
import torch

from peapod.data.dataset import Dataset, Explanation
from peapod.data.indexing import build_item_index, user_text
from peapod.inputs.prompt import TASK_IDS, encode_inputs, encode_targets, fill_template
from peapod.model.peapod import ModelConfig, build_model

N_USERS, N_ITEMS = 60, 40
K = 5  # neighbours
CF_DIM = 16
MAX_LEN = 64
MAX_WORDS = 512

USERS = [0, 3, 7, 11, 25, 42]  # the users of the fixed batches


def synthetic_dataset(seed: int = 0) -> Dataset:
    """60 users, 40 items, sequences of 4-9 distinct items with some cluster structure, explanations."""
    rng = random.Random(seed)
    sequences = []
    for u in range(N_USERS):
        cluster = u % 4  # users of one cluster mostly buy items of one block of 10
        pool = [i for i in range(N_ITEMS) if i // 10 == cluster]
        seq = []
        for _ in range(rng.randint(4, 9)):
            src = pool if rng.random() < 0.8 else range(N_ITEMS)
            seq.append(rng.choice(list(src)))
        sequences.append(seq)
    words = ["great", "quality", "fun", "for", "kids", "cheap", "sturdy", "colorful", "broke", "quickly"]
    explanations = []
    for n in range(90):
        u = rng.randrange(N_USERS)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        split = ("train", "train", "train", "val", "test")[n % 5]
        explanations.append(Explanation(u, sequences[u][0], text, rng.choice(words), split))
    return Dataset(
        name="synthetic",
        user_ids=[f"U{u}" for u in range(N_USERS)],
        item_ids=[str(i + 1) for i in range(N_ITEMS)],
        sequences=sequences,
        explanations=explanations,
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="module")
def indexes(ds):
    return {s: build_item_index(ds, s, seed=0) for s in ("p5-sequential", "random", "atomic")}


def model_config(variant: str, composer: str = "neighbors", **kw) -> ModelConfig:
    base = dict(variant=variant, composer=composer, backbone="tiny", item_init="random", n_neighbors=K, cf_dim=CF_DIM, pool_size=6,
                cf_iterations=15, seed=0)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def models(ds, indexes):
    """Cached built models, keyed by (variant, composer, indexing). Do not mutate: deepcopy first."""
    cache: dict = {}

    def get(variant: str, composer: str = "neighbors", indexing: str = "p5-sequential"):
        key = (variant, composer, indexing)
        if key not in cache:
            model, tok = build_model(model_config(variant, composer), ds, indexes[indexing])
            model.eval()
            cache[key] = (model, tok)
        return cache[key]

    return get


def make_batch(ds, index, tokenizer, users, task="sequential", template=None):
    """A fixed sequential-task batch (encoder tensors + labels) for `users`."""
    texts, targets = [], []
    for u in users:
        history, target = ds.history_and_target(u, "val")
        texts.append(
            fill_template(task, template, user=user_text(u), history=" ".join(index.item_text(i) for i in history))
        )
        targets.append(index.item_text(target))
    enc = encode_inputs(tokenizer, texts, MAX_LEN, MAX_WORDS)
    return dict(
        task_ids=torch.full((len(users),), TASK_IDS[task], dtype=torch.long),
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        whole_word_ids=enc.whole_word_ids,
        labels=encode_targets(tokenizer, targets, 16),
    )


def no_grad_logits(model, batch, **who):
    """Logits of one forward pass without autograd (CPU kernels may differ in the last bit with it on)."""
    with torch.no_grad():
        return model(**batch, **who).logits
