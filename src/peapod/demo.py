"""`peapod demo`: the whole path on the embedded demo data, with no outside files.

Train the laptop recipe sized for the demo data (the package's `demo` recipe), evaluate the three tasks under the legacy and the
rigorous protocol on the first `eval_max_users` users, show one user's top-10 with an explanation,
and write a run report (`report.md`, `training_curves.png`, `metrics.png`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from peapod.config import RunConfig, load_config
from peapod.extras import require
from peapod.io import previous_version

__all__ = ["DEMO_OUTPUTS", "DemoError", "demo_config", "run_demo"]

#: `--quick`: a few steps and few evaluated users, for tests and a first look (seconds, not minutes).
QUICK_OVERRIDES = [
    "model.cf_iterations=3", "train.epochs=1", "train.max_steps=20", "train.language_epochs=0", "train.batch_size=8", "train.val_max_users=30",
    "train.checkpoint_every=1000", "eval.max_users=4", "eval.batch_size=4",
]

#: What a demo run writes; `--force` removes these (and nothing else) from a non-empty --out.
DEMO_OUTPUTS = (
    "config.json", "negative_samples.txt", "language", "checkpoint", "best", "log.jsonl", "tb", "summary.json", "metrics.json",
    "metrics_legacy.json", "metrics_rigorous.json", "report.md", "training_curves.png", "metrics.png", "example.json",
    *(previous_version(Path(name)).name for name in ("checkpoint", "best")),
)

PROTOCOLS = ("legacy", "rigorous")
EXAMPLE_K = 10


SENTENCE_KINDS = ("generated", "retrieved", "real")


def explanation_example(rec, run_config: RunConfig) -> dict | None:
    """The first test explanation record: the model's sentence, the retrieval baseline's, and the real one
    (None when the data has no test explanations)."""
    from peapod.data.retrieval import ExplanationRetrieval

    ds = rec.dataset
    records = ds.explanations_for("test")
    if not records:
        return None
    r = records[0]
    user, item = ds.user_ids[r.user], ds.item_ids[r.item]
    retrieval = rec.predictor.retrieval or ExplanationRetrieval.for_run(ds, run_config)
    return {"user": user, "item": item, "generated": rec.explain(user, item), "retrieved": retrieval.explain(r.user, r.item)[0], "real": r.text}


class DemoError(Exception):
    """The demo cannot run (e.g. the output directory is not empty)."""


def demo_config(quick: bool = False) -> RunConfig:
    """The demo's run configuration: the `demo` recipe, with QUICK_OVERRIDES when `quick`."""
    return load_config("demo", QUICK_OVERRIDES if quick else [])


def popularity_results(setup, max_users: int | None) -> dict:
    """The most-popular baseline on the same users and the same fixed 1+99 candidates, shaped like an
    evaluation result so that it gets a column of the demo's table."""
    from peapod.baselines import PopularityModel

    ds = setup.dataset
    model = PopularityModel().fit(ds)
    n = min(max_users or ds.n_users, ds.n_users)
    seq = model.evaluate_full(ds, "test", max_users=max_users, history="excluded")
    topn = model.evaluate_candidates(ds, setup.negatives, "test", max_users=max_users)
    return {"tasks": {
        "sequential": {"decoding": "full", "history": "excluded", "users": n, "metrics": seq},
        "topn": {"decoding": "score", "users": n, "metrics": topn},
    }}


def prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DemoError(f"output directory {out} is not empty; choose another --out or pass --force to replace its demo outputs")
        for name in DEMO_OUTPUTS:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        for p in out.glob(".*.tmp"):  # half-written files of a killed run
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def show_example(setup, out: Path, echo: Callable[[str], None]) -> dict:
    """One user's top-10 (history excluded) with an explanation of the first, and the first test
    explanation's three sentences; echoed and written to example.json."""
    from peapod.serve.recommender import Recommender

    rec = Recommender(setup.predictor, setup.dataset, model_dir=setup.model_dir, run_dir=setup.run_dir, data_path=setup.data_path)
    user = setup.dataset.user_ids[0]
    items = rec.recommend(user, k=EXAMPLE_K, exclude_history=True)
    explanation = rec.explain(user, items[0][0])
    history = rec.user_history(user)
    example = {"user": user, "history": history, "items": items, "explained_item": items[0][0], "explanation": explanation}
    example["sentences"] = explanation_example(rec, setup.run_config)
    (out / "example.json").write_text(json.dumps(example, indent=2) + "\n", encoding="utf-8")
    echo("")
    echo(f"top-{EXAMPLE_K} for user {user} ({len(history)} known items, last: {', '.join(history[-5:])}; history excluded):")
    for i, (item, score) in enumerate(items):
        echo(f"  {i + 1:>2}. item {item:<8} log-likelihood {score:.4f}")
    echo(f"why item {items[0][0]}: {explanation}")
    sentences = example["sentences"]
    if sentences:
        echo("")
        echo(f"user {sentences['user']} on item {sentences['item']} (the first test explanation):")
        for key in SENTENCE_KINDS:
            echo(f"  {key + ':':<10} {sentences[key]}")
    return example


