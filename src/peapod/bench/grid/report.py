"""Grid reports: cell JSONs aggregated into Markdown tables, POD anchors and the targets' status."""

from __future__ import annotations

import statistics
from pathlib import Path

from peapod.bench.grid.spec import (
    BASELINES,
    INDEXING,
    LEGACY_COLUMNS,
    POD_ANCHORS,
    PROTOCOLS,
    RIGOROUS_COLUMNS,
    VARIANTS,
    GridSpec,
)
from peapod.io import write_text_atomic
from peapod.metrics.ranking import percent_scale


def _value(result: dict, task: str, metric: str) -> float | None:
    return result.get("tasks", {}).get(task, {}).get("metrics", {}).get(metric)


def _fmt(column: tuple[str, str], v: float | None, std: float | None = None) -> str:
    """A value of a (task, metric) column, in percent (see `percent_scale`), with its std if any."""
    if v is None:
        return "–"
    scale = percent_scale(*column)
    return f"{v * scale:.2f}" + (f" ± {std * scale:.2f}" if std is not None else "")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _rows_for(results: list[dict], dataset: str, protocol: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in results:
        c = r["cell"]
        if c["dataset"] == dataset and c["protocol"] in (protocol, "any"):
            rows.setdefault(c["variant"], []).append(r)
    order = [v for v in VARIANTS if v in rows] + [v for v in rows if v not in VARIANTS]  # ablations last
    return {v: rows[v] for v in order}


def _invalid(rs: list[dict]) -> str:
    parts = []
    for task, short in (("sequential", "seq"), ("topn", "top-n")):
        rates = [r["tasks"][task]["invalid_output_rate"] for r in rs if task in r.get("tasks", {})]
        if rates:
            parts.append(f"{short} {statistics.fmean(rates) * 100:.1f}%")
    return ", ".join(parts) or "–"


def _budget(rs: list[dict]) -> str:
    """Training budget and wall-clock: steps (or epochs), training minutes, whole-cell minutes (mean over seeds)."""
    tr = [r.get("training", {}) for r in rs]
    cell_min = statistics.fmean(r.get("wall_seconds") or 0 for r in rs) / 60
    if rs[0]["cell"]["variant"] in BASELINES:
        secs = [t.get("train_seconds") or 0 for t in tr]
        epochs = [t.get("epochs_run") for t in tr if t.get("epochs_run")]
        return (f"{statistics.fmean(epochs):.0f} ep, " if epochs else "") + f"{statistics.fmean(secs) / 60:.1f} min; cell {cell_min:.1f} min"
    steps = [t.get("steps") or 0 for t in tr]
    secs = [t.get("train_seconds") or t.get("wall_seconds") or 0 for t in tr]
    cut = " (time cap hit)" if any(t.get("out_of_time") for t in tr) else ""
    return f"{statistics.fmean(steps):.0f} steps, {statistics.fmean(secs) / 60:.1f} min{cut}; cell {cell_min:.1f} min"


def _table(results: list[dict], dataset: str, protocol: str) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    columns = LEGACY_COLUMNS if protocol == "legacy" else RIGOROUS_COLUMNS
    rows = _rows_for(results, dataset, protocol)
    has_exp = any("explanation" in r.get("tasks", {}) for rs in rows.values() for r in rs)
    cols = [c for c in columns if has_exp or not c.startswith("exp ")]
    lines = [
        "| variant | " + " | ".join(cols) + " | invalid outputs | users | training budget; wall-clock | seeds | command |",
        "|---|" + "---|" * len(cols) + "---|---|---|---|---|",
    ]
    means: dict[str, dict[str, float | None]] = {}
    for variant, rs in rows.items():
        cells, means[variant] = [], {}
        for col in cols:
            task, metric = columns[col]
            m, s = _mean_std([_value(r, task, metric) for r in rs])
            means[variant][col] = m
            cells.append(_fmt(columns[col], m, s))
        users = rs[0]["tasks"].get("sequential", {}).get("users", "–")
        seeds = ",".join(str(r["cell"]["seed"]) for r in rs)
        cmds = sorted({r["command"] for r in rs})
        cmd = "<br>".join(f"`{c}`" for c in cmds) if len(cmds) <= 3 else f"`{cmds[0]}` (and seeds {seeds})"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {_invalid(rs)} | {users} | {_budget(rs)} | {seeds} | {cmd} |")
    return lines, means


def _ratio_lines(dataset: str, means: dict[str, dict[str, float | None]]) -> list[str]:
    anchor = POD_ANCHORS.get(dataset)
    if not anchor:
        return []
    cols = [c for c in anchor if any(m.get(c) is not None for m in means.values())]
    lines = ["", "POD's logged figures (official run logs, test split, legacy protocol) and ours / POD:", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
             "| POD (logged) | " + " | ".join(_fmt(LEGACY_COLUMNS[c], anchor[c]) for c in cols) + " |"]
    for variant, m in means.items():
        if variant not in BASELINES:
            lines.append(f"| {variant} / POD | " + " | ".join(
                f"{m[c] / anchor[c]:.2f}×" if m.get(c) is not None else "–" for c in cols) + " |")
    return lines


def _targets(dataset: str, legacy: dict, rigorous: dict) -> list[str]:
    """The issue's targets, checked on the measured means (only where both sides were measured)."""
    out = []
    anchor = POD_ANCHORS.get(dataset, {})
    for variant in ("peapod-neighbors", "peapod-pool"):
        m = legacy.get(variant)
        if m and anchor:
            keys = ["seq HR@5", "seq NDCG@5", "top-n HR@5", "top-n NDCG@5"]
            ratios = [m[k] / anchor[k] for k in keys if m.get(k) is not None]
            if ratios:
                ok = len(ratios) == len(keys) and min(ratios) >= 1.10
                out.append(f"- legacy, {variant} ≥ 1.10 × POD's logged seq/top-n HR@5, NDCG@5: "
                           f"{'met' if ok else 'not met'} (lowest ratio {min(ratios):.2f}×)")
        m = rigorous.get(variant)
        for col in ("seq NDCG@10", "top-n HR@5"):
            sas = rigorous.get("sasrec", {}).get(col)
            if m and sas is not None and m.get(col) is not None:
                ok = m[col] >= sas
                out.append(f"- rigorous, {variant} {col} ≥ SASRec's: {'met' if ok else 'not met'} "
                           f"({m[col] * 100:.2f} vs {sas * 100:.2f}, {m[col] / sas:.2f}×)")
        for proto, table in (("legacy", legacy), ("rigorous", rigorous)):
            m = table.get(variant)
            for rival in ("pod", "p5"):
                r = table.get(rival)
                if not m or not r:
                    continue
                keys = [k for k in m if m.get(k) is not None and r.get(k) is not None]
                wins, ties = sum(m[k] > r[k] for k in keys), sum(m[k] == r[k] for k in keys)
                out.append(f"- {proto}, {variant} beats {rival} in the same harness: higher in {wins} of {len(keys)} columns"
                           + (f", equal in {ties}" if ties else ""))
    return out


def _paired_lines(results: list[dict], dataset: str, protocol: str = "rigorous") -> list[str]:
    """PeaPOD − POD per seed (same seed, same data): beaten when the mean difference exceeds 2× the std of the differences."""
    rows = _rows_for(results, dataset, protocol)
    out = []
    for variant in ("peapod-neighbors", "peapod-pool"):
        mine = {r["cell"]["seed"]: r for r in rows.get(variant, [])}
        pod = {r["cell"]["seed"]: r for r in rows.get("pod", [])}
        seeds = sorted(set(mine) & set(pod))
        if len(seeds) < 2:
            continue
        for col in ("seq NDCG@10", "top-n HR@5"):
            task, metric = RIGOROUS_COLUMNS[col]
            diffs = [_value(mine[s], task, metric) - _value(pod[s], task, metric) for s in seeds
                     if _value(mine[s], task, metric) is not None and _value(pod[s], task, metric) is not None]
            if len(diffs) < 2:
                continue
            mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
            ok = mean > 2 * std
            out.append(f"- {protocol}, {variant} − pod {col} over seeds {','.join(map(str, seeds))}: "
                       f"{mean * 100:+.2f} ± {std * 100:.2f} (mean ± std of the paired differences): "
                       f"{'beats POD' if ok else 'does not beat POD'} (needs mean > 2 × std)")
    return out


def machine_text(machine: dict) -> str:
    """'CPU (N cores, ISA), GPU G' for a cell's machine record; cells written before `cpu_isa` was recorded lack it."""
    cores = f"{machine['cpu_count']} cores" + (f", {machine['cpu_isa']}" if machine.get("cpu_isa") else "")
    return f"{machine['cpu']} ({cores})" + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")


def grid_markdown(results: list[dict], spec: GridSpec | None = None, spec_path: str | Path | None = None) -> str:
    """The Markdown section for a grid's results: per dataset, a legacy and a rigorous table."""
    if not results:
        return "No cell of this grid has finished yet.\n"
    machines = sorted({machine_text(r["machine"]) for r in results})
    dates = sorted(r["started"][:10] for r in results)
    lines = []
    if spec is not None:
        lines += [f"Grid `{spec.name}`: `{spec_path}`, run config `{spec.config}`, budget per training run "
                  f"{spec.budget.max_steps or '–'} steps / {spec.budget.max_minutes or '–'} min, evaluation on "
                  f"{f'the first {spec.eval.max_users}' if spec.eval.max_users else 'all'} users of the {spec.eval.split} split. "
                  f"{spec.description}".rstrip(), ""]
    lines += [f"Measured on {'; '.join(machines)}, {dates[0]} to {dates[-1]}, peapod {results[-1]['peapod_version']}. "
              "Ranking metrics in %, BLEU/ROUGE as computed (percent), FHR in %. Multi-seed rows: mean ± sample std. "
              "Baselines score items exactly (no decoding): one trained model serves both protocols, which differ for them only "
              "in whether a user's own items are ranked (rigorous removes them, legacy keeps them).", ""]
    datasets = list(dict.fromkeys(r["cell"]["dataset"] for r in results))
    if spec is not None:  # the spec's order (Toys first), not the files' alphabetical one
        datasets.sort(key=lambda d: list(spec.datasets).index(d) if d in spec.datasets else len(spec.datasets))
    for dataset in datasets:
        lines.append(f"#### {dataset}")
        means = {}
        for protocol in PROTOCOLS:
            rows = _rows_for(results, dataset, protocol)
            if not any(v not in BASELINES for v in rows) and not (protocol == "rigorous" and rows):
                means[protocol] = {}
                continue
            indexing = (spec.indexing if spec is not None else {}).get(protocol, INDEXING[protocol])
            label = (f"legacy: {indexing} indexing, beam search (20 beams), 1+99 sampled top-n, legacy BLEU/ROUGE"
                     if protocol == "legacy" else
                     f"rigorous: {indexing} indexing, full-ranking sequential, exact 1+99 top-n scoring, SacreBLEU/rouge-score")
            lines += ["", f"Protocol {label}.", ""]
            table, means[protocol] = _table(results, dataset, protocol)
            lines += table
            if protocol == "legacy":
                lines += _ratio_lines(dataset, means[protocol])
        targets = _targets(dataset, means.get("legacy", {}), means.get("rigorous", {})) + _paired_lines(results, dataset)
        if targets:
            lines += ["", "Targets, checked on these numbers:", "", *targets]
        lines.append("")
    return "\n".join(lines)


def update_markdown_section(path: str | Path, name: str, body: str, title: str | None = None) -> None:
    """Replace the text between `<!-- grid:NAME:begin -->` and `<!-- grid:NAME:end -->` in `path`
    (appending a new section with `title` when the markers are absent); written atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = f"<!-- grid:{name}:begin -->", f"<!-- grid:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        heading = f"## {title or f'Benchmark grid `{name}`'}\n\n"
        text = text.rstrip() + ("\n\n" if text else "") + heading + block + "\n"
    write_text_atomic(path, text)
