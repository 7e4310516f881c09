"""`summary.md`: one table per metric, methods × models, shaped like the seed papers' tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

ARROW = {"higher": "↑", "lower": "↓"}


def _cell(row: pd.Series) -> str:
    if row["n"] == 0:
        return "skipped" if row["n_skipped"] else "n/a"
    text = f"{row['mean']:.4g}"
    if row["n"] > 1 and not math.isnan(row["ci95_high"]):
        text += f" ± {(row['ci95_high'] - row['mean']):.2g}"
    if row["rank"] == 1:
        text = f"**{text}**"
    if row["n_nan"]:
        text += f" ({row['n_nan']} nan)"
    return text


def metric_table(summary: pd.DataFrame, dataset: str, metric: str) -> str:
    part = summary[(summary["dataset"] == dataset) & (summary["metric"] == metric)]
    models = list(dict.fromkeys(part["model"]))
    methods = list(dict.fromkeys(part["method"]))
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for method in methods:
        cells = []
        for model in models:
            hit = part[(part["method"] == method) & (part["model"] == model)]
            cells.append(_cell(hit.iloc[0]) if len(hit) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: pd.DataFrame) -> str:
    out = [
        "# attrflow summary",
        "",
        "Mean over samples ± half-width of the 95 % confidence interval of the mean (Student t).",
        "Bold: best method for that model (rank 1). ↑ higher is better, ↓ lower is better.",
        "",
    ]
    for dataset in dict.fromkeys(summary["dataset"]):
        for metric in dict.fromkeys(summary.loc[summary["dataset"] == dataset, "metric"]):
            direction = summary.loc[summary["metric"] == metric, "direction"].iloc[0]
            n = summary.loc[(summary["dataset"] == dataset) & (summary["metric"] == metric), "n"].max()
            out += [f"## {metric} {ARROW.get(direction, '')} — {dataset} (n = {n})", "", metric_table(summary, dataset, metric), ""]
    return "\n".join(out)


def write_markdown(summary_path: str | Path, out_path: str | Path) -> None:
    import os

    summary = pd.read_parquet(summary_path)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    tmp.write_text(render_markdown(summary))
    os.replace(tmp, out_path)
