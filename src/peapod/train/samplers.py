"""Task samplers: training and validation examples for the three tasks, following PeaPOD/POD.

An epoch's examples and batches are a pure function of (seed, epoch), so a run resumed at batch
position p of epoch e sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from peapod.data.dataset import Dataset, Explanation, validation_users
from peapod.data.indexing import ItemIndex, user_text
from peapod.data.negatives import candidate_list
from peapod.model.text import GENERIC_USER, TEMPLATES, eval_template, source_text


@dataclass(frozen=True)
class Example:
    """One (input, target) pair. `user` is the internal user index (its prompt), `task` one of TASKS."""

    task: str
    user: int
    source: str
    target: str


def _user_str(user: int, rng: random.Random | None, dropout: float) -> str:
    # User-id dropout: the prompt, not the id string, has to carry the user.
    if rng is not None and dropout > 0 and rng.random() < dropout:
        return GENERIC_USER
    return user_text(user)


def sample_negatives_for(user_items: set[int], n_items: int, count: int, rng: random.Random) -> list[int]:
    """`count` distinct items the user never interacted with, uniform, by rejection."""
    available = n_items - len(user_items)
    if available < count:
        raise ValueError(f"only {available} non-interacted items, {count} negatives asked for")
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < count:
        i = rng.randrange(n_items)
        if i not in user_items and i not in seen:
            seen.add(i)
            out.append(i)
    return out


def sequential_train(ds: Dataset, index: ItemIndex, rng: random.Random, max_history: int, dropout: float) -> list[Example]:
    """One example per user: a random contiguous segment of the training history -> the next item."""
    out = []
    for u in range(ds.n_users):
        train = ds.train_items(u)
        if len(train) < 2:
            continue
        t = rng.randrange(1, len(train))  # target position; never the last two items of the sequence
        start = rng.randrange(max(0, t - max_history), t)
        hist = [index.item_text(i) for i in train[start:t]]
        template = rng.randrange(len(TEMPLATES["sequential"]))
        out.append(Example("sequential", u, source_text("sequential", template, _user_str(u, rng, dropout), hist), index.item_text(train[t])))
    return out


def topn_train(ds: Dataset, index: ItemIndex, rng: random.Random, n_candidates: int, dropout: float) -> list[Example]:
    """One example per user: a training positive among n_candidates-1 fresh negatives, shuffled."""
    out = []
    for u in range(ds.n_users):
        train = ds.train_items(u)
        if not train:
            continue
        pos = train[rng.randrange(len(train))]
        cands = sample_negatives_for(set(ds.sequences[u]), ds.n_items, n_candidates - 1, rng) + [pos]
        rng.shuffle(cands)
        template = rng.randrange(len(TEMPLATES["topn"]))
        src = source_text("topn", template, _user_str(u, rng, dropout), [index.item_text(i) for i in cands])
        out.append(Example("topn", u, src, index.item_text(pos)))
    return out


def explanation_examples(
    records: list[Explanation], index: ItemIndex, rng: random.Random | None, dropout: float, template: int | None,
    contexts: list[str] | None = None,
) -> list[Example]:
    """(user, item[, context]) -> sentence. With `rng`, each example gets a random template (training)."""
    out = []
    for k, e in enumerate(records):
        t = rng.randrange(len(TEMPLATES["explanation"])) if rng is not None else template
        context = contexts[k] if contexts is not None else None
        src = source_text("explanation", t, _user_str(e.user, rng, dropout), [index.item_text(e.item)], context)
        out.append(Example("explanation", e.user, src, e.text))
    return out


def epoch_batches(
    ds: Dataset,
    index: ItemIndex,
    explanations: list[Explanation],
    tasks: list[str],
    epoch: int,
    seed: int,
    batch_size: int,
    schedule: str,
    max_history: int,
    topn_candidates: int,
    user_dropout: float,
    contexts: list[str] | None = None,
) -> list[list[Example]]:
    """All batches of one epoch, in order.

    `rotate` (the published schedule): each batch holds one task, and tasks take turns.
    `mixed`: examples of all tasks shuffled together.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    per_task: dict[str, list[Example]] = {}
    if "sequential" in tasks:
        per_task["sequential"] = sequential_train(ds, index, rng, max_history, user_dropout)
    if "topn" in tasks:
        per_task["topn"] = topn_train(ds, index, rng, topn_candidates, user_dropout)
    if "explanation" in tasks and explanations:
        per_task["explanation"] = explanation_examples(explanations, index, rng, user_dropout, None, contexts)
    if schedule == "mixed":
        everything = [ex for exs in per_task.values() for ex in exs]
        rng.shuffle(everything)
        return [everything[i : i + batch_size] for i in range(0, len(everything), batch_size)]
    queues = []
    for exs in per_task.values():
        rng.shuffle(exs)
        queues.append([exs[i : i + batch_size] for i in range(0, len(exs), batch_size)])
    batches = []
    for turn in range(max((len(q) for q in queues), default=0)):
        batches.extend(q[turn] for q in queues if turn < len(q))
    return batches


def validation_examples(
    ds: Dataset,
    index: ItemIndex,
    variant: str,
    explanations_val: list[Explanation],
    negatives: list[list[int]],
    max_history: int,
    max_users: int | None,
    split: str = "val",
    topn_candidates: int | None = None,
    users_sample: str = "first",
    contexts: list[str] | None = None,
) -> dict[str, list[Example]]:
    """Fixed validation examples per task for `validation_users(n_users, max_users, users_sample)`, in
    the evaluation input form, for validation losses.

    Top-n inputs hold the target and the first `topn_candidates - 1` fixed negatives (all of them when
    None), so validation inputs are as long as training inputs and are not cut at max_input_length.
    """
    template = eval_template(variant)
    users = validation_users(ds.n_users, max_users, users_sample)
    out: dict[str, list[Example]] = {"sequential": [], "topn": [], "explanation": []}
    for u in users:
        history, target = ds.history_and_target(u, split)
        hist = [index.item_text(i) for i in history[-max_history:]]
        out["sequential"].append(Example("sequential", u, source_text("sequential", template, user_text(u), hist), index.item_text(target)))
        cands = candidate_list(target, negatives[u][: None if topn_candidates is None else topn_candidates - 1], u)
        src = source_text("topn", template, user_text(u), [index.item_text(i) for i in cands])
        out["topn"].append(Example("topn", u, src, index.item_text(target)))
    out["explanation"] = explanation_examples(explanations_val, index, None, 0.0, template, contexts)
    return {k: v for k, v in out.items() if v}
