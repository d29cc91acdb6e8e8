"""Explanation retrieval baseline: answer with a training sentence, so explanation BLEU/ROUGE have a floor.

The rule is `peapod.data.retrieval.ExplanationRetrieval`'s; an empty answer (no training explanations at
all) counts as an invalid output. Training records are those a trained model learns from
(`peapod.data.explanations.split_explanations` with the trainer's defaults); the evaluated records are the
dataset's `test` explanations, or for `val` the same held-out part the evaluation runner uses.

`evaluate_retrieval` scores the retrieved sentences with the runner's explanation metrics: legacy BLEU-1/4 and
ROUGE (PETER/P5/POD), SacreBLEU with its signature, rouge-score F and the feature hit rate, and records the
protocol in the metrics JSON. Legacy references are cut to N tokenizer ids, as the legacy protocol does, only
when a reference tokenizer (a run's) is given; otherwise they are whole.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections import Counter
from pathlib import Path

from peapod.data.dataset import Dataset, Explanation
from peapod.data.retrieval import ExplanationRetrieval

RULE = (
    "the item's training explanation with the highest TF-IDF cosine to the user's training explanations "
    "(fallbacks: the user's own training explanation closest to that profile, then the training explanation closest "
    "to all of them; ties: the earlier record)"
)

def _reference_tokenizer(path: str | Path):
    """A run's tokenizer: RUN/best/tokenizer, MODEL/tokenizer or the directory itself."""
    from transformers import AutoTokenizer

    p = Path(path)
    for cand in (p / "best" / "tokenizer", p / "tokenizer", p):
        if cand.is_dir():
            return AutoTokenizer.from_pretrained(str(cand)), cand
    raise FileNotFoundError(f"no tokenizer directory at {p} (looked for best/tokenizer, tokenizer, and the directory)")


def explanation_records(ds: Dataset, split: str, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[Explanation], list[Explanation]]:
    """(training records, evaluated records) as a trained model and the evaluation runner see them."""
    from peapod.data.explanations import split_explanations

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    train, val = split_explanations(ds, val_fraction, seed)
    return train, (val if split == "val" else ds.explanations_for("test"))


def evaluate_retrieval(
    ds: Dataset,
    split: str = "test",
    *,
    max_records: int | None = None,
    reference_tokenizer: str | Path | None = None,
    truncate_references: int = 20,
    data_path: str = "",
    progress: bool = False,
) -> dict:
    """Retrieve an explanation for the first `max_records` records of `split` and score them (metrics JSON)."""
    from tqdm.auto import tqdm

    import peapod
    from peapod.metrics.text import explanation_metrics

    t0 = time.perf_counter()
    train, records = explanation_records(ds, split)
    if max_records:
        records = records[:max_records]
    model = ExplanationRetrieval().fit(train)
    hyps, sources = [], Counter()
    for r in tqdm(records, desc="retrieval", unit=" records", disable=not progress, mininterval=0.5):
        text, source = model.explain(r.user, r.item)
        hyps.append(text)
        sources[source] += 1
    refs = [r.text for r in records]
    legacy_refs, tok_dir = refs, None
    if reference_tokenizer is not None and refs:
        tok, tok_dir = _reference_tokenizer(reference_tokenizer)
        ids = tok(refs, add_special_tokens=True)["input_ids"]
        legacy_refs = [t.strip() for t in tok.batch_decode([x[:truncate_references] for x in ids], skip_special_tokens=True)]
    vocabulary = [e.feature for e in ds.explanations]
    metrics, signature = explanation_metrics(refs, hyps, [r.feature for r in records], vocabulary, legacy_refs)
    wall = round(time.perf_counter() - t0, 3)
    invalid = sources["none"]
    section = {
        "decoding": "retrieval",
        "method": RULE,
        "candidates": "the item's training explanations (fallbacks: the user's, then all)",
        "train_records": len(train),
        "records": len(records),
        "users": len(records),
        "distinct_users": len({r.user for r in records}),
        "sources": {k: sources[k] for k in ("item", "user", "global", "none")},
        "outputs": len(records),
        "invalid_outputs": invalid,
        "invalid_output_rate": invalid / len(records) if records else 0.0,
        "invalid_output": "no training explanation at all (empty output)",
        "references_truncated_to_tokens": truncate_references if tok_dir is not None else None,
        "reference_tokenizer": str(tok_dir) if tok_dir is not None else None,
        "wall_seconds": wall,
        "metrics": metrics,
        "metrics_std": None,
    }
    if signature:
        section["sacrebleu_signature"] = signature
    return {
        "format": "peapod-metrics/1",
        "protocol": "retrieval (no decoding; legacy and rigorous explanation metrics both reported)",
        "protocol_details": {
            "legacy": "BLEU-1/4 (tensorflow/nmt corpus BLEU on whitespace tokens) and set-based ROUGE of PETER/P5/POD; "
            + (f"references cut to the reference tokenizer's first {truncate_references} ids as the legacy protocol does"
               if tok_dir is not None else "references whole (no reference tokenizer given)"),
            "rigorous": "SacreBLEU (default 13a tokenisation, exp smoothing) and rouge-score F on whole references; "
            "FHR (= FMR): the record's feature named in the output; FCR, DIV, USR as PETER defines them "
            "(peapod.metrics.text.feature_metrics)",
        },
        "split": split,
        "seeds": [],
        "indexing": "none",
        "variant": "retrieval",
        "model": {"baseline": "retrieval", "rule": RULE, "tokens": "lowercase [a-z0-9]+ runs",
                  "weights": "TF-IDF, smoothed idf ln((1+N)/(1+df))+1, L2-normalised"},
        "dataset": {"name": ds.name, "path": data_path or ds.source, "users": ds.n_users, "items": ds.n_items},
        "max_users": max_records,
        "decoding": {"explanation": "retrieval"},
        "invalid_output_rate": {"explanation": section["invalid_output_rate"]},
        "users_evaluated": {"explanation": len(records)},
        "peapod_version": peapod.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "tasks": {"explanation": section},
        "wall_seconds": {"explanation": wall, "total": wall},
    }
