"""Probe: explanations whose input holds the record's feature word (P5's hint prompts, PETER+), on the demo data.

Trains the `demo` recipe with all three tasks for up to 20 epochs or 8 minutes, as `mi-explanations.yaml` does,
with the explanation input's context slot (the one `model.explanation_context: retrieved` fills, read by the copy
head) holding instead:

* `feature`: the record's feature word;
* `feature-retrieved`: the feature word and the training sentence that mentions it, closest to how the user
  writes (the item's sentences with that feature first, then anyone's; a training record's own is left out);

then writes the test explanations with greedy and served decoding and scores them, beside the retrieval
baselines that see the same information. At test time the feature is the test record's own, as the field's
feature-given protocol has it. The probe swaps the context builder in place, so that no config switch exists
before an ablation shows it matters.

    python benchmarks/explanation_feature_probe.py feature runs/probe-feature [--set KEY=VALUE ...]

One JSON line per decoding is appended to OUT/probe.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from explanation_decodings import KEYS, generate, score  # benchmarks/, beside this script

import peapod.train.setup as train_setup
from peapod.config import load_config
from peapod.data.retrieval import ExplanationRetrieval
from peapod.evaluate.tasks import load_setup
from peapod.train.loop import train


class FeatureRetrieval(ExplanationRetrieval):
    """The training sentence that mentions a given feature, closest to how the user writes."""

    def fit(self, train):
        super().fit(train)
        self.by_feature: dict[str, list[int]] = {}
        for k, r in enumerate(self.records):
            self.by_feature.setdefault(r.feature, []).append(k)
        return self

    def explain_feature(self, user: int, item: int, feature: str, exclude: int | None = None) -> str:
        candidates = [k for k in self.by_item.get(item, ()) if k != exclude and self.records[k].feature == feature]
        candidates = candidates or [k for k in self.by_feature.get(feature, ()) if k != exclude]
        if not candidates:
            return self.explain(user, item, exclude)[0]
        profile = self.user_profile_without(user, exclude) or self.item_profile.get(item, {})
        return self.records[self._best(candidates, profile)].text


def contexts(mode: str, train_records, val_records) -> tuple[list[str], list[str]]:
    if mode == "feature":
        return [e.feature for e in train_records], [e.feature for e in val_records]
    r = FeatureRetrieval().fit(train_records)
    return (
        [f"{e.feature} | {r.explain_feature(e.user, e.item, e.feature, k)}" for k, e in enumerate(train_records)],
        [f"{e.feature} | {r.explain_feature(e.user, e.item, e.feature)}" for e in val_records],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["feature", "feature-retrieved"])
    p.add_argument("out")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    out = Path(a.out)
    train_setup.explanation_contexts = lambda cfg, tr, va: contexts(a.mode, tr, va)
    cfg = load_config("demo", ["train.epochs=20", "train.max_minutes=8", "model.explanation_context=retrieved", *a.overrides])
    t0 = time.time()
    summary = train(cfg, out, quiet=True)
    train_seconds = time.time() - t0

    setup = load_setup(out / "best", device="cpu")
    pred, records = setup.predictor, setup.explanations("test")
    retrieval = FeatureRetrieval.for_run(setup.dataset, setup.run_config)
    vocabulary = [e.feature for e in retrieval.records]  # the training records' features
    given = {(r.user, r.item): r.feature for r in records}
    retrieved = {(r.user, r.item): retrieval.explain_feature(r.user, r.item, r.feature) for r in records}
    if a.mode == "feature":
        pred.explanation_context = lambda q: given[(q.user, q.items[0])]
    else:
        pred.explanation_context = lambda q: f"{given[(q.user, q.items[0])]} | {retrieved[(q.user, q.items[0])]}"
    rows = {
        "retrieval": score(records, [retrieval.explain(r.user, r.item)[0] for r in records], vocabulary),
        "retrieval given the feature": score(records, [retrieved[(r.user, r.item)] for r in records], vocabulary),
    }
    for decoding in ("greedy", "serve"):
        hyps = generate(pred, records, decoding)
        rows[f"generated, {decoding}"] = score(records, hyps, vocabulary)
        rows[f"generated, {decoding}"]["examples"] = hyps[:3]
    with open(out / "probe.jsonl", "a", encoding="utf-8") as f:
        for name, metrics in rows.items():
            row = {"mode": a.mode, "overrides": a.overrides, "row": name, "records": len(records), "steps": summary["steps"],
                   "epochs": summary["epochs"], "best_epoch": summary["best_epoch"], "train_seconds": round(train_seconds, 1),
                   "machine": platform.node(), **metrics}
            f.write(json.dumps(row) + "\n")
            print(name, {k: metrics[k] for k in KEYS}, flush=True)


if __name__ == "__main__":
    main()
