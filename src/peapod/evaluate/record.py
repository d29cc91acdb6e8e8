"""What an evaluation writes: metrics.json's header (protocol, model, data, machine) and one section per task
(decoding, candidates, counts, timing, metrics per seed with their mean and standard deviation)."""

from __future__ import annotations

import datetime as _dt
import statistics
from dataclasses import dataclass

import torch

import peapod
from peapod.evaluate.tasks import (
    BEAM_SIZE,
    SEQ_LIST_LENGTH,
    TOPN_LIST_LENGTH,
    EvalSetup,
    TaskOutput,
    ranking_task_metrics,
)
from peapod.infer.predictor import EXPLANATION_DECODINGS
from peapod.metrics.ranking import HISTORY_RULES
from peapod.metrics.text import explanation_metrics


@dataclass(frozen=True)
class EvalSettings:
    """An evaluation's resolved settings: the protocol's presets with the caller's overrides."""

    protocol: str
    decodings: dict[str, str]
    max_users: int | None
    seeds: list[int]
    batch_size: int
    history: str
    truncate_references: int | None
    split: str
    legacy_random_fill: bool


def _explanation_metrics(setup: EvalSetup, out: TaskOutput, truncate_references: int | None) -> dict:
    refs = [r.text for r in out.records]
    legacy_refs = refs
    if truncate_references:
        tok = setup.predictor.tokenizer
        ids = tok(refs, add_special_tokens=True)["input_ids"]
        legacy_refs = [t.strip() for t in tok.batch_decode([x[:truncate_references] for x in ids], skip_special_tokens=True)]
    vocabulary = [e.feature for e in setup.dataset.explanations]
    metrics, signature = explanation_metrics(refs, out.hypotheses, [r.feature for r in out.records], vocabulary, legacy_refs)
    if signature is not None:
        out.extra["sacrebleu_signature"] = signature
    return metrics


def _summarize(per_seed: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, float] | None]:
    seeds = list(per_seed)
    keys = list(per_seed[seeds[0]]) if seeds else []
    mean = {k: float(statistics.fmean(per_seed[s][k] for s in seeds)) for k in keys}
    if len(seeds) < 2:
        return mean, None
    return mean, {k: float(statistics.stdev(per_seed[s][k] for s in seeds)) for k in keys}


def candidates_text(setup: EvalSetup, task: str, decoding: str) -> str:
    if task == "sequential":
        if decoding == "beam":
            return f"unconstrained generation (any text; catalogue has {setup.dataset.n_items} items)"
        return f"full catalogue ({setup.dataset.n_items} items)"
    if task == "topn":
        k = len(setup.negatives[0]) if setup.negatives else 0
        return f"1+{k} sampled, fixed file ({setup.negatives_source})"
    return "none (text generation)"


def result_header(setup: EvalSetup, settings: EvalSettings, threads: dict) -> dict:
    """metrics.json before its task sections: the protocol, the model, the data, the machine."""
    pred = setup.predictor
    model_cfg = pred.model.config
    return {
        "format": "peapod-metrics/1",
        "protocol": settings.protocol,
        "split": settings.split,
        "seeds": settings.seeds,
        "indexing": pred.indexing,
        "variant": model_cfg.variant,
        "model": {
            "dir": str(setup.model_dir), "run_dir": str(setup.run_dir) if setup.run_dir else None,
            "variant": model_cfg.variant, "composer": model_cfg.composer if model_cfg.has_user_prompt else None,
            "backbone": model_cfg.backbone, "indexing": pred.indexing,
        },
        "dataset": {"name": setup.dataset.name, "path": setup.data_path, "users": setup.dataset.n_users, "items": setup.dataset.n_items},
        "decoding": {},
        "candidates": {},
        "beam_size": {},
        "invalid_output_rate": {},
        "users_evaluated": {},
        "wall_seconds": {},
        "legacy_random_fill": settings.legacy_random_fill,
        "max_users": settings.max_users,
        "batch_size": settings.batch_size,
        "max_history": pred.max_history,
        "decoder_history": pred.decoder_history,
        "peapod_version": peapod.__version__,
        "torch_version": torch.__version__,
        "device": str(pred.device),
        "threads": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "tasks": {},
    }


