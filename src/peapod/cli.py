"""The `peapod` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from peapod.data.dataset import DataError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="PeaPOD: personalized generative recommendation.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and fetch datasets.")
app.add_typer(data_app, name="data")


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@app.command("train")
def train_command(
    config: str = typer.Option(None, "--config", "-c", help="YAML run configuration (configs/*.yaml)."),
    data: str = typer.Option(None, "--data", help="P5 directory, interactions table, or 'demo'; overrides data.path."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory to write."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint exactly where it stopped."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model (PeaPOD, POD or P5 variant) on three tasks. Works under torchrun for DDP."""
    from pathlib import Path

    from peapod.train.config import ConfigError, load_config

    run_dir = Path(out)
    if resume:
        saved = run_dir / "config.json"
        if not saved.is_file():
            fail(f"nothing to resume: {saved} does not exist")
        cfg_path = saved
    else:
        cfg_path = config
        if run_dir.exists() and any(run_dir.iterdir()):
            fail(f"run directory {run_dir} is not empty; use --resume to continue it or choose another --out")
    overrides = list(set_) + ([f"data.path={data}"] if data else [])
    try:
        cfg = load_config(cfg_path, overrides)
    except ConfigError as e:
        fail(str(e))
    if cfg.data.path is None:
        fail("no data: set data.path in the config or pass --data (a P5 directory, a table, or 'demo')")
    if cfg.data.path != "demo" and not Path(cfg.data.path).exists():
        fail(f"data path does not exist: {cfg.data.path}")
    from peapod.train.trainer import train

    summary = train(cfg, run_dir, resume=resume, quiet=quiet)
    if summary.get("history"):
        last = summary["history"][-1]
        typer.echo(f"trained {summary['steps']} steps; best epoch {summary['best_epoch']}; last val {json.dumps(last['val'])}", err=True)
    typer.echo(str(run_dir / "best"))


# Data ------------------------------------------------------------------------------------------


@data_app.command("stats")
def data_stats(path: str = typer.Argument(..., help="'demo', a P5 directory, or a .csv/.tsv/.parquet table.")) -> None:
    """Print a dataset's counts (users, items, interactions, explanations per split) as JSON."""
    from peapod.data.loaders import load_dataset

    try:
        ds = load_dataset(path)
    except DataError as e:
        fail(str(e))
    print_json(ds.stats())


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


# Demo ------------------------------------------------------------------------------------------


@app.command("demo")
def demo() -> None:
    """Show the embedded demo dataset (878 Amazon Toys & Games users) and its split sizes."""
    from peapod.data.loaders import describe_demo

    try:
        typer.echo(describe_demo())
    except DataError as e:
        fail(str(e))


def main() -> None:
    try:
        app()
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
