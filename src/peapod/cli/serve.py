"""The serving commands of `peapod`: recommend, explain and serve, each over a trained run or model directory."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from peapod.cli.common import _split_list, check_device, fail, print_json


def register_serve_commands(app: typer.Typer) -> None:
    """Add recommend, explain and serve to the top-level app."""
    app.command("recommend")(recommend_command)
    app.command("explain")(explain_command)
    app.command("serve")(serve_command)


def _load_recommender(run_dir: str, data: str | None, device: str | None):
    """A Recommender, or one error line and exit 2."""
    check_device(device)
    if not Path(run_dir).exists():
        fail(f"no such run or model directory: {run_dir}")
    from peapod.serve.recommender import Recommender

    try:
        return Recommender.load(run_dir, device=device, data=data)
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        fail(str(e))


def _history_option(user: str | None, history: str | None) -> list[str] | None:
    """The --history items (None when not given); one error line and exit 2 when neither it nor --user is."""
    if user is None and history is None:
        fail("give --user ID, --history ID,ID,... or both")
    items = _split_list(history)
    if history is not None and not items:
        fail("--history must list at least one item id")
    return items


def _recommend_table(items: list[dict]) -> str:
    explained = any("explanation" in x for x in items)
    rows = [("#", "item", "score", "explanation" if explained else "")] + [
        (str(i + 1), x["item"], f"{x['score']:.4f}", x.get("explanation") or "") for i, x in enumerate(items)
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)


def recommend_command(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory."),
    user: str = typer.Option(None, "--user", "-u", help="A user id of the dataset (served with its known items)."),
    history: str = typer.Option(None, "--history", help="Comma-separated item ids, oldest first: serves a user the model never saw."),
    k: int = typer.Option(10, "-k", "--k", help="Items to return (1..100)."),
    explain: bool = typer.Option(False, "--explain", help="Add a generated explanation to every item."),
    include_history: bool = typer.Option(False, "--include-history", help="Allow items of the history in the list."),
    data: str = typer.Option(None, "--data", help="Dataset for a model directory without a run config."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
) -> None:
    """Top-k items for a user (or a history) by exact scoring of the whole catalogue; JSON on stdout."""
    from peapod.serve.recommender import MAX_K, UnknownItem, UnknownUser

    items = _history_option(user, history)
    if not 1 <= k <= MAX_K:
        fail(f"-k must be in 1..{MAX_K}; got {k}")
    rec = _load_recommender(run_dir, data, device)
    try:
        result = rec.recommend_batch([user], k, not include_history, histories=[items], explain=explain)[0]
    except (UnknownUser, UnknownItem, ValueError) as e:
        fail(str(e))
    rows = [{"item": x[0], "score": x[1], **({"explanation": x[2]} if explain else {})} for x in result]
    print_json({"user": user, "cold_start": user is None or not rec.known_user(user), "k": k, "items": rows})
    if sys.stdout.isatty():
        typer.echo("")
        typer.echo(_recommend_table(rows))


def explain_command(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory."),
    user: str = typer.Option(None, "--user", "-u", help="A user id of the dataset."),
    item: str = typer.Option(..., "--item", "-i", help="The item id to explain."),
    history: str = typer.Option(None, "--history", help="Comma-separated item ids: for a user the model never saw."),
    data: str = typer.Option(None, "--data", help="Dataset for a model directory without a run config."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
) -> None:
    """A generated explanation of why USER would like ITEM; JSON on stdout."""
    from peapod.serve.recommender import UnknownItem, UnknownUser

    items = _history_option(user, history)
    rec = _load_recommender(run_dir, data, device)
    try:
        text = rec.explain(user, item, history=items)
    except (UnknownUser, UnknownItem, ValueError) as e:
        fail(str(e))
    print_json({"user": user, "item": item, "explanation": text})


def serve_command(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    data: str = typer.Option(None, "--data", help="Dataset for a model directory without a run config."),
    device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most requests of one kind per model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for company after its first request."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (critical, error, warning, info, debug)."),
    api_key: str = typer.Option(None, "--api-key", envvar="PEAPOD_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health (or set PEAPOD_API_KEY)."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Larger request bodies get 413 before they are read."),
    max_queue: int = typer.Option(100, "--max-queue", help="Queued requests per endpoint kind; beyond them 503 with Retry-After."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds a request may wait for its answer; beyond them 504."),
) -> None:
    """Serve /recommend, /rank, /explain and /health over HTTP (OpenAPI docs at /docs), micro-batched."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        fail(f"serving needs fastapi and uvicorn ({e.name} is missing): pip install 'peapod[serve]'")
    if not 0 <= port <= 65535:
        fail(f"--port must be in 0..65535; got {port}")
    if max_batch < 1 or max_wait_ms < 0:
        fail("--max-batch must be >= 1 and --max-wait-ms >= 0")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        fail(f"--log-level must be one of critical, error, warning, info, debug; got {log_level!r}")
    from pydantic import ValidationError

    from peapod.serve.app import ServeLimits, serve

    try:
        limits = ServeLimits(max_body_bytes=max_body_bytes, max_queue=max_queue, timeout_s=timeout)
    except ValidationError as e:
        fail("--max-body-bytes and --max-queue must be >= 1 and --timeout > 0: " + "; ".join(err["msg"] for err in e.errors()))
    if api_key is not None and not api_key.strip():
        fail("--api-key (or PEAPOD_API_KEY) is empty")
    rec = _load_recommender(run_dir, data, device)

    info = rec.info()
    typer.echo(
        f"serving {info['variant']} model ({info['catalogue_size']} items, {info['users']} users, {info['dataset']}) "
        f"on http://{host}:{port}  (docs: /docs)",
        err=True,
    )
    serve(rec, host, port, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0, log_level=log_level, limits=limits, api_key=api_key)
