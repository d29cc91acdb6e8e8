"""The per-task half of evaluation: what an evaluation reads (`EvalSetup`, `load_setup`) and one task's
model outputs over a split (`evaluate_task`), before `peapod.evaluate.protocol.evaluate_run` turns them
into metrics. The protocol presets and decoding names live here too."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from peapod.config import RunConfig
from peapod.data.dataset import Dataset, Explanation
from peapod.data.explanations import run_explanation_split
from peapod.data.negatives import candidate_list, ensure_negatives, read_negatives
from peapod.infer.predictor import (
    Predictor,
    Request,
    normalize_task,
)
from peapod.infer.run import open_run
from peapod.metrics.ranking import (
    PROTOCOL_HISTORY,
    metrics_from_ranked_lists,
    rank_of_target,
    ranking_metrics,
)

TASK_ORDER = ("sequential", "topn", "explanation")
SEQ_DECODINGS = ("beam", "constrained", "full")
TOPN_DECODINGS = ("beam", "score")
BEAM_SIZE = 20  # the published num_beams for both recommendation tasks
SEQ_LIST_LENGTH = 20  # outputs per user for the sequential task (HR@20 needs 20)
TOPN_LIST_LENGTH = 10  # the published top-n `top_n`
SEQ_KS, SEQ_NDCG_KS = (1, 5, 10, 20), (5, 10, 20)
TOPN_KS, TOPN_NDCG_KS = (1, 5, 10), (5, 10)
LEGACY_REFERENCE_TOKENS = 20  # POD/PeaPOD `exp_len`: references cut to their first 20 tokenizer ids

PROTOCOLS: dict[str, dict] = {
    "legacy": {"sequential": "beam", "topn": "beam", "explanation": "legacy", "truncate_references": LEGACY_REFERENCE_TOKENS,
               "history": PROTOCOL_HISTORY["legacy"]},
    "rigorous": {"sequential": "full", "topn": "score", "explanation": "greedy", "truncate_references": None,
                 "history": PROTOCOL_HISTORY["rigorous"]},
}



# ---- setup ------------------------------------------------------------------------------------
@dataclass
class EvalSetup:
    """Everything an evaluation reads: model, data, fixed candidates, and where they came from."""

    predictor: Predictor
    dataset: Dataset
    negatives: list[list[int]]
    negatives_source: str
    model_dir: Path
    run_dir: Path | None
    run_config: RunConfig  # the run's, or the defaults for a bare model
    data_path: str
    load_seconds: float = 0.0
    _explanations: dict[str, list[Explanation]] = field(default_factory=dict)

    def explanations(self, split: str) -> list[Explanation]:
        """Explanation records of a split; `val` is the training run's held-out validation part."""
        if split not in self._explanations:
            if split == "val":
                self._explanations[split] = run_explanation_split(self.dataset, self.run_config, 1)
            else:
                self._explanations[split] = self.dataset.explanations_for(split)
        return self._explanations[split]


def load_setup(path: str | Path, data: str | None = None, device: str | torch.device | None = None, decoder_history: int | None = None) -> EvalSetup:
    """Load the model of a run (or model) directory, its dataset and its fixed top-n candidates.

    `decoder_history`: override the model's (`Predictor`); inference only, so a trained run can be
    read either way.

    Raises:
        FileNotFoundError: no model at `path`; ValueError: no dataset can be determined, or the
        dataset does not match the model; DataError: unreadable data.
    """
    t0 = time.perf_counter()
    run = open_run(path, data=data, device=device, decoder_history=decoder_history)
    ds, home = run.dataset, run.run_dir if run.run_dir is not None else run.model_dir
    cache = home / "negative_samples.txt"
    if cache.is_file():
        negatives, source = read_negatives(ds, cache), str(cache)
    elif ds.negatives is not None:
        negatives, source = ds.negatives, f"dataset {run.data_path} (its own negative_samples.txt)"
    else:
        seed = run.config.data.negatives_seed
        negatives, source = ensure_negatives(ds, cache, seed=seed), f"{cache} (sampled, seed {seed})"
    return EvalSetup(run.predictor, ds, negatives, source, run.model_dir, run.run_dir, run.config, run.data_path, time.perf_counter() - t0)


