"""Lever 5 of the laptop recipe: what building token ids once per epoch saves over tokenizing text per batch.

Both paths produce the same bare inputs (tests/test_laptop_levers.py checks them token for token), so
only their cost differs. Measured in one process, on the same examples: the time to get a batch's
tensors, and a whole optimizer step (forward + backward + AdamW) with either, as ratios.

    python benchmarks/input_encoding.py --data ../shared/data/toys --batches 30
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from peapod.data import build_item_index, load_dataset
from peapod.model.peapod import build_model
from peapod.train.config import load_config
from peapod.train.id_batches import IdTrainingData
from peapod.train.samplers import epoch_batches
from peapod.train.trainer import collate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/toys")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--config", default="configs/laptop.yaml")
    args = ap.parse_args()
    # The settings both paths can express: one position, single targets, full-vocabulary softmax.
    common = [f"data.path={args.data}", "model.item_targets=1", "model.topn_input=candidates", "train.topn_candidates=20",
              "train.seq_positions=one", "train.item_softmax=vocab", "train.select_by=loss", "model.cf_iterations=3"]
    ids_cfg = load_config(args.config, [*common, "train.input_encoding=ids"])
    text_cfg = load_config(args.config, [*common, "train.input_encoding=text", "model.item_init=random"])
    ds = load_dataset(args.data)
    index = build_item_index(ds, "atomic")
    model, tok = build_model(text_cfg.architecture(), ds, index)
    device = torch.device("cpu")
    t = time.perf_counter()
    ids_epoch = IdTrainingData(ds, index, tok, [], ids_cfg, model.config.max_whole_words).epoch(0)
    ids_build = time.perf_counter() - t
    t = time.perf_counter()
    text_epoch = epoch_batches(ds, index, [], ["sequential", "topn"], 0, 0, ids_cfg.train.batch_size, "rotate", 20, 20, 0.1)
    text_build = time.perf_counter() - t
    n = min(args.batches, len(ids_epoch), len(text_epoch))

    def text_batch(p):
        return collate(text_epoch[p], tok, text_cfg, model.config.max_whole_words, device)

    def ids_batch(p):
        return ids_epoch.batch(p, 0, 1, device)[0]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = {"data": args.data, "batch_size": ids_cfg.train.batch_size, "batches": n,
           "epoch_build_seconds": {"ids": round(ids_build, 3), "text_examples": round(text_build, 3)}}
    warm = ids_batch(0)
    model(**warm).loss.backward()  # first-call allocations out of the timings
    for name, get in (("ids", ids_batch), ("text", text_batch)):
        t = time.perf_counter()
        batches = [get(p) for p in range(n)]
        prep = (time.perf_counter() - t) / n
        width = sum(b["input_ids"].shape[1] for b in batches) / n
        t = time.perf_counter()
        for b in batches:
            loss = model(**b).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        step = (time.perf_counter() - t) / n
        out[name] = {"batch_tensors_ms": round(1000 * prep, 2), "model_step_ms": round(1000 * step, 1), "mean_input_tokens": round(width, 1),
                     "share_of_step_in_batching": round(prep / (prep + step), 3)}
    out["batching_speedup"] = round(out["text"]["batch_tensors_ms"] / out["ids"]["batch_tensors_ms"], 1)
    out["step_speedup"] = round((out["text"]["batch_tensors_ms"] + out["text"]["model_step_ms"]) / (out["ids"]["batch_tensors_ms"] + out["ids"]["model_step_ms"]), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
