"""The plain-text table `peapod evaluate` prints from a metrics dictionary (`evaluate_run`'s result)."""

from __future__ import annotations

from peapod.metrics.ranking import percent_scale


def _fmt(name: str, v: float, std: float | None, task: str) -> str:
    """Ranking metrics and FHR (fractions) as percentages; BLEU/ROUGE are already percentages."""
    scale = percent_scale(task, name)
    s = f"{v * scale:.2f}"
    if std is not None:
        s += f" ± {std * scale:.2f}"
    return s + ("%" if scale == 100.0 else "")


def format_table(result: dict) -> str:
    """A plain-text table of a metrics dictionary (ranking metrics in %, text metrics as computed)."""
    lines = [
        f"protocol {result['protocol']}  split {result['split']}  seeds {','.join(map(str, result['seeds']))}  "
        f"variant {result['variant']}  indexing {result['indexing']}  dataset {result['dataset']['name']}",
    ]
    rows = [("task", "metric", "value")]
    for task, sec in result["tasks"].items():
        head = f"{task} [{sec['decoding']}" + (f", history {sec['history']}]" if "history" in sec else "]")
        who = "records" if task == "explanation" else "users"
        info = f"{who} {sec['users']}, invalid {sec['invalid_output_rate'] * 100:.1f}%, {sec['wall_seconds']:.1f}s"
        rows.append((head, "", info))
        std = sec.get("metrics_std") or {}
        for name, value in sec["metrics"].items():
            rows.append(("", name, _fmt(name, value, std.get(name), task)))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for r in rows:
        lines.append(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}".rstrip())
    lines.append(f"total {result['wall_seconds']['total']:.1f}s")
    return "\n".join(lines)

