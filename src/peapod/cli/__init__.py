"""The `peapod` command: `main` (data, train, evaluate, recommend, explain, demo), `serve`, `baseline`, `bench`."""

from peapod.cli.main import app, main

__all__ = ["app", "main"]
