"""The `peapod` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from peapod.cli.baseline import baseline_app
from peapod.cli.bench import bench_app
from peapod.cli.common import _split_list, check_device, fail, print_json
from peapod.cli.serve import register_serve_commands
from peapod.data.dataset import DataError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="PeaPOD: personalized generative recommendation.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and fetch datasets.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(baseline_app, name="baseline")


@app.command("train")
def train_command(
    config: str = typer.Option(None, "--config", "-c", help="A recipe (laptop, demo, tiny, paper) or a YAML run configuration."),
    data: str = typer.Option(None, "--data", help="P5 directory, interactions table, 'demo' or 'demo-toys'; overrides data.path."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory to write."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint exactly where it stopped."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model (PeaPOD, POD or P5 variant) on three tasks. Works under torchrun for DDP."""
    from pathlib import Path

    from peapod.config import ConfigError, load_config
    from peapod.rundir import LOCK_NAME, assert_unlocked

    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        fail(f"--out {run_dir} is a file, not a run directory")
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the lock for every rank
        assert_unlocked(run_dir)  # a live run's directory: say whose, before anything else about it
    if resume:
        from peapod.train.checkpoint import checkpoint_exists

        saved = run_dir / "config.json"
        if not saved.is_file():
            fail(f"nothing to resume: {saved} does not exist")
        if not checkpoint_exists(run_dir / "checkpoint"):
            fail(f"nothing to resume: {run_dir / 'checkpoint'} holds no checkpoint")
        cfg_path = saved
    else:
        cfg_path = config
        if run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            fail(f"run directory {run_dir} is not empty; use --resume to continue it or choose another --out")
    try:
        cfg = load_config(cfg_path, list(set_), saved=resume)
        if data:  # a path, taken as is (not parsed as YAML like --set values)
            cfg.data.path = data
    except ConfigError as e:
        fail(str(e))
    if cfg.data.path is None:
        fail("no data: set data.path in the config or pass --data (a P5 directory, a table, 'demo' or 'demo-toys')")
    from peapod.data.loaders import is_embedded

    if not is_embedded(cfg.data.path) and not Path(cfg.data.path).exists():
        fail(f"data path does not exist: {cfg.data.path}")
    from peapod.model.peapod import PRESETS

    if cfg.model.backbone not in PRESETS and not Path(cfg.model.backbone).is_dir():
        fail(f"model.backbone {cfg.model.backbone!r} is neither a preset ({', '.join(PRESETS)}) nor a local directory")
    from peapod.train.loop import train

    summary = train(cfg, run_dir, resume=resume, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun: one report, from rank 0, not one per process
    if summary.get("history"):
        last = summary["history"][-1]
        typer.echo(f"trained {summary['steps']} steps; best epoch {summary['best_epoch']}; last val {json.dumps(last['val'])}", err=True)
    typer.echo(str(run_dir / "best"))


# Data ------------------------------------------------------------------------------------------


@data_app.command("stats")
def data_stats(
    path: str = typer.Argument(..., help="'demo' / 'demo-toys' (embedded), a P5 directory, or a .csv/.tsv/.parquet table."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a table that repeats a (user, item, timestamp) row instead of dropping the repeats."),
) -> None:
    """Print a dataset's counts (users, items, interactions, explanations per split, duplicates dropped) as JSON."""
    from peapod.data.loaders import load_dataset

    try:
        ds = load_dataset(path, strict=strict)
    except DataError as e:
        fail(str(e))
    print_json(ds.stats())


@data_app.command("from-reviews")
def data_from_reviews(
    file: str = typer.Argument(..., help="Reviews: Amazon 5-core JSON lines, or JSONL/CSV/TSV with --*-field names; plain or gzip."),
    out: Path = typer.Option(..., "--out", "-o", help="P5-style directory to write (must not exist or be empty, unless --force)."),
    fmt: str = typer.Option("auto", "--format", help="auto (from the name: .csv, .tsv, else JSON lines), jsonl, csv or tsv."),
    user_field: str = typer.Option("reviewerID", "--user-field", help="Field with the user id."),
    item_field: str = typer.Option("asin", "--item-field", help="Field with the item id."),
    time_field: str = typer.Option("unixReviewTime", "--time-field", help="Field with the time (a number, e.g. Unix seconds, or ISO 8601)."),
    rating_field: str = typer.Option("overall", "--rating-field", help="Field with the rating ('' if the data has none)."),
    text_field: str = typer.Option("reviewText", "--text-field", help="Field with the review text."),
    strict: bool = typer.Option(False, "--strict", help="Users with fewer than 3 reviews and empty texts are errors, not dropped/kept."),
    seed: int = typer.Option(0, "--seed", help="Seed of the 80/10/10 explanation split."),
    min_df: int = typer.Option(None, "--min-df", help="A feature must occur in at least this many reviews (default 10)."),
    top_k: int = typer.Option(None, "--top-k", help="Most features kept, by review count (default 1000)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes."),
) -> None:
    """Build a P5-style directory (sequences, datamaps, explanations with splits) from a raw review dump."""
    import shlex
    import time

    from peapod.data.reviews.convert import convert_reviews
    from peapod.data.reviews.read import FieldMap

    fields = FieldMap(user_field, item_field, time_field, rating_field or None, text_field)
    t0 = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in ["peapod", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("peapod") else None
    try:
        stats = convert_reviews(
            file, out, fields=fields, fmt=fmt, strict=strict, seed=seed, min_df=min_df, top_k=top_k, force=force,
            progress=not quiet and sys.stderr.isatty(), command=command,
        )
    except DataError as e:
        fail(str(e))
    except (FileExistsError, ValueError) as e:
        fail(str(e))
    if not quiet:
        if stats["users_dropped"]:
            typer.echo(f"dropped {stats['users_dropped']:,} user(s) with fewer than {stats['min_reviews_per_user']} reviews "
                       f"({stats['reviews_dropped']:,} reviews); --strict makes this an error", err=True)
        if stats["empty_texts"]:
            typer.echo(f"{stats['empty_texts']:,} review(s) with an empty text kept without explanation "
                       f"(first at {file}:{stats['empty_text_lines'][0]}); --strict makes this an error", err=True)
        ex = stats["explanations"]
        typer.echo(f"{stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions; "
                   f"{ex['total']:,} explanations (train {ex['train']:,} / val {ex['val']:,} / test {ex['test']:,}, "
                   f"{stats['explanation_share'] * 100:.1f}% of reviews); {stats['lexicon_size']:,} features; "
                   f"{time.perf_counter() - t0:.1f}s", err=True)
    typer.echo(str(out))


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="beauty, sports, toys or yelp."),
    to: Path = typer.Option(Path("data"), "--to", help="Parent directory; files go to TO/NAME/."),
    base_url: str = typer.Option(
        "https://raw.githubusercontent.com", "--base-url", help="Host serving OWNER/REPO/COMMIT/PATH (for mirrors and tests)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fetch the public P5 sequence files of NAME from pinned commits, verifying size and sha256."""
    from peapod.data.download import DownloadError, download_dataset

    try:
        paths = download_dataset(name, to, base_url=base_url, progress=not quiet)
    except DownloadError as e:
        fail(str(e))
    for p in paths:
        typer.echo(str(p))


# Evaluation ------------------------------------------------------------------------------------

@app.command("evaluate")
def evaluate_command(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory."),
    tasks: str = typer.Option("seq,topn,exp", "--tasks", help="Comma-separated: seq, topn, exp."),
    protocol: str = typer.Option(None, "--protocol", help="legacy | rigorous (default: the run config's eval.protocol)."),
    seq_decoding: str = typer.Option(None, "--seq-decoding", help="beam | constrained | full (default: the protocol's)."),
    topn_decoding: str = typer.Option(None, "--topn-decoding", help="beam | score (default: the protocol's)."),
    exp_decoding: str = typer.Option(None, "--exp-decoding", help="greedy | beam | legacy (default: the protocol's)."),
    split: str = typer.Option("test", "--split", help="val | test."),
    max_users: int = typer.Option(None, "--max-users", help="First N users (0: all; default: the run config's eval.max_users)."),
    seeds: str = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2 (default: the run config's eval.seeds)."),
    legacy_random_fill: bool = typer.Option(False, "--legacy-random-fill", help="Replace invalid outputs by random items (seeded), as published."),
    history: str = typer.Option(None, "--history", help="excluded | included: leave the items a user already has out of the sequential ranking (never the target) or rank them too (default: the protocol's; rigorous excluded, legacy included)."),
    truncate_references: int = typer.Option(None, "--truncate-references", help="Legacy BLEU/ROUGE references cut to N tokenizer ids (0: none; default 20 for legacy, none for rigorous)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Requests per encoder pass (default: the run config's eval.batch_size)."),
    data: str = typer.Option(None, "--data", help="Dataset (P5 directory, table, 'demo' or 'demo-toys') for a model directory without a run config."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    decoder_history: int = typer.Option(None, "--decoder-history", help="History items teacher-forced into the decoder before the scored step (default: the model's objective.decoder_history; exact scoring only)."),
    out: str = typer.Option(None, "--out", "-o", help="Metrics file to write (default: RUN_DIR/metrics.json)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Evaluate a trained model on sequential, top-n and explanation tasks; write metrics.json and print a table."""
    from peapod.evaluate.protocol import evaluate_run
    from peapod.evaluate.table import format_table
    from peapod.evaluate.tasks import PROTOCOLS, SEQ_DECODINGS, TOPN_DECODINGS
    from peapod.infer.predictor import EXPLANATION_DECODINGS
    from peapod.metrics.ranking import HISTORY_MODES

    task_list = _split_list(tasks) or []
    known_tasks = {"seq", "sequential", "topn", "top-n", "exp", "explanation"}
    if not task_list or any(t not in known_tasks for t in task_list):
        fail(f"--tasks must be a comma-separated subset of seq, topn, exp; got {tasks!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        fail(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    for flag, value, choices in (
        ("--seq-decoding", seq_decoding, SEQ_DECODINGS),
        ("--topn-decoding", topn_decoding, TOPN_DECODINGS),
        ("--exp-decoding", exp_decoding, tuple(EXPLANATION_DECODINGS)),
    ):
        if value is not None and value not in choices:
            fail(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
    if split not in ("val", "test"):
        fail(f"--split must be val or test; got {split!r}")
    if history is not None and history not in HISTORY_MODES:
        fail(f"--history must be one of {', '.join(HISTORY_MODES)}; got {history!r}")
    if max_users is not None and max_users < 0:
        fail(f"--max-users must be >= 0; got {max_users}")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be >= 1; got {batch_size}")
    if truncate_references is not None and truncate_references < 0:
        fail(f"--truncate-references must be >= 0; got {truncate_references}")
    if decoder_history is not None and decoder_history < 0:
        fail(f"--decoder-history must be >= 0; got {decoder_history}")
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in _split_list(seeds)]
        except ValueError:
            fail(f"--seeds must be comma-separated integers; got {seeds!r}")
        if not seed_list or len(set(seed_list)) != len(seed_list):
            fail(f"--seeds must be distinct integers; got {seeds!r}")
    check_device(device)
    if not Path(run_dir).exists():
        fail(f"no such run or model directory: {run_dir}")
    kwargs = {}
    if truncate_references is not None:
        kwargs["truncate_references"] = truncate_references or None
    if max_users is not None:
        kwargs["max_users"] = max_users
    try:
        result = evaluate_run(
            run_dir, tasks=task_list, protocol=protocol, seq_decoding=seq_decoding, topn_decoding=topn_decoding,
            split=split, seed=seed_list, legacy_random_fill=legacy_random_fill, exp_decoding=exp_decoding,
            batch_size=batch_size, progress=not quiet, data=data, out=out, history=history,
            device=device, decoder_history=decoder_history, **kwargs,
        )
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        fail(str(e))
    typer.echo(format_table(result))
    target = out or str(Path(result["model"]["run_dir"] or result["model"]["dir"]) / "metrics.json")
    typer.echo(f"wrote {target}", err=True)


register_serve_commands(app)  # recommend, explain, serve (peapod.cli.serve)


# Demo ------------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory to write (must be empty unless --force)."),
    force: bool = typer.Option(False, "--force", help="Reuse a non-empty --out: its earlier demo outputs are replaced."),
    quick: bool = typer.Option(False, "--quick", help="A few training steps and few evaluated users (seconds; for tests)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final summary: no progress or step messages."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    stats_only: bool = typer.Option(False, "--stats-only", help="Only print the dataset stats (no training)."),
) -> None:
    """The whole path on the embedded demo data: dataset stats, training (the laptop recipe sized for the demo data), evaluation under the
    legacy and rigorous protocols, one user's top-10 with an explanation, and a run report with plots."""
    from peapod.data.loaders import describe_demo

    try:
        typer.echo(describe_demo())
    except DataError as e:
        fail(str(e))
    if stats_only:
        return
    check_device(device)
    from peapod.demo import DemoError, run_demo

    typer.echo("")
    try:
        run_demo(out, force=force, quick=quick, quiet=quiet, device=device, echo=typer.echo)
    except DemoError as e:
        fail(str(e))


def main() -> None:
    from peapod.runtime import flush_subnormals

    flush_subnormals()  # before torch starts its worker threads: they inherit the flag (peapod.runtime)
    from peapod.extras import MissingExtra
    from peapod.rundir import ResumeError, RunLocked

    try:
        app()
    except (DataError, RunLocked, ResumeError, MissingExtra) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
