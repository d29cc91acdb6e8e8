"""`peapod baseline popularity|sasrec DATA --out DIR`: fit a score-based baseline on any dataset and
write the same `metrics.json` as `peapod evaluate`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from peapod.cli.common import fail

baseline_app = typer.Typer(no_args_is_help=True, help="Score-based baselines on the same splits, candidates and protocol.")


def _sasrec_config(settings: list[str], seed: int):
    from peapod.baselines import SASRecConfig

    fields = {f.name: f for f in dataclasses.fields(SASRecConfig)}
    values: dict = {"seed": seed}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields or key == "seed":
            fail(f"--set takes KEY=VALUE with KEY one of {', '.join(k for k in fields if k != 'seed')}; got {item!r}")
        raw = raw.strip()
        optional = key == "val_max_users"  # the one int | None field
        kind = int if optional else type(fields[key].default)
        try:
            values[key] = None if optional and raw.lower() in ("none", "null") else kind(raw)
        except ValueError:
            fail(f"--set {key}: {raw!r} is not a valid {kind.__name__}")
    try:
        return SASRecConfig(**values)
    except ValueError as e:
        fail(str(e))


def _run(name: str, data: str, out: str, seed: int, settings: list[str], protocol: str, history: str | None,
         split: str, max_users: int | None, negatives_file: str | None, quiet: bool) -> None:
    from peapod.baselines.run import baseline_negatives, evaluate_baseline, fit_baseline, save_sasrec
    from peapod.data import load_dataset
    from peapod.data.negatives import read_negatives
    from peapod.evaluate.table import format_table
    from peapod.io import write_json_atomic
    from peapod.metrics.ranking import HISTORY_MODES, PROTOCOL_HISTORY

    if protocol not in PROTOCOL_HISTORY:
        fail(f"--protocol must be one of {', '.join(PROTOCOL_HISTORY)}; got {protocol!r}")
    if history is not None and history not in HISTORY_MODES:
        fail(f"--history must be one of {', '.join(HISTORY_MODES)}; got {history!r}")
    if split not in ("val", "test"):
        fail(f"--split must be val or test; got {split!r}")
    if max_users is not None and max_users < 0:
        fail(f"--max-users must be >= 0; got {max_users}")
    sasrec = _sasrec_config(settings, seed) if name == "sasrec" else None
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out {out} is a file, not a directory")
    ds = load_dataset(data)
    if negatives_file is not None:
        negatives, source = read_negatives(ds, negatives_file), negatives_file
    else:
        negatives, source = baseline_negatives(ds, out_dir)
    model, training = fit_baseline(name, ds, sasrec, progress=not quiet)
    if name == "sasrec":
        save_sasrec(model, ds, out_dir / "sasrec", training)
    result = evaluate_baseline(
        model, ds, negatives, name=name, negatives_source=source, protocol=protocol, history=history, split=split,
        max_users=max_users or None, seed=seed, training=training, data_path=data,
    )
    write_json_atomic(out_dir / "metrics.json", result)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out_dir / 'metrics.json'}", err=True)


_DATA = typer.Argument(..., help="'demo' / 'demo-toys' (embedded), a P5 directory, or a .csv/.tsv/.parquet table.")
_OUT = typer.Option(..., "--out", "-o", help="Directory for metrics.json (and the SASRec weights).")
_PROTOCOL = typer.Option("rigorous", "--protocol", help="rigorous | legacy: picks the default history rule.")
_HISTORY = typer.Option(None, "--history", help="excluded | included (default: the protocol's; rigorous excluded).")
_SPLIT = typer.Option("test", "--split", help="val | test.")
_USERS = typer.Option(None, "--max-users", help="First N users (default and 0: every user).")
_NEGATIVES = typer.Option(None, "--negatives", help="A negative_samples.txt to score top-n on (e.g. a training run's), instead of the dataset's own or a seed-0 draw.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No per-epoch lines.")


@baseline_app.command("sasrec")
def sasrec_command(
    data: str = _DATA, out: str = _OUT,
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    set_: list[str] = typer.Option([], "--set", help="SASRecConfig field=value (repeatable), e.g. epochs=50, loss=ce, dim=64."),
    protocol: str = _PROTOCOL, history: str = _HISTORY, split: str = _SPLIT, max_users: int = _USERS,
    negatives: str = _NEGATIVES, quiet: bool = _QUIET,
) -> None:
    """SASRec with the published SASRec+SS setup (peapod.baselines.sasrec), early-stopped on validation HR@10."""
    _run("sasrec", data, out, seed, set_, protocol, history, split, max_users, negatives, quiet)


@baseline_app.command("popularity")
def popularity_command(
    data: str = _DATA, out: str = _OUT, protocol: str = _PROTOCOL, history: str = _HISTORY, split: str = _SPLIT,
    max_users: int = _USERS, negatives: str = _NEGATIVES, quiet: bool = _QUIET,
) -> None:
    """Most-popular items of the training split."""
    _run("popularity", data, out, 0, [], protocol, history, split, max_users, negatives, quiet)
