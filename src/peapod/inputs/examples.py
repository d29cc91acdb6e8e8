"""The examples a run draws for the three tasks: as text (the published objective, following PeaPOD/POD)
or as rows of internal indices (user, input items, target items; the dense objective), with the same
validation and test form.

An epoch's examples and batches are a pure function of (seed, epoch), so a run resumed at batch
position p of epoch e sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from peapod.data.dataset import Dataset, Explanation, validation_users
from peapod.data.indexing import ItemIndex, user_text
from peapod.data.negatives import candidate_list
from peapod.inputs.prompt import GENERIC_INDEX, TEMPLATES, eval_template, source_text


@dataclass(frozen=True)
class Example:
    """One (input, target) pair. `user` is the internal user index (its prompt), `task` one of TASKS."""

    task: str
    user: int
    source: str
    target: str


def drop_users(users, uniforms, p: float, generic: int) -> np.ndarray:
    """User-id dropout (arrays, or one user and its draw): each user whose uniform draw is below `p`
    becomes `generic`, so that the prompt, not the id, has to carry the user."""
    return np.where(uniforms < p, generic, users)


def _user_str(user: int, rng: random.Random | None, dropout: float) -> str:
    if rng is None or dropout <= 0:
        return user_text(user)
    return user_text(int(drop_users(user, rng.random(), dropout, GENERIC_INDEX)))


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
    return take_turns(queues)


def take_turns(queues: list[list]) -> list:
    """The rotate schedule: the tasks' batches interleaved, one batch of each task in turn, each queue
    in its order, until all are used up."""
    return [q[turn] for turn in range(max((len(q) for q in queues), default=0)) for q in queues if turn < len(q)]


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


# ---- the dense objective's examples, as rows of internal indices ---------------------------------------
@dataclass(frozen=True)
class TrainSequences:
    """Every user's training items, flattened: user u's are flat[offsets[u] : offsets[u] + lengths[u]]."""

    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_dataset(cls, ds: Dataset) -> TrainSequences:
        lists = [ds.train_items(u) for u in range(ds.n_users)]
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = np.array([i for x in lists for i in x], dtype=np.int64)
        return cls(flat, offsets, lengths)

    def window(self, users: np.ndarray, start: np.ndarray, stop: np.ndarray, width: int) -> np.ndarray:
        """[N, width] items start..stop-1 of each user's training items (left-aligned, -1 padded)."""
        j = np.arange(width)[None, :]
        pos = start[:, None] + j
        valid = pos < stop[:, None]
        idx = np.where(valid, self.offsets[users][:, None] + pos, 0)
        return np.where(valid, self.flat[idx] if len(self.flat) else 0, -1)


@dataclass
class TaskRows:
    """One task's examples as index arrays.

    users: [N] whose prompt; text_users: [N] user-table row written in the input (generic after
    dropout); inputs: [N, H] input items (-1 padded); targets: [N, M] target items (item tasks);
    sentences: [N] explanation record index (explanation).
    """

    task: str
    users: np.ndarray
    text_users: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray | None = None
    sentences: np.ndarray | None = None
    prefix: np.ndarray | None = None  # [N] training items the prompt is folded in from (prompt_history prefix)

    def __len__(self) -> int:
        return len(self.users)


def newest_first(items: np.ndarray) -> np.ndarray:
    """Each row's items (left-aligned, -1 padded) in reverse order, still left-aligned."""
    n = (items >= 0).sum(1, keepdims=True)
    j = np.arange(items.shape[1])[None, :]
    src = np.where(j < n, n - 1 - j, 0)
    return np.where(j < n, np.take_along_axis(items, src, axis=1), -1)


def _dropout(users: np.ndarray, rng: np.random.Generator, p: float, generic: int) -> np.ndarray:
    return drop_users(users, rng.random(len(users)), p, generic) if p > 0 else users.copy()


def sequential_rows(seqs: TrainSequences, rng, max_history: int, m: int, dropout: float, generic: int) -> TaskRows:
    """Every training position t >= 1 of every user: the last max_history items before it -> the next m."""
    has = np.nonzero(seqs.lengths >= 2)[0]
    counts = seqs.lengths[has] - 1
    users = np.repeat(has, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    t = np.arange(len(users)) - first + 1  # 1 .. length-1 per user
    start = np.maximum(0, t - max_history)
    inputs = seqs.window(users, start, t, max_history)
    targets = seqs.window(users, t, np.minimum(t + m, seqs.lengths[users]), m)
    return TaskRows("sequential", users, _dropout(users, rng, dropout, generic), inputs, targets, prefix=t)


def topn_rows(seqs: TrainSequences, rng, m: int, dropout: float, generic: int, prefix: bool = False) -> TaskRows:
    """Candidate-free top-n: no input items, the prompts carry the user; the targets are m of the user's
    training items in random order, or with `prefix` the m items after a random position t >= 1, whose
    prompt is folded in from the first t."""
    if prefix:
        users = np.nonzero(seqs.lengths >= 2)[0]
        t = rng.integers(1, seqs.lengths[users])
        targets = seqs.window(users, t, np.minimum(t + m, seqs.lengths[users]), m)
        inputs = np.zeros((len(users), 0), dtype=np.int64)
        return TaskRows("topn", users, _dropout(users, rng, dropout, generic), inputs, targets, prefix=t)
    users = np.nonzero(seqs.lengths >= 1)[0]
    # A random order of each user's training items: sort random keys within each user.
    owner = np.repeat(np.arange(len(seqs.lengths)), seqs.lengths)
    order = np.lexsort((rng.random(len(seqs.flat)), owner))
    shuffled = TrainSequences(seqs.flat[order], seqs.offsets, seqs.lengths)
    targets = shuffled.window(users, np.zeros_like(users), np.minimum(m, seqs.lengths[users]), m)
    inputs = np.zeros((len(users), 0), dtype=np.int64)
    return TaskRows("topn", users, _dropout(users, rng, dropout, generic), inputs, targets)


def explanation_rows(records: list[Explanation], rng, dropout: float, generic: int) -> TaskRows:
    users = np.array([e.user for e in records], dtype=np.int64)
    items = np.array([[e.item] for e in records], dtype=np.int64).reshape(len(records), 1)
    text_users = _dropout(users, rng, dropout, generic) if rng is not None else users
    return TaskRows("explanation", users, text_users, items, sentences=np.arange(len(records)))
