"""A run report: training curves and metrics as PNG plots (matplotlib, Agg) and a Markdown page.

* `read_log(run_dir)`: the training-loss and validation-loss series of a run's `log.jsonl`.
* `plot_training(run_dir, path)`: train loss by step, validation loss per task by epoch.
* `plot_metrics(results, path)`: every metric of every task, one bar per protocol.
* `compare_table(results)`: the metrics of several evaluations side by side (text or Markdown).
* `write_report(run_dir, ...)`: `report.md` with the plots, the tables and an example.

`results` maps a label (e.g. a protocol name) to an `evaluate_run` result. Plots are drawn on a bare
`Figure` with the Agg canvas, so no GUI backend (and no pyplot global state) is involved.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from peapod.extras import require
from peapod.metrics.ranking import percent_scale

__all__ = ["compare_table", "plot_metrics", "plot_training", "read_log", "write_report"]

TASK_ORDER = ("sequential", "topn", "explanation")
TASK_TITLES = {"sequential": "sequential recommendation", "topn": "top-n recommendation", "explanation": "explanation generation"}


# ---- data -------------------------------------------------------------------------------------
def read_log(run_dir: str | Path) -> dict:
    """{"train": [(step, loss)], "validation": {task: [(epoch, loss)]}} from `run_dir/log.jsonl`.

    A resumed run logs some steps twice; the last value of a step (or epoch) wins.
    """
    train: dict[int, float] = {}
    val: dict[str, dict[int, float]] = {}
    path = Path(run_dir) / "log.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if event.get("event") == "train" and "loss" in event:
                train[int(event["step"])] = float(event["loss"])
            elif event.get("event") == "validation":
                for task, loss in (event.get("val") or {}).items():
                    val.setdefault(task, {})[int(event["epoch"])] = float(loss)
    return {
        "train": sorted(train.items()),
        "validation": {t: sorted(v.items()) for t, v in sorted(val.items(), key=lambda kv: _task_key(kv[0]))},
    }


def _task_key(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)



def _metric_rows(results: dict[str, dict]) -> list[tuple[str, str, dict[str, float]]]:
    """(task, metric, {label: value as displayed}) for the union of tasks and metrics, in order."""
    rows = []
    tasks: list[str] = []
    for r in results.values():
        for t in r.get("tasks", {}):
            if t not in tasks:
                tasks.append(t)
    for task in sorted(tasks, key=_task_key):
        names: list[str] = []
        for r in results.values():
            for m in r.get("tasks", {}).get(task, {}).get("metrics", {}):
                if m not in names:
                    names.append(m)
        for m in names:
            values = {}
            for label, r in results.items():
                v = r.get("tasks", {}).get(task, {}).get("metrics", {}).get(m)
                if v is not None:
                    values[label] = float(v) * percent_scale(task, m)
            rows.append((task, m, values))
    return rows


# ---- tables -----------------------------------------------------------------------------------
def compare_table(results: dict[str, dict], markdown: bool = False) -> str:
    """Metrics side by side, one column per result (ranking metrics and FHR in %)."""
    labels = list(results)
    header = ["task", "metric", *labels]
    body: list[list[str]] = []
    last_task = None
    for task, metric, values in _metric_rows(results):
        if task != last_task:
            decodings = [results[lbl].get("tasks", {}).get(task, {}).get("decoding", "-") for lbl in labels]
            users = [results[lbl].get("tasks", {}).get(task, {}).get("users") for lbl in labels]
            who = "records" if task == "explanation" else "users"
            n = next((u for u in users if u is not None), None)
            body.append([f"{task} ({who}: {n})", "decoding", *decodings])
            last_task = task
        unit = "%" if percent_scale(task, metric) == 100.0 else ""
        body.append(["", metric, *[f"{values[lbl]:.2f}{unit}" if lbl in values else "-" for lbl in labels]])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(labels)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    rows = [header] + body
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[c].rjust(widths[c]) for c in range(2, len(header))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


# ---- plots ------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    require("matplotlib", "report", "the report's plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_training(run_dir: str | Path, path: str | Path) -> Path:
    """Two panels: training loss by optimizer step; validation loss per task by epoch."""
    log = read_log(run_dir)
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    if log["train"]:
        steps, losses = zip(*log["train"])
        ax1.plot(steps, losses, color="tab:blue", linewidth=1.5)
    else:
        ax1.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_title("training loss (mean over each logging window)")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("cross-entropy")
    ax1.grid(alpha=0.3)
    if log["validation"]:
        for task, series in log["validation"].items():
            epochs, losses = zip(*series)
            ax2.plot([e + 1 for e in epochs], losses, marker="o", label=task)
        ax2.legend()
        ax2.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax2.text(0.5, 0.5, "no validation: training stopped\nbefore the first epoch ended", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_title("validation loss per task")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("cross-entropy")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_metrics(results: dict[str, dict], path: str | Path) -> Path:
    """One panel per task, one horizontal bar per (metric, result label); ranking metrics and FHR in %."""
    rows = _metric_rows(results)
    tasks = [t for t in TASK_ORDER if any(r[0] == t for r in rows)] + sorted({r[0] for r in rows} - set(TASK_ORDER))
    labels = list(results)
    fig = _figure(5 * max(len(tasks), 1), 4.5)
    axes = fig.subplots(1, max(len(tasks), 1), squeeze=False)[0]
    colors = ["tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple"]
    height = 0.8 / max(len(labels), 1)
    for ax, task in zip(axes, tasks):
        metrics = [(m, v) for t, m, v in rows if t == task]
        for j, label in enumerate(labels):
            ys = [i + (j - (len(labels) - 1) / 2) * height for i in range(len(metrics))]
            xs = [v.get(label, 0.0) for _, v in metrics]
            ax.barh(ys, xs, height=height, color=colors[j % len(colors)], label=label)
        top = max((v for _, vals in metrics for v in vals.values()), default=0.0)
        ax.set_xlim(0, top * 1.1 if top > 0 else 1.0)
        ax.set_yticks(range(len(metrics)), [m for m, _ in metrics])
        ax.invert_yaxis()
        unit = "% (BLEU/ROUGE as computed)" if task == "explanation" else "%"
        ax.set_xlabel(unit)
        ax.set_title(TASK_TITLES.get(task, task))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    if not tasks:
        axes[0].text(0.5, 0.5, "no metrics", ha="center", va="center", transform=axes[0].transAxes)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


# ---- the report -------------------------------------------------------------------------------
def _md_code(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```"


def write_report(
    run_dir: str | Path,
    results: dict[str, dict],
    *,
    summary: dict | None = None,
    title: str = "PeaPOD run report",
    dataset_text: str | None = None,
    example: dict | None = None,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Path]:
    """Write `training_curves.png`, `metrics.png` and `report.md` into `run_dir`; return their paths.

    `example`: {"user", "history" (item ids), "items" [(item, score)], "explanation", "explained_item"}, and
    optionally "sentences": {"user", "item", then named sentences (generated, retrieved, real)}.
    """
    run_dir = Path(run_dir)
    curves = plot_training(run_dir, run_dir / "training_curves.png")
    bars = plot_metrics(results, run_dir / "metrics.png")
    if summary is None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    config = None
    if (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))

    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    md = [f"# {title}", "", f"Run directory: `{run_dir}`  ", f"Written: {now}", ""]
    if notes:
        md += [f"- {n}" for n in notes] + [""]
    if timings:
        md += ["## Wall time", "", "| phase | seconds |", "|---|---:|"]
        md += [f"| {k} | {v:.1f} |" for k, v in timings.items()] + [""]
    if dataset_text:
        md += ["## Data", "", _md_code(dataset_text), ""]
    if config is not None:
        md += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
    md += ["## Training", ""]
    if summary:
        best_val = summary.get("best_val")
        md += [
            f"- optimizer steps: {summary.get('steps')} ({summary.get('batches_per_epoch')} per epoch), epochs: {summary.get('epochs')}",
            f"- best epoch: {summary.get('best_epoch')}"
            + (f", mean validation loss {best_val:.4f}" if isinstance(best_val, (int, float)) else " (no full epoch ran; best/ holds the last weights)"),
            f"- training wall time: {summary.get('wall_seconds')} s",
        ]
        for h in summary.get("history", []):
            val = ", ".join(f"{t} {v:.4f}" for t, v in h.get("val", {}).items())
            md.append(f"- epoch {h['epoch'] + 1} (step {h['step']}): validation loss {val}")
        md.append("")
    md += [f"![training curves]({curves.name})", ""]
    md += ["## Evaluation", ""]
    for label, r in results.items():
        ds = r.get("dataset", {})
        md.append(
            f"- **{label}**: split {r.get('split')}, decodings "
            + ", ".join(f"{t} `{d}`" for t, d in r.get("decoding", {}).items())
            + f"; users evaluated {r.get('max_users') or 'all'} of {ds.get('users')}; "
            + f"{r.get('wall_seconds', {}).get('total', 0):.1f} s"
        )
    md += [
        "",
        "Ranking metrics and FHR in %; BLEU/ROUGE as computed (already percentages). The legacy protocol is the "
        "published one (free beam search; explanation references cut to 20 tokens); the rigorous one ranks by exact "
        "log-likelihood over the full catalogue (sequential) or the 1+99 candidates (top-n) and decodes explanations "
        "greedily.",
        "",
        compare_table(results, markdown=True),
        "",
        f"![metrics by task]({bars.name})",
        "",
    ]
    if example:
        md += [f"## Example: user {example['user']}", ""]
        hist = example.get("history") or []
        if hist:
            shown = ", ".join(hist[-10:])
            md += [f"Last {min(10, len(hist))} of {len(hist)} known items: {shown}", ""]
        md += ["| # | item | log-likelihood |", "|---:|---|---:|"]
        md += [f"| {i + 1} | {item} | {score:.4f} |" for i, (item, score) in enumerate(example["items"])]
        md += ["", f"Explanation for item {example['explained_item']}: *{example['explanation']}*", ""]
        sentences = example.get("sentences")
        if sentences:
            md += [f"User {sentences['user']} on item {sentences['item']} (the first test explanation):", ""]
            md += [f"- {kind}: *{text}*" for kind, text in sentences.items() if kind not in ("user", "item")]
            md += [""]
    md += [
        "## Files",
        "",
        "- `config.json`, `summary.json`, `log.jsonl`, `tb/`: the training run; `best/`: the model served and evaluated",
        "- " + ", ".join(f"`metrics_{label}.json`" for label in results) + ": full evaluation results",
        f"- `{curves.name}`, `{bars.name}`: the plots above",
        "",
    ]
    report = run_dir / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return {"report": report, "training_curves": curves, "metrics": bars}
