"""Evaluation of a trained run on the three tasks, under the legacy or the rigorous protocol.

`evaluate_run(RUN_DIR)` loads the model, the dataset and the run's fixed top-n candidates, evaluates
the requested tasks on the first `max_users` users (in dataset order) of a split, writes
`metrics.json` and returns the same dictionary.

Protocols (presets; every choice can be overridden):

* `legacy`, as published for P5/POD/PeaPOD:
  - sequential `beam`: free beam search, 20 beams, 20 outputs, each parsed as an item id;
  - top-n `beam`: free beam search over the 1+99 candidate input, 20 beams, 10 outputs;
  - explanation `legacy` decoding (7 beams, min length 10, max length 50), legacy BLEU/ROUGE
    references cut to their first 20 tokenizer ids (POD/PeaPOD `exp_len`).
* `rigorous`:
  - sequential `full`: rank of the target among all catalogue items by exact log-likelihood (the
    exact top 20 by best-first search, so exact at every reported cut-off; history excluded);
  - top-n `score`: exact log-likelihood of the 1+99 candidates, sorted (ties count against the
    target);
  - explanation `greedy` decoding, references as they are.
* other decodings: sequential `constrained` (trie-constrained beam search, 20 beams, 20 outputs),
  explanation `beam` (4 beams, max length 50).

All explanation metrics (legacy BLEU/ROUGE, SacreBLEU with its signature, rouge-score F, feature hit
rate) are computed under both protocols; the protocol decides decoding and reference truncation.

Details that matter for comparability:

* Inputs are the evaluation form used for validation during training (`inputs.examples.
  validation_examples`): the bare template (template 0 for p5), the last `train.max_history` history
  items, and the top-n candidates (target + the user's fixed negatives) shuffled with
  `random.Random(user)`, so every evaluation of a run sees the same candidate order.
* History (`tasks.sequential.history`): the rigorous preset removes the items a user already has
  (`Dataset.seen_items`: training items, and the validation item on test) from the sequential
  ranking, as the field does; the target itself is never removed, even when the user had it before.
  The legacy preset ranks them like any other item, as the published P5/POD/PeaPOD scripts do.
  `history=` overrides either; with free `beam` generation excluded items are dropped from the lists.
* Invalid outputs (a generated text that names no catalogue item) count as misses and are reported
  per task (`invalid_output_rate`). `legacy_random_fill=True` replaces each by a uniformly random item,
  as the published scripts do; it is seeded, and changes nothing else.
* Seeds only drive that random fill (no decoding here samples); model outputs are computed once and
  the seeded part is applied per seed. Metrics are recorded per seed, with mean and sample standard
  deviation when there is more than one seed. Everything is deterministic for a given seed.

Where the data comes from: a run directory's `config.json` names the dataset (`data.path`, possibly
an embedded `demo` / `demo-toys`) and its `negative_samples.txt` holds the fixed candidates. For a bare model directory, pass
`data`; candidates then come from `<model dir>/negative_samples.txt` if present, else the dataset's
own negatives (e.g. the demo's), else a seeded sample (seed 0) written to `<model dir>/
negative_samples.txt` so later evaluations reuse it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from peapod.evaluate.record import (
    EvalSettings,
    add_section,
    candidates_text,
    explanation_section,
    ranking_section,
    result_header,
)
from peapod.evaluate.tasks import (
    PROTOCOLS,
    SEQ_DECODINGS,
    TASK_ORDER,
    TOPN_DECODINGS,
    EvalSetup,
    evaluate_task,
    load_setup,
)
from peapod.infer.predictor import EXPLANATION_DECODINGS, normalize_task
from peapod.io import write_json_atomic
from peapod.metrics.ranking import check_history_mode
from peapod.runtime import share_cpu

_DEFAULT = object()


def _parse_tasks(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    names = [normalize_task(t.strip()) for t in tasks]
    if not names:
        raise ValueError("no tasks given")
    return [t for t in TASK_ORDER if t in names]


def _parse_seeds(seed) -> list[int]:
    if seed is None:
        return [0]
    if isinstance(seed, int):
        return [seed]
    if isinstance(seed, str):
        seed = [s for s in seed.split(",") if s.strip()]
    seeds = [int(s) for s in seed]
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seeds: {seeds}")
    return seeds


def evaluate_run(
    path: str | Path,
    tasks: Sequence[str] | str = TASK_ORDER,
    protocol: str | None = None,
    seq_decoding: str | None = None,
    topn_decoding: str | None = None,
    split: str = "test",
    max_users: int | None | object = _DEFAULT,
    seed: int | Sequence[int] | None = None,
    legacy_random_fill: bool = False,
    exp_decoding: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    *,
    data: str | None = None,
    out: str | Path | None = None,
    history: str | None = None,
    truncate_references: int | None | object = _DEFAULT,
    device: str | torch.device | None = None,
    write: bool = True,
    keep_predictions: bool = False,
    setup: EvalSetup | None = None,
    decoder_history: int | None = None,
) -> dict:
    """Evaluate a run (or model) directory; write `metrics.json` and return its content.

    Args:
        path: run directory (its `best/` model) or model directory.
        tasks: any of sequential/seq, topn, explanation/exp (list or comma-separated).
        protocol: "legacy" or "rigorous"; default the run config's `eval.protocol` (else rigorous).
        seq_decoding / topn_decoding / exp_decoding: override the preset (beam|constrained|full,
            beam|score, greedy|beam|legacy).
        split: "val" or "test".
        max_users: first N users (explanation: first N records); default the run config's
            `eval.max_users`; None or 0 evaluates everybody.
        seed: one seed or a list; default the run config's `eval.seeds` (else 0).
        legacy_random_fill: replace invalid outputs by random items (seeded), as published.
        batch_size: requests per encoder pass; default the run config's `eval.batch_size` (else 32).
        progress: tqdm bars (only when stderr is a terminal).
        data: dataset path for a model directory without a run config (or to override it).
        out: where to write; default `metrics.json` in the run directory (or model directory).
        history: "excluded" or "included": whether the sequential ranking leaves out the items the
            user already has (never the target); default the protocol's (rigorous excluded, legacy included).
        truncate_references: legacy BLEU/ROUGE references cut to this many tokenizer ids (None: not
            cut); default 20 for the legacy protocol, None for rigorous.
        device: torch device (default CUDA when available).
        write: write the file (False: only return the dict).
        keep_predictions: add per-user outputs under "predictions" in the returned dict (not
            written to the file).
        setup: an already loaded `load_setup(...)`, to evaluate several times in one process.
        decoder_history: items teacher-forced into the decoder before the scored step (`Predictor`);
            default the model's.
    """
    t_start = time.perf_counter()
    threads = share_cpu()
    task_list = _parse_tasks(tasks)
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if setup is None:
        setup = load_setup(path, data=data, device=device, decoder_history=decoder_history)
    elif decoder_history is not None and decoder_history != setup.predictor.decoder_history:
        raise ValueError(f"decoder_history {decoder_history} differs from the loaded setup's ({setup.predictor.decoder_history})")
    settings = _settings(
        setup, protocol, {"sequential": seq_decoding, "topn": topn_decoding, "explanation": exp_decoding},
        max_users, seed, batch_size, history, truncate_references, split, bool(legacy_random_fill),
    )
    torch.manual_seed(settings.seeds[0])
    result = result_header(setup, settings, threads)
    predictions: dict = {}
    for task in task_list:
        decoding = settings.decodings[task]
        output = evaluate_task(
            setup, task, decoding, split, settings.max_users, settings.batch_size, history=settings.history, progress=progress,
        )
        t_metrics = time.perf_counter()
        if task == "explanation":
            section, per_seed, beam = explanation_section(setup, output, settings)
        else:
            section, per_seed, beam = ranking_section(setup, output, task, settings)
        wall = output.wall_seconds + (time.perf_counter() - t_metrics)
        add_section(result, task, section, output, per_seed, beam, wall, candidates_text(setup, task, decoding))
        if keep_predictions:
            predictions[task] = {
                "users": output.users, "targets": output.targets, "lists": output.lists, "ranks": output.ranks,
                "hypotheses": output.hypotheses,
            }
    result["wall_seconds"]["load"] = round(setup.load_seconds, 3)
    result["wall_seconds"]["total"] = round(time.perf_counter() - t_start + setup.load_seconds, 3)
    if write:
        target = Path(out) if out is not None else (setup.run_dir or setup.model_dir) / "metrics.json"
        write_json_atomic(target, result)
    if keep_predictions:
        result = dict(result, predictions=predictions)
    return result


def _settings(setup, protocol, decodings, max_users, seed, batch_size, history, truncate_references, split, fill) -> EvalSettings:
    cfg_eval = setup.run_config.eval
    protocol = protocol or cfg_eval.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose {', '.join(PROTOCOLS)}")
    preset = PROTOCOLS[protocol]
    decodings = {task: decodings[task] or preset[task] for task in ("sequential", "topn", "explanation")}
    if decodings["sequential"] not in SEQ_DECODINGS:
        raise ValueError(f"unknown sequential decoding {decodings['sequential']!r}; choose {', '.join(SEQ_DECODINGS)}")
    if decodings["topn"] not in TOPN_DECODINGS:
        raise ValueError(f"unknown top-n decoding {decodings['topn']!r}; choose {', '.join(TOPN_DECODINGS)}")
    if decodings["explanation"] not in EXPLANATION_DECODINGS:
        raise ValueError(f"unknown explanation decoding {decodings['explanation']!r}; choose {', '.join(EXPLANATION_DECODINGS)}")
    if max_users is _DEFAULT:
        max_users = cfg_eval.max_users
    if max_users is not None:
        max_users = int(max_users)
        if max_users < 0:
            raise ValueError(f"max_users must be >= 0, got {max_users}")
        max_users = max_users or None
    seeds = _parse_seeds(seed if seed is not None else cfg_eval.seeds)
    batch_size = int(batch_size or cfg_eval.batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    history = check_history_mode(history or preset["history"])
    if truncate_references is _DEFAULT:
        truncate_references = preset["truncate_references"]
    if truncate_references is not None and int(truncate_references) <= 0:
        truncate_references = None
    return EvalSettings(protocol, decodings, max_users, seeds, batch_size, history, truncate_references, split, fill)
