"""The `peapod` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import json
import sys

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


def main() -> None:
    try:
        app()
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
