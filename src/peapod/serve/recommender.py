"""`peapod.Recommender`: a trained model served on raw ids (the dataset's own user and item strings).

    rec = peapod.Recommender.load("runs/demo")          # a run directory or a model directory
    rec.recommend("6", k=10)                             # [(item, log-likelihood), ...] best first
    rec.recommend(history=["2", "3", "4"], k=10)         # a user the model never saw (CF fold-in)
    rec.rank("6", ["2", "3", "4"])                       # the candidates, best first, exact scores
    rec.explain("6", "2")                                # a generated sentence

What the model is given:

* recommend (the sequential task): the user's items oldest first, of which the run's last
  `train.max_history` are written into the input. For a known user that is the whole sequence the
  dataset holds (training, validation and test items: everything known at serving time) unless an
  explicit `history` is passed. Scores are exact log-likelihoods of every catalogue item (the exact
  top k by best-first search over the item prefix tree, `Predictor.top_k`), not beam search.
  `exclude_history=True` removes the items of that history from the list.
* rank (the top-n task): the candidates, in the order given, written into the input; each is scored
  by its exact log-likelihood (`Predictor.rank_candidates`). Inputs longer than the model's token
  budget are cut, the scores stay exact for every candidate.
* explain: greedy decoding (no repeated bigram) of the explanation task for (user, item).
* users the model never saw (an id not in the training data, or no id at all) need a `history`; for
  the peapod variant their user prompt is built from CF vectors folded in from those items
  (`model.fold_in`) and their nearest training users. No retraining.

Batches: the `*_batch` methods take lists and run the encoder once per batch (user prompts included);
`recommend_batch(..., explain=True)` runs one more encoder pass and one generation for all the
(user, item) explanations of the batch. The HTTP server (`peapod.serve.app`) feeds these methods
from its micro-batcher. Model calls are serialised by a lock, so one `Recommender` may be shared by
threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peapod.data.dataset import Dataset
from peapod.infer.predictor import Predictor, Request
from peapod.infer.run import check_same_data, open_run
from peapod.serve.inputs import (
    MAX_CANDIDATES,
    MAX_HISTORY,
    MAX_K,
    UnknownItem,
    UnknownUser,
    broadcast,
    check_each,
)

__all__ = [
    "MAX_CANDIDATES",
    "MAX_HISTORY",
    "MAX_K",
    "Recommender",
    "UnknownItem",
    "UnknownUser",
]

EXPLAIN_CHUNK = 32  #: explanations generated per hold of the model lock


@dataclass(frozen=True)
class _Who:
    """A resolved user: raw id (or None), internal index (None: unseen), the items it is served with."""

    raw: str | None
    index: int | None
    history: tuple[int, ...]


class Recommender:
    """Recommendations, rankings and explanations of one trained model, on raw ids.

    Build it with `Recommender.load(path)`; or directly from a `Predictor` and the `Dataset` the model
    was trained on (the dataset provides each known user's history).
    """

    def __init__(self, predictor: Predictor, dataset: Dataset | None, *, model_dir: Path | None = None,
                 run_dir: Path | None = None, data_path: str | None = None):
        self.predictor = predictor
        self.dataset = dataset
        self.model_dir = model_dir
        self.run_dir = run_dir
        self.data_path = data_path
        if dataset is not None:
            check_same_data(dataset, predictor.bundle, dataset.name)
        self._lock = threading.RLock()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = "cpu",
        data: str | Path | Dataset | None = None,
        *,
        max_history: int | None = None,
        warm_up: bool = True,
    ) -> Recommender:
        """Load a run directory (its `best/` model) or a model directory.

        Args:
            device: "cpu", "cuda" (or "cuda:N"); None picks CUDA when available.
            data: the dataset the model was trained on ('demo', 'demo-toys', a P5 directory, a table, or a loaded
                `Dataset`); default the run's `config.json` `data.path` (a bare model trained on an
                embedded dataset finds it by name too). Needed for known users' histories.
            max_history: most recent history items written into a sequential input; default the
                run's `train.max_history` (a bare model directory, without its run, defaults to 20).
            warm_up: build the item structures (prefix tree) now rather than on the first call.

        Raises:
            FileNotFoundError: no model at `path`. ValueError: no dataset can be determined, or it is
            not the one the model was trained on. DataError: unreadable data.
        """
        run = open_run(path, data=data, device=device, max_history=max_history)
        rec = cls(run.predictor, run.dataset, model_dir=run.model_dir, run_dir=run.run_dir, data_path=run.data_path)
        if warm_up:
            rec.warm_up()
        return rec

    def warm_up(self) -> None:
        """Build the item structures exact scoring and top-k search use (not the beam-search trie)."""
        p = self.predictor
        _ = p.item_tokens, p.prefix_tree, p.tree_children

    # ---- facts --------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.predictor.n_items

    @property
    def n_users(self) -> int:
        return self.predictor.n_users

    @property
    def max_k(self) -> int:
        return min(MAX_K, self.n_items)

    def info(self) -> dict:
        """What is being served: model configuration, variant, indexing, catalogue, users, dataset."""
        p = self.predictor
        return {
            "model": p.model.config.model_dump(),
            "variant": p.variant,
            "indexing": p.indexing,
            "catalogue_size": p.n_items,
            "users": p.n_users,
            "dataset": self.dataset.name if self.dataset is not None else p.bundle.extra.get("dataset"),
            "data_path": self.data_path,
            "max_history": p.max_history,
            "device": str(p.device),
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "limits": {"k": [1, self.max_k], "history": [1, MAX_HISTORY], "candidates": [1, MAX_CANDIDATES]},
        }

    def known_user(self, user: str) -> bool:
        return self.predictor.user_index(str(user)) is not None

    def user_history(self, user: str) -> list[str]:
        """The items (raw ids, oldest first) the dataset holds for a known user."""
        who = self._who(user, None)
        return [self.predictor.bundle.item_ids[i] for i in who.history]

    # ---- resolving raw ids ----------------------------------------------------------------------
    def _item(self, item: Any, where: str = "item") -> int:
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise ValueError(f"{where} ids are strings, got {type(item).__name__}")
        i = self.predictor.item_index(str(item))
        if i is None:
            raise UnknownItem(item, where)
        return i

    def _history(self, history: Sequence[Any]) -> tuple[int, ...]:
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise ValueError("history must be a list of item ids")
        if not 1 <= len(history) <= MAX_HISTORY:
            raise ValueError(f"history must hold 1..{MAX_HISTORY} items, got {len(history)}")
        return tuple(self._item(i, "history item") for i in history)

    def _who(self, user: Any, history: Sequence[Any] | None) -> _Who:
        """Resolve (user, history): a known user is served with its dataset sequence unless a history
        is given; an unknown or absent user needs a history."""
        if user is not None and (not isinstance(user, (str, int)) or isinstance(user, bool)):
            raise ValueError(f"user ids are strings, got {type(user).__name__}")
        raw = None if user is None else str(user)
        index = None if raw is None else self.predictor.user_index(raw)
        if history is not None:
            return _Who(raw, index, self._history(history))
        if raw is None:
            raise ValueError("give a user id, a history, or both")
        if index is None:
            raise UnknownUser(raw)
        if self.dataset is None:
            raise ValueError(f"no dataset loaded, so the history of user {raw!r} is unknown; pass a history")
        return _Who(raw, index, tuple(self.dataset.sequences[index]))

    def _k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be in 1..{self.max_k} (at most {MAX_K} and the catalogue size {self.n_items}), got {k}")
        return k

    # ---- recommend ----------------------------------------------------------------------------
    def recommend(
        self,
        user: str | None = None,
        k: int = 10,
        exclude_history: bool = True,
        *,
        history: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The k best catalogue items for a user: [(item id, log-likelihood)], best first.

        `user`: a training user's id (served with its known sequence), or with `history` any id or
        None (a user the model never saw: CF fold-in from the history; a known user with a history is
        served with that history instead of its sequence). `exclude_history`: leave out the items of
        the history the user is served with. Fewer than k items come back only when the catalogue
        minus the history holds fewer.

        Raises: UnknownUser (unknown user without history), UnknownItem (history item not in the
        catalogue), ValueError (k outside 1..min(100, catalogue), history length outside 1..200).
        """
        return self.recommend_batch([user], k, exclude_history, histories=[history])[0]

    def recommend_batch(
        self,
        users: Sequence[str | None] | None = None,
        k: int | Sequence[int] = 10,
        exclude_history: bool | Sequence[bool] = True,
        *,
        histories: Sequence[Sequence[str] | None] | None = None,
        explain: bool | Sequence[bool] = False,
        return_exceptions: bool = False,
    ) -> list:
        """`recommend` for many users at once: one encoder pass and one top-k search for the batch.

        `users` and `histories` are parallel lists (either may be omitted); `k`, `exclude_history` and
        `explain` are one value or one per request. With `explain`, each item comes back as
        (item, score, explanation) instead (one more encoder pass and one generation for all of them).
        `return_exceptions=True` puts a failed request's exception in its place instead of raising.
        """
        n = len(users) if users is not None else len(histories) if histories is not None else 0
        users = list(users) if users is not None else [None] * n
        histories = list(histories) if histories is not None else [None] * n
        if len(histories) != n:
            raise ValueError(f"{len(histories)} histories for {n} users")
        ks = broadcast(k, n, "k")
        excl = broadcast(exclude_history, n, "exclude_history")
        expl = broadcast(explain, n, "explain")
        def check(j: int) -> _Who:
            who = self._who(users[j], histories[j])
            ks[j] = self._k(ks[j])
            return who

        results, ok, whos = check_each(n, check, return_exceptions)
        if not ok:
            return results
        item_ids = self.predictor.bundle.item_ids
        with self._lock:
            requests = [Request("sequential", w.history, w.index, profile=w.history) for w in whos]
            exclude = [w.history if excl[j] else () for j, w in zip(ok, whos)]
            items, scores = self.predictor.top_k(requests, max(ks[j] for j in ok), exclude=exclude)
        lists = [list(zip(it[: ks[j]], sc[: ks[j]])) for j, it, sc in zip(ok, items, scores)]
        pairs = [(q, i) for q, (j, lst) in enumerate(zip(ok, lists)) if expl[j] for i, _ in lst]
        exp_requests = [Request("explanation", (i,), whos[q].index, profile=whos[q].history) for q, i in pairs]
        texts = dict(zip(pairs, self._explain(exp_requests)))
        for q, (j, lst) in enumerate(zip(ok, lists)):
            if expl[j]:
                results[j] = [(item_ids[i], float(s), texts[(q, i)]) for i, s in lst]
            else:
                results[j] = [(item_ids[i], float(s)) for i, s in lst]
        return results

    # ---- rank ---------------------------------------------------------------------------------
    def rank(
        self,
        user: str | None,
        candidates: Sequence[str],
        *,
        history: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The candidates sorted by exact log-likelihood under the top-n task: [(item, score)], best first.

        Candidates are distinct catalogue item ids (1..1000 of them). A user the model never saw needs
        `history` (used only for the CF fold-in of its user prompt).
        """
        return self.rank_batch([user], [candidates], histories=[history])[0]

    def rank_batch(
        self,
        users: Sequence[str | None],
        candidates: Sequence[Sequence[str]],
        *,
        histories: Sequence[Sequence[str] | None] | None = None,
        return_exceptions: bool = False,
    ) -> list:
        """`rank` for many (user, candidates) pairs: one encoder pass and one scoring pass."""
        n = len(users)
        if len(candidates) != n:
            raise ValueError(f"{len(candidates)} candidate lists for {n} users")
        histories = list(histories) if histories is not None else [None] * n
        if len(histories) != n:
            raise ValueError(f"{len(histories)} histories for {n} users")
        results, ok, checked = check_each(
            n, lambda j: (self._who(users[j], histories[j]), self._candidates(candidates[j])), return_exceptions
        )
        if not ok:
            return results
        with self._lock:
            requests = [Request("topn", c, w.index, profile=w.history) for w, c in checked]
            items, scores = self.predictor.rank_candidates(requests)
        item_ids = self.predictor.bundle.item_ids
        for j, it, sc in zip(ok, items, scores):
            results[j] = [(item_ids[i], float(s)) for i, s in zip(it, sc)]
        return results

    def _candidates(self, candidates: Sequence[Any]) -> tuple[int, ...]:
        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
            raise ValueError("candidates must be a list of item ids")
        if not 1 <= len(candidates) <= MAX_CANDIDATES:
            raise ValueError(f"candidates must hold 1..{MAX_CANDIDATES} items, got {len(candidates)}")
        out = tuple(self._item(c, "candidate item") for c in candidates)
        if len(set(out)) != len(out):
            raise ValueError("candidates must be distinct")
        return out

    # ---- explain ------------------------------------------------------------------------------
    def _explain(self, requests: list[Request]) -> list[str]:
        """Greedy explanations, `EXPLAIN_CHUNK` generations per hold of the model lock, so that a
        request for many explanations lets other calls sharing this Recommender run in between."""
        texts: list[str] = []
        for start in range(0, len(requests), EXPLAIN_CHUNK):
            with self._lock:
                texts.extend(self.predictor.explain(requests[start : start + EXPLAIN_CHUNK], "serve"))
        return texts

    def explain(self, user: str | None, item: str, *, history: Sequence[str] | None = None) -> str:
        """A generated explanation (greedy, no repeated bigram) of why `user` would like `item`.

        A user the model never saw needs `history` (for the CF fold-in of its user prompt).
        """
        return self.explain_batch([user], [item], histories=[history])[0]

    def explain_batch(
        self,
        users: Sequence[str | None],
        items: Sequence[str],
        *,
        histories: Sequence[Sequence[str] | None] | None = None,
        return_exceptions: bool = False,
    ) -> list:
        """`explain` for many (user, item) pairs: one encoder pass and one generation."""
        n = len(users)
        if len(items) != n:
            raise ValueError(f"{len(items)} items for {n} users")
        histories = list(histories) if histories is not None else [None] * n
        if len(histories) != n:
            raise ValueError(f"{len(histories)} histories for {n} users")
        def check(j: int) -> Request:
            who = self._who(users[j], histories[j])
            return Request("explanation", (self._item(items[j]),), who.index, profile=who.history)

        results, ok, requests = check_each(n, check, return_exceptions)
        if not ok:
            return results
        texts = self._explain(requests)
        for j, t in zip(ok, texts):
            results[j] = t
        return results
