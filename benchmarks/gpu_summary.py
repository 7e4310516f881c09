"""The ratios of a `benchmarks/gpu.sh` run against the issue's goals, as Markdown.

    python benchmarks/gpu_summary.py DIR     # DIR holds ig.json, metrics.md, workflow/timing.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

IG_GOAL = 0.9  # IG at ≥ 90 % of its bound
QUANTUS_GOAL = 3.0  # map metrics ≥ 3 × faster than Quantus


def quantus_ratios(markdown: str) -> list[tuple[str, str, float]]:
    """(model, metric, Quantus / ours) from metrics_vs_quantus.py's table (rows with a counterpart)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 9 or not re.fullmatch(r"[0-9.]+", cells[-1] or ""):
            continue
        rows.append((cells[0], cells[1], float(cells[-1])))
    return rows


def summary(folder: Path) -> str:
    out = ["## GPU figures (benchmarks/gpu.sh)", ""]
    ig = json.loads((folder / "ig.json").read_text())
    out += ["| IG | precision | bound / IG | goal ≥ 0.9 |", "|---|---|---|---|"]
    for row in ig:
        verdict = "met" if row["efficiency"] >= IG_GOAL else "not met"
        out.append(f"| {row['model']}, {row['steps']} steps, batch {row['max_batch']} | {row['dtype']} | {row['efficiency']:.2f} | {verdict} |")
    ratios = quantus_ratios((folder / "metrics.md").read_text())
    out += ["", "| model | metric | Quantus / ours | goal ≥ 3 |", "|---|---|---|---|"]
    for model, metric, ratio in ratios:
        out.append(f"| {model} | {metric} | {ratio:.2f} | {'met' if ratio >= QUANTUS_GOAL else 'not met'} |")
    if not ratios:
        out.append("| – | no metric with a Quantus counterpart was timed | – | – |")
    timing = json.loads((folder / "workflow" / "timing.json").read_text())
    share = timing["startup_share_of_job_time"]
    out += [
        "",
        f"Workflow ({timing['config']}, {timing['cores']} cores): {timing['total_wall_s']} s wall, "
        f"{timing['sum_job_wall_s']} s of job time, start-up {100 * share:.1f} % of it"
        if share is not None
        else f"Workflow ({timing['config']}): {timing['total_wall_s']} s wall",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