# ---- per-task evaluation ----------------------------------------------------------------------
@dataclass
class TaskOutput:
    """Model outputs of one task, before the seeded part (random fill) and the metrics."""

    task: str
    decoding: str
    users: list[int]
    targets: list[int] = field(default_factory=list)
    lists: list[list[int]] | None = None  # ranked item lists (list-based decodings)
    ranks: list[int] | None = None  # 0-based ranks (score-based decodings)
    invalid: int = 0
    outputs: int = 0
    truncated_inputs: int = 0
    wall_seconds: float = 0.0
    encode_seconds: float = 0.0  # part of wall_seconds spent building inputs and running the encoder
    extra: dict = field(default_factory=dict)
    hypotheses: list[str] | None = None
    records: list[Explanation] | None = None


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(
        total=total, desc=desc, unit="user", dynamic_ncols=True, leave=False,
        disable=not (enabled and sys.stderr.isatty()),
    )


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def evaluate_task(
    setup: EvalSetup,
    task: str,
    decoding: str,
    split: str,
    max_users: int | None,
    batch_size: int,
    *,
    history: str = "included",
    progress: bool = False,
) -> TaskOutput:
    """Run the model for one task on the first `max_users` users (explanation: records) of `split`."""
    task = normalize_task(task)
    pred = setup.predictor
    ds = setup.dataset
    t0 = time.perf_counter()
    if task == "explanation":
        records = setup.explanations(split)
        if max_users is not None:
            records = records[:max_users]
        out = TaskOutput(task, decoding, [e.user for e in records], records=records, hypotheses=[])
        bar = _progress(len(records), "explanation", progress)
        for s, e in _batches(len(records), batch_size):
            chunk = records[s:e]
            t_enc = time.perf_counter()
            enc = pred.encode([Request("explanation", [r.item], r.user) for r in chunk])
            out.encode_seconds += time.perf_counter() - t_enc
            out.truncated_inputs += sum(enc.truncated)
            out.hypotheses.extend(pred.explain(enc, decoding))
            bar.update(len(chunk))
        bar.close()
        out.outputs = len(out.hypotheses)
        out.invalid = sum(1 for h in out.hypotheses if not h.strip())
        out.wall_seconds = time.perf_counter() - t0
        return out

    n = ds.n_users if max_users is None else min(max_users, ds.n_users)
    users = list(range(n))
    out = TaskOutput(task, decoding, users)
    if task == "sequential":
        out.lists = []
    elif decoding == "beam":
        out.lists = []
        out.extra["off_candidate_outputs"] = 0
    else:
        out.ranks = []
    bar = _progress(n, task, progress)
    for s, e in _batches(n, batch_size):
        chunk = users[s:e]
        histories, targets = zip(*(ds.history_and_target(u, split) for u in chunk))
        out.targets.extend(targets)
        if task == "sequential":
            t_enc = time.perf_counter()
            enc = pred.encode([Request("sequential", h, u) for h, u in zip(histories, chunk)])
            out.encode_seconds += time.perf_counter() - t_enc
            exclude = [ds.seen_items(u, split) for u in chunk] if history == "excluded" else None
            if decoding == "beam":
                res = pred.beam_items(enc, BEAM_SIZE, SEQ_LIST_LENGTH)
            elif decoding == "constrained":
                res = pred.beam_items(enc, BEAM_SIZE, SEQ_LIST_LENGTH, constrained=True, exclude=exclude)
            elif decoding == "full":
                lists, _ = pred.top_k(enc, SEQ_LIST_LENGTH, exclude=exclude)
                res = None
                out.lists.extend(lists)
                out.outputs += sum(len(x) for x in lists)
            else:
                raise ValueError(f"unknown sequential decoding {decoding!r}; choose {', '.join(SEQ_DECODINGS)}")
            if res is not None:
                if decoding == "beam" and exclude is not None:
                    # free generation cannot be steered away from them, so they are dropped from its lists
                    res.items = [[i for i in items if i not in set(ex)] for items, ex in zip(res.items, exclude)]
                out.lists.extend(res.items)
                out.invalid += res.invalid
                out.outputs += res.total
        else:
            cands = [candidate_list(t, setup.negatives[u], u) for t, u in zip(targets, chunk)]
            t_enc = time.perf_counter()
            enc = pred.encode([Request("topn", c, u, profile=h) for c, u, h in zip(cands, chunk, histories)])
            out.encode_seconds += time.perf_counter() - t_enc
            if decoding == "beam":
                res = pred.beam_items(enc, BEAM_SIZE, TOPN_LIST_LENGTH)
                out.lists.extend(res.items)
                out.invalid += res.invalid
                out.outputs += res.total
                out.extra["off_candidate_outputs"] += sum(
                    1 for items, c in zip(res.items, cands) for i in items if i >= 0 and i not in set(c)
                )
            elif decoding == "score":
                scores = pred.score_candidates(enc, cands)
                where = torch.tensor([c.index(t) for c, t in zip(cands, targets)])
                out.ranks.extend(rank_of_target(scores, where, ties="pessimistic").tolist())
                out.outputs += len(chunk)  # one complete ranking per user; nothing can be invalid
            else:
                raise ValueError(f"unknown top-n decoding {decoding!r}; choose {', '.join(TOPN_DECODINGS)}")
        out.truncated_inputs += sum(enc.truncated)
        bar.update(len(chunk))
    bar.close()
    out.wall_seconds = time.perf_counter() - t0
    return out


def random_fill(lists: list[list[int]], n_items: int, seed: int, stream: int = 0) -> list[list[int]]:
    """Replace every invalid (-1) entry by a uniformly random item, as the published scripts did.

    Seeded by (seed, stream) and drawn in list order, so it is reproducible; valid entries are kept.
    """
    rng = np.random.default_rng([int(seed), int(stream)])
    return [[int(rng.integers(n_items)) if i < 0 else i for i in items] for items in lists]


def ranking_task_metrics(out: TaskOutput, seed: int, fill: bool, n_items: int) -> dict[str, float]:
    ks, nks = (SEQ_KS, SEQ_NDCG_KS) if out.task == "sequential" else (TOPN_KS, TOPN_NDCG_KS)
    if out.ranks is not None:
        return ranking_metrics(out.ranks, ks=ks, ndcg_ks=nks)
    lists = out.lists
    if fill:
        lists = random_fill(lists, n_items, seed, stream=TASK_ORDER.index(out.task))
    return metrics_from_ranked_lists(lists, out.targets, ks=ks, ndcg_ks=nks)
