"""`peapod bench ...`: training and evaluation speed, the user-prompt ablation, the retrieval baseline, grids and reports."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from peapod.cli.common import _split_list, fail, print_json

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")


@bench_app.command("eval-speed")
def bench_eval_speed(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory."),
    max_users: int = typer.Option(100, "--max-users", help="Users evaluated by every method."),
    batch_size: int = typer.Option(32, "--batch-size", help="Requests per encoder pass."),
    split: str = typer.Option("test", "--split", help="val | test."),
    threads: int = typer.Option(None, "--threads", help="torch intra-op threads (1 gives stable timings on a shared machine)."),
    repeats: int = typer.Option(1, "--repeats", help="Runs per method; the fastest is reported."),
    data: str = typer.Option(None, "--data", help="Dataset for a model directory without a run config."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON result here."),
) -> None:
    """Time top-n beam vs exact scoring and sequential beam vs exact full ranking on the same users."""
    if max_users < 1 or batch_size < 1 or repeats < 1 or (threads is not None and threads < 1):
        fail("--max-users, --batch-size, --repeats and --threads must be >= 1")
    _check_model_bench_args(run_dir, split)
    from peapod.bench.eval_speed import format_speed_table, run_eval_speed

    try:
        result = run_eval_speed(run_dir, max_users=max_users, batch_size=batch_size, split=split, threads=threads, data=data, repeats=repeats)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    _emit_bench_result(result, format_speed_table(result), out)


def _check_model_bench_args(run_dir: str, split: str) -> None:
    if split not in ("val", "test"):
        fail(f"--split must be val or test; got {split!r}")
    if not Path(run_dir).exists():
        fail(f"no such run or model directory: {run_dir}")


def _emit_bench_result(result: dict, table: str, out: str | None) -> None:
    """The JSON result, then its table; also written to `out` when given."""
    from peapod.io import write_json_atomic

    print_json(result)
    typer.echo("")
    typer.echo(table)
    if out:
        write_json_atomic(out, result)


@bench_app.command("train-speed")
def bench_train_speed(
    config: str = typer.Option(..., "--config", "-c", help="A recipe or a YAML run configuration: the first arm."),
    data: str = typer.Option(None, "--data", help="Dataset (overrides data.path of every arm)."),
    set_: list[str] = typer.Option([], "--set", help="Override for every arm: section.key=value (repeatable)."),
    compare: list[str] = typer.Option([], "--compare", help="The second arm: the first with these section.key=value overrides (repeatable)."),
    steps: int = typer.Option(30, "--steps", help="Timed optimizer steps per arm."),
    warmup: int = typer.Option(3, "--warmup", help="Steps run before timing."),
    threads: int = typer.Option(None, "--threads", help="torch intra-op threads."),
    weights: str = typer.Option(None, "--weights", help="Start both arms from this model directory (a run's best/), not from fresh weights."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON result here."),
) -> None:
    """Seconds per training step of a recipe against a variant of it, alternating on the same batches."""
    if steps < 1 or warmup < 0 or (threads is not None and threads < 1):
        fail("--steps and --threads must be >= 1, --warmup >= 0")
    if not compare:
        fail("--compare names the second arm's overrides (e.g. --compare model.dropout_masks=chunked)")
    import torch

    from peapod.bench.train_speed import format_train_speed, time_training_steps
    from peapod.config import ConfigError, load_config

    try:
        arms = {"config": load_config(config, list(set_)), " ".join(compare): load_config(config, [*set_, *compare])}
    except ConfigError as e:
        fail(str(e))
    for cfg in arms.values():
        if data:
            cfg.data.path = data
        if cfg.data.path is None:
            fail("no data: set data.path in the config or pass --data")
    if threads:
        torch.set_num_threads(threads)
    try:
        result = time_training_steps(arms, steps=steps, warmup=warmup, progress=sys.stderr.isatty(), weights=weights)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    from peapod.runtime import subnormals_flushed

    result.update(config=config, data=arms["config"].data.path, set=list(set_), compare=list(compare), weights=weights,
                  subnormals_flushed=subnormals_flushed())
    _emit_bench_result(result, format_train_speed(result), out)


@bench_app.command("user-prompts")
def bench_user_prompts(
    run_dir: str = typer.Argument(..., help="Run directory (its best/ model) or a model directory of a peapod variant."),
    max_users: int = typer.Option(1000, "--max-users", help="First N users of the split (0: all)."),
    permutations: int = typer.Option(1, "--permutations", help="Random user permutations to average."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first permutation."),
    tasks: str = typer.Option("sequential,topn", "--tasks", help="Comma-separated ranking tasks: sequential, topn."),
    split: str = typer.Option("test", "--split", help="val | test."),
    batch_size: int = typer.Option(32, "--batch-size", help="Requests per encoder pass."),
    data: str = typer.Option(None, "--data", help="Dataset for a model directory without a run config."),
    decoder_history: int = typer.Option(None, "--decoder-history", help="History items handed to the decoder before the scored step (default: the model's)."),
    out: str = typer.Option(None, "--out", "-o", help="Also write the JSON result here."),
) -> None:
    """Does the model use its personalized prompt? Metrics with own vs permuted users' prompts."""
    if max_users < 0 or permutations < 1 or batch_size < 1 or (decoder_history is not None and decoder_history < 0):
        fail("--max-users and --decoder-history must be >= 0, --permutations and --batch-size >= 1")
    _check_model_bench_args(run_dir, split)
    from peapod.bench.prompt_ablation import (
        format_ablation_table,
        run_user_prompt_ablation,
    )

    try:
        result = run_user_prompt_ablation(
            run_dir, tasks=tuple(_split_list(tasks) or ()), split=split, max_users=max_users or None,
            permutations=permutations, seed=seed, batch_size=batch_size, data=data, decoder_history=decoder_history,
        )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    _emit_bench_result(result, format_ablation_table(result), out)