def explanation_section(setup: EvalSetup, output: TaskOutput, settings: EvalSettings) -> tuple[dict, dict, int]:
    decoding = settings.decodings["explanation"]
    generation = EXPLANATION_DECODINGS[decoding]
    section: dict = {"decoding": decoding, "generation": dict(generation)}
    if decoding == "legacy":
        section["generation_note"] = (
            "published decoding: group beam search with 21 beams, 3 groups, diversity_penalty 0.0, "
            "min_length 10. With a zero penalty no diversity processor is added and the 3 groups of 7 beams "
            "are identical, so it is plain beam search with 7 beams (group beam search left transformers 5 core)"
        )
    section["references_truncated_to_tokens"] = settings.truncate_references
    metrics = _explanation_metrics(setup, output, settings.truncate_references)
    per_seed = {str(s): metrics for s in settings.seeds}  # nothing seeded in text generation
    section["records"] = len(output.records)
    section["distinct_users"] = len(set(output.users))
    if "sacrebleu_signature" in output.extra:
        section["sacrebleu_signature"] = output.extra["sacrebleu_signature"]
    section["invalid_output"] = "empty generated text"
    return section, per_seed, generation["num_beams"]


def ranking_section(setup: EvalSetup, output: TaskOutput, task: str, settings: EvalSettings) -> tuple[dict, dict, int | None]:
    pred = setup.predictor
    decoding = settings.decodings[task]
    section: dict = {"decoding": decoding}
    fill = settings.legacy_random_fill and output.lists is not None
    per_seed = {str(s): ranking_task_metrics(output, s, fill, setup.dataset.n_items) for s in settings.seeds}
    beam = BEAM_SIZE if decoding in ("beam", "constrained") else None
    if decoding in ("beam", "constrained"):
        section["num_return_sequences"] = SEQ_LIST_LENGTH if task == "sequential" else TOPN_LIST_LENGTH
        section["length_penalty"] = 1.0
        section["max_new_tokens"] = pred.trie.max_length
    if task == "sequential" and decoding == "full":
        section["method"] = (
            f"exact top-{SEQ_LIST_LENGTH} of the full-catalogue log-likelihood ranking (best-first search); "
            f"ranks beyond {SEQ_LIST_LENGTH} are misses at every reported cut-off"
        )
    if task == "topn" and decoding == "score":
        section["ties"] = "pessimistic (candidates scoring equal to the target rank above it)"
    if pred.decoder_history:
        section["decoder_history"] = (
            f"the user's last {pred.decoder_history} items before the target teacher-forced into the decoder; "
            f"step {pred.decoder_history} scores the items"
        )
    if task == "sequential":
        section["history"] = settings.history
        section["history_rule"] = HISTORY_RULES[settings.history]
    section["invalid_output"] = "generated text naming no catalogue item" if decoding == "beam" else (
        "constrained beam that could not finish an allowed item" if decoding == "constrained" else "none possible"
    )
    section["legacy_random_fill"] = fill
    section.update(output.extra)
    return section, per_seed, beam


def add_section(result: dict, task: str, section: dict, output: TaskOutput, per_seed: dict, beam, wall: float, candidates: str) -> None:
    """Complete a task's section (counts, timing, metrics over seeds) and file it in `result`."""
    mean, std = _summarize(per_seed)
    invalid_rate = output.invalid / output.outputs if output.outputs else 0.0
    section.update({
        "candidates": candidates,
        "beam_size": beam,
        "users": len(output.users),
        "outputs": output.outputs,
        "invalid_outputs": output.invalid,
        "invalid_output_rate": invalid_rate,
        "truncated_inputs": output.truncated_inputs,
        "wall_seconds": round(wall, 3),
        "users_per_second": round(len(output.users) / wall, 3) if wall > 0 else None,
        "metrics": mean,
        "metrics_std": std,
        "per_seed": per_seed,
    })
    result["tasks"][task] = section
    result["decoding"][task] = section["decoding"]
    result["candidates"][task] = candidates
    result["beam_size"][task] = beam
    result["invalid_output_rate"][task] = invalid_rate
    result["users_evaluated"][task] = len(output.users)
    result["wall_seconds"][task] = round(wall, 3)