def run_demo(
    out: str | Path = "runs/demo",
    *,
    force: bool = False,
    quick: bool = False,
    quiet: bool = False,
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train, evaluate, show an example and write the report; return a summary of it all.

    Progress lines go through `echo` unless `quiet`; the metrics table, the example and the report
    paths are always echoed.
    """
    from peapod.data.loaders import describe_demo
    from peapod.evaluate.protocol import evaluate_run
    from peapod.evaluate.tasks import load_setup
    from peapod.report import compare_table, write_report
    from peapod.train.loop import train

    def say(line: str) -> None:
        if not quiet:
            echo(line)

    require("matplotlib", "report", "the demo's report plots")  # before minutes of training, not after
    out = Path(out)
    prepare_out_dir(out, force)
    cfg = demo_config(quick)
    if device is not None:
        cfg.runtime.device = device
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    plan = f"quick: {cfg.train.max_steps} steps" if quick else f"{cfg.train.epochs} epochs"
    if cfg.train.language_epochs:
        plan = f"{cfg.train.language_epochs} epochs of explanations alone, then {plan} of the three tasks"
    say(f"training a {cfg.model.backbone} {cfg.model.variant} model (laptop recipe; {plan}) into {out} ...")
    t = time.perf_counter()
    summary = train(cfg, out, quiet=quiet)
    timings["training"] = time.perf_counter() - t
    if summary.get("history"):
        last = summary["history"][-1]
        val = ", ".join(f"{k} {v:.3f}" for k, v in last["val"].items())
        stage = summary.get("language_stage")
        if stage:
            say(f"explanations alone: {stage['steps']} steps in {stage['train_seconds']:.0f}s, validation loss {stage['best_val']:.3f}")
        say(f"trained {summary['steps']} steps ({timings['training']:.0f}s of training in all); best epoch {summary['best_epoch'] + 1 if summary['best_epoch'] is not None else '-'}; last validation loss: {val}")
    else:
        say(f"trained {summary['steps']} steps in {timings['training']:.0f}s (no full epoch: no validation)")

    t = time.perf_counter()
    setup = load_setup(out, device=device)
    max_users = cfg.eval.max_users
    results: dict[str, dict] = {}
    for protocol in PROTOCOLS:
        say(f"evaluating ({protocol} protocol, first {max_users} users / explanation records of the test split) ...")
        t_p = time.perf_counter()
        results[protocol] = evaluate_run(
            out, protocol=protocol, max_users=max_users, out=out / f"metrics_{protocol}.json", setup=setup, progress=not quiet,
        )
        timings[f"evaluation ({protocol})"] = time.perf_counter() - t_p
    results["popularity"] = popularity_results(setup, max_users)
    echo("")
    echo(f"metrics (test split; ranking metrics and FHR in %; {max_users} users each; popularity: the most-bought training items):")
    echo(compare_table(results))

    t = time.perf_counter()
    example = show_example(setup, out, echo)
    timings["example"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_all  # the report itself takes a second or two more
    notes = [
        f"Embedded demo data ({setup.dataset.n_users} users, {setup.dataset.n_items} items); the laptop recipe "
        "with a ~2M-parameter T5 (d_model 128) trained from scratch on CPU: the explanation task alone for "
        f"{cfg.train.language_epochs} epochs, then the three tasks for {cfg.train.epochs}.",
        f"Metrics over the first {max_users} test users (explanation: records) only, beside the most-popular baseline on the "
        "same users and candidates: a smoke test of the whole path, not numbers comparable with the papers.",
        "The sentences read as English but are generic, alike across users and items; the retrieval baseline beside "
        "them names the item's feature more often (RESULTS.md).",
    ]
    if quick:
        notes.insert(0, f"--quick run: {cfg.train.max_steps} training steps only.")
    paths = write_report(
        out, results, summary=summary, title="PeaPOD demo run", dataset_text=describe_demo(), example=example,
        timings=timings, notes=notes,
    )
    timings["total"] = time.perf_counter() - t_all
    echo("")
    echo(f"report: {paths['report']}  plots: {paths['training_curves']}, {paths['metrics']}")
    echo(f"serve it: peapod serve {out}   |   peapod recommend {out} --user {example['user']} --explain")
    echo(f"demo done in {timings['total']:.0f}s")
    return {"summary": summary, "results": results, "example": example, "paths": paths, "timings": timings}