@bench_app.command("retrieval")
def bench_retrieval(
    data: str = typer.Argument(..., help="Dataset with explanations: a P5 directory (e.g. from `data from-reviews`), a table, or 'demo' / 'demo-toys'."),
    split: str = typer.Option("test", "--split", help="val | test."),
    max_records: int = typer.Option(0, "--max-records", help="First N explanation records of the split (0: all)."),
    reference_tokenizer: str = typer.Option(None, "--reference-tokenizer", help="A run directory whose tokenizer cuts legacy references to 20 ids, as `evaluate --protocol legacy` does."),
    out: str = typer.Option(None, "--out", "-o", help="Metrics file (default runs/retrieval/<dataset>/metrics.json)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Explanation baseline: the item's training sentence closest to the user's (TF-IDF); writes a metrics JSON."""
    from peapod.baselines.retrieval import evaluate_retrieval
    from peapod.data.loaders import load_dataset
    from peapod.evaluate.table import format_table
    from peapod.io import write_json_atomic

    if split not in ("val", "test"):
        fail(f"--split must be val or test; got {split!r}")
    if max_records < 0:
        fail("--max-records must be >= 0")
    try:
        ds = load_dataset(data)
        if not ds.explanations:
            fail(f"{data} has no explanation records (explanation.json / explanation.jsonl)")
        result = evaluate_retrieval(ds, split, max_records=max_records or None, reference_tokenizer=reference_tokenizer,
                                    data_path=data, progress=not quiet and sys.stderr.isatty())
    except (FileNotFoundError, ValueError, OSError) as e:  # DataError is a ValueError
        fail(str(e))
    target = Path(out) if out else Path("runs") / "retrieval" / ds.name / "metrics.json"
    write_json_atomic(target, result)
    typer.echo(format_table(result))
    typer.echo(f"wrote {target}", err=True)


def _grid_selection(spec_path: str, datasets, variants, protocols, seeds):
    from peapod.bench.grid import GridError, load_grid_spec, plan_cells

    try:
        spec = load_grid_spec(spec_path)
        seed_list = [int(x) for x in _split_list(seeds)] if seeds else None
        cells = plan_cells(spec, _split_list(datasets), _split_list(variants), _split_list(protocols), seed_list)
    except GridError as e:
        fail(str(e))
    except ValueError:
        fail(f"--seeds takes comma-separated integers; got {seeds!r}")
    return spec, cells, seed_list


@bench_app.command("grid")
def bench_grid(
    spec_path: str = typer.Argument(..., help="Grid spec YAML (benchmarks/grids/*.yaml)."),
    datasets: str = typer.Option(None, "--datasets", help="Comma-separated subset of the spec's datasets."),
    variants: str = typer.Option(None, "--variants", help="Comma-separated: p5, pod, peapod-neighbors, peapod-pool, popularity, sasrec, retrieval."),
    protocols: str = typer.Option(None, "--protocols", help="Comma-separated: legacy, rigorous."),
    seeds: str = typer.Option(None, "--seeds", help="Comma-separated subset of the spec's seeds."),
    out: str = typer.Option(None, "--out", "-o", help="Results folder (default benchmarks/results/<grid name>)."),
    markdown: str = typer.Option(None, "--markdown", help="Update this file's section for the grid after every cell (e.g. benchmarks/NOTEBOOK.md)."),
    force: bool = typer.Option(False, "--force", help="Recompute the selected cells even when they have results."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and whether each is done; run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run a benchmark grid ({dataset} x {variant} x {protocol} x {seed}); finished cells are never recomputed."""
    from tqdm.auto import tqdm

    from peapod.bench.grid import (
        GridError,
        grid_markdown,
        load_results,
        run_grid,
        update_markdown_section,
    )

    spec, cells, seed_list = _grid_selection(spec_path, datasets, variants, protocols, seeds)
    out_dir = Path(out) if out else Path("benchmarks/results") / spec.name
    if dry_run:
        for c in cells:
            done = (out_dir / "cells" / f"{c.key}.json").is_file()
            typer.echo(f"{'done ' if done else 'to do'}  {c.dataset:<10} {c.variant:<17} {c.protocol:<9} seed {c.seed}")
        return
    bar = tqdm(total=len(cells), desc=f"grid {spec.name}", unit="cell", disable=quiet or not sys.stderr.isatty())

    def on_cell(cell, result, computed):
        bar.update(1)
        seq = result["tasks"].get("sequential", {}).get("metrics", {})
        typer.echo(f"{'ran ' if computed else 'kept'} {cell.key}: seq NDCG@10 {seq.get('NDCG@10', float('nan')) * 100:.2f}%  "
                   f"({result['wall_seconds']:.0f}s)", err=True)
        if markdown:
            update_markdown_section(markdown, spec.name, grid_markdown(load_results(out_dir), spec, spec_path))

    try:
        run_grid(spec_path, out_dir, _split_list(datasets), _split_list(variants), _split_list(protocols),
                 seed_list, force=force, progress=not quiet, on_cell=on_cell)
    except GridError as e:
        fail(str(e))
    finally:
        bar.close()
    typer.echo(grid_markdown(load_results(out_dir), spec, spec_path))


@bench_app.command("report")
def bench_report(
    spec_path: str = typer.Argument(..., help="Grid spec YAML."),
    out: str = typer.Option(None, "--out", "-o", help="Results folder (default benchmarks/results/<grid name>)."),
    markdown: str = typer.Option(None, "--markdown", help="Write the section into this file (e.g. benchmarks/NOTEBOOK.md) instead of printing it."),
) -> None:
    """Aggregate a grid's finished cells into Markdown tables (POD anchors, ratios, targets)."""
    from peapod.bench.grid import grid_markdown, load_results, update_markdown_section

    spec, _, _ = _grid_selection(spec_path, None, None, None, None)
    out_dir = Path(out) if out else Path("benchmarks/results") / spec.name
    text = grid_markdown(load_results(out_dir), spec, spec_path)
    if markdown:
        update_markdown_section(markdown, spec.name, text)
        typer.echo(f"updated {markdown}", err=True)
    else:
        typer.echo(text)
