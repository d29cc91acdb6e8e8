"""Score a trained run's test explanations under greedy and served decoding, beside the retrieval baseline.

    python benchmarks/explanation_decodings.py RUN_DIR [--model best|checkpoint] [--decodings greedy,serve]

Prints one line of metrics per row (every test explanation record) and the first generated sentences
beside their references; appends the rows to RUN_DIR/decodings.jsonl. `serve` is what `peapod explain`
and the server use (greedy, no repeated bigram, at least 8 tokens).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peapod.data.retrieval import ExplanationRetrieval
from peapod.evaluate.tasks import load_setup
from peapod.infer.requests import Request
from peapod.metrics.text import explanation_metrics

KEYS = ["SacreBLEU", "rouge-score-rouge1-F", "rouge-score-rouge2-F", "rouge-score-rougeL-F", "BLEU-4", "FMR", "FCR", "DIV", "USR"]


def score(records, hypotheses, vocabulary) -> dict:
    m, _ = explanation_metrics([r.text for r in records], hypotheses, [r.feature for r in records], vocabulary)
    return {k: round(m[k], 4) for k in KEYS}


def generate(predictor, records, decoding: str, chunk: int = 128) -> list[str]:
    hypotheses = []
    for s in range(0, len(records), chunk):
        requests = [Request("explanation", [r.item], r.user) for r in records[s : s + chunk]]
        hypotheses += predictor.explain(predictor.encode(requests), decoding)
    return hypotheses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--model", default="best", choices=["best", "checkpoint"])
    p.add_argument("--decodings", default="greedy,serve")
    a = p.parse_args()
    run = Path(a.run)
    setup = load_setup(run / a.model, device="cpu")
    predictor, records = setup.predictor, setup.explanations("test")
    retrieval = ExplanationRetrieval.for_run(setup.dataset, setup.run_config)
    vocabulary = [e.feature for e in retrieval.records]  # the training records' features
    rows = {"retrieval": (score(records, [retrieval.explain(r.user, r.item)[0] for r in records], vocabulary), [])}
    for decoding in a.decodings.split(","):
        hypotheses = generate(predictor, records, decoding)
        rows[f"generated, {decoding}"] = (score(records, hypotheses, vocabulary), hypotheses[:5])
    with open(run / "decodings.jsonl", "a", encoding="utf-8") as f:
        for name, (metrics, examples) in rows.items():
            f.write(json.dumps({"row": name, "model": a.model, "records": len(records), **metrics, "examples": examples}) + "\n")
            print(name, metrics, flush=True)
            for sentence, record in zip(examples, records):
                print(f"    {sentence}  |  {record.text}")


if __name__ == "__main__":
    main()
