"""Does the model use its personalized prompt? A counterfactual user-prompt ablation.

Evaluates one trained PeaPOD model twice on the same users: with each user's own soft prompt, and
with the prompts of randomly permuted users (`PeaPOD.permute_user_prompts_`; the text input stays
the user's own). Both ranking tasks use exact decodings (sequential: full ranking of the catalogue;
top-n: exact scores of the fixed 1+99 candidates), so the two runs differ only in the prompt. The
difference is paired per user, with its standard error: a model that ignores its user prompts
shows a difference within about two standard errors of zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import peapod
from peapod.evaluate.tasks import TaskOutput, evaluate_task, load_setup, ranking_task_metrics
from peapod.metrics.ranking import ndcg_gains, ranks_from_ranked_lists

__all__ = ["format_ablation_table", "run_user_prompt_ablation"]

EXACT_DECODING = {"sequential": "full", "topn": "score"}
PAIRED_METRIC, PAIRED_K = "NDCG@10", 10


def _target_ranks(out: TaskOutput) -> np.ndarray:
    """0-based target rank per user (MISS outside a full ranking's top-20 list)."""
    return np.asarray(out.ranks) if out.ranks is not None else ranks_from_ranked_lists(out.lists, out.targets)


def run_user_prompt_ablation(
    path: str | Path,
    tasks: tuple[str, ...] = ("sequential", "topn"),
    split: str = "test",
    max_users: int | None = 1000,
    permutations: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    data: str | None = None,
    device: str | None = None,
    progress: bool = False,
    decoder_history: int | None = None,
) -> dict:
    """Metrics with own vs permuted user prompts on the first `max_users` users of `split`.

    Args:
        path: run directory (its best/ model) or model directory of a `peapod` variant.
        tasks: ranking tasks, any of "sequential", "topn".
        permutations: how many random permutations to average (each seeded `seed + i`).
        decoder_history: history items handed to the decoder (`Predictor`); default the model's.
    Returns:
        {"own": {task: metrics}, "permuted": {task: metrics averaged over permutations},
         "paired": {task: {"metric", "own", "permuted", "difference", "std_error"}}, ...}
        with metrics as fractions in [0, 1].
    Raises:
        ValueError: the model has no user prompt (p5, pod) or a task is not a ranking task.
    """
    unknown = [t for t in tasks if t not in EXACT_DECODING]
    if unknown:
        raise ValueError(f"unknown ranking task(s) {unknown}; choose from {', '.join(EXACT_DECODING)}")
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    setup = load_setup(path, data=data, device=device, decoder_history=decoder_history)
    model = setup.predictor.model
    if not model.config.has_user_prompt:
        raise ValueError(f"the model at {path} is variant {model.config.variant!r}: it has no user prompt to ablate")
    n_users = setup.dataset.n_users
    original = (model.cf_users.detach().clone(), model.neighbor_index.clone())

    def run(task: str) -> TaskOutput:
        return evaluate_task(setup, task, EXACT_DECODING[task], split, max_users, batch_size, progress=progress)

    own = {t: run(t) for t in tasks}
    permuted: dict[str, list[TaskOutput]] = {t: [] for t in tasks}
    fixed_points = []
    for i in range(permutations):
        perm = torch.randperm(n_users, generator=torch.Generator().manual_seed(seed + i))
        fixed_points.append(int((perm == torch.arange(n_users)).sum()))
        model.permute_user_prompts_(perm)
        try:
            for t in tasks:
                permuted[t].append(run(t))
        finally:  # the caller's model comes back as it was, also after an error
            with torch.no_grad():
                model.cf_users.copy_(original[0])
                model.neighbor_index.copy_(original[1])

    result: dict = {
        "benchmark": "user-prompt-ablation",
        "model_dir": str(setup.model_dir),
        "dataset": setup.dataset.name,
        "variant": setup.predictor.variant,
        "composer": model.config.composer,
        "indexing": setup.predictor.indexing,
        "split": split,
        "users": len(own[tasks[0]].users),
        "permutations": permutations,
        "seeds": [seed + i for i in range(permutations)],
        "users_keeping_own_prompt": fixed_points,
        "decoding": {t: EXACT_DECODING[t] for t in tasks},
        "decoder_history": setup.predictor.decoder_history,
        "peapod_version": peapod.__version__,
        "own": {}, "permuted": {}, "paired": {},
    }
    n_items = setup.dataset.n_items
    for t in tasks:
        # The same metric definitions as `peapod evaluate` (no random fill: exact decodings are always valid).
        result["own"][t] = ranking_task_metrics(own[t], 0, False, n_items)
        per_perm = [ranking_task_metrics(o, 0, False, n_items) for o in permuted[t]]
        result["permuted"][t] = {k: float(np.mean([m[k] for m in per_perm])) for k in per_perm[0]}
        # Paired per user: own minus the user's mean over permutations.
        own_gains = ndcg_gains(_target_ranks(own[t]), PAIRED_K)
        permuted_gains = np.mean([ndcg_gains(_target_ranks(o), PAIRED_K) for o in permuted[t]], axis=0)
        diff = own_gains - permuted_gains
        n = len(diff)
        result["paired"][t] = {
            "metric": PAIRED_METRIC,
            "own": float(own_gains.mean()),
            "permuted": float(permuted_gains.mean()),
            "difference": float(diff.mean()),
            "std_error": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        }
    return result


def format_ablation_table(result: dict) -> str:
    """Plain-text summary: per task, NDCG@10 with own and permuted prompts and the paired difference (%)."""
    lines = [
        f"user-prompt ablation  {result['dataset']}  {result['variant']}/{result['composer']}  {result['indexing']}  "
        f"{result['users']} users  {result['permutations']} permutation(s)",
    ]
    for task, p in result["paired"].items():
        lines.append(
            f"{task:<11} {p['metric']} own {p['own'] * 100:.2f}%  permuted {p['permuted'] * 100:.2f}%  "
            f"difference {p['difference'] * 100:+.3f} ± {p['std_error'] * 100:.3f} points (paired s.e.)"
        )
    return "\n".join(lines)
