"""Helpers shared by the `peapod` command modules: one error line and exit, JSON output, comma lists, --device."""

from __future__ import annotations

import json

import typer


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def check_device(device: str | None) -> None:
    """One error line and exit 2 unless --device is unset, cpu, cuda or cuda:N."""
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device must be cpu or cuda; got {device!r}")
