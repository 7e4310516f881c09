"""Check the reports of a finished run: every (sample, method, metric) scored exactly once.

    python .ci/check_reports.py WORKDIR CONFIG
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from attrflow.config import validate_config  # noqa: E402
from attrflow.plan import Plan  # noqa: E402


def main(workdir: Path, config_path: Path) -> None:
    config = yaml.safe_load(config_path.read_text())
    run = config["run"]
    reports = workdir / "results" / "reports"
    scores = pd.read_parquet(reports / "scores.parquet")
    summary = pd.read_parquet(reports / "summary.parquet")
    plan = Plan(validate_config(config, workdir=workdir))
    expected = sum(
        plan.scored_samples(d, method, metric)
        for d, _, method in plan.triples()
        for metric in run["metrics"]
    )
    keys = ["dataset", "model", "method", "metric", "sample_id"]
    problems = []
    if len(scores) != expected:
        problems.append(f"scores.parquet has {len(scores)} rows, expected {expected}")
    if scores.duplicated(keys).any():
        problems.append("scores.parquet has duplicate (dataset, model, method, metric, sample) rows")
    if not (scores["status"] == "ok").any():
        problems.append("no score has status ok")
    groups = sum(plan.scored_samples(d, me, mt) > 0 for d, _, me in plan.triples() for mt in run["metrics"])
    if len(summary) != groups:
        problems.append(f"summary.parquet has {len(summary)} rows")
    if not (reports / "summary.md").read_text().startswith("# attrflow summary"):
        problems.append("summary.md is not the report")
    # the evidence: one comparison row per method pair, one rank row per summary row
    comparisons = pd.read_parquet(reports / "comparisons.parquet")
    ranks = pd.read_parquet(reports / "ranks.parquet")
    quality = pd.read_parquet(reports / "metric_quality.parquet")
    families = summary.groupby(["dataset", "model", "metric"])["method"].nunique()
    if len(comparisons) != int((families * (families - 1) // 2).sum()):
        problems.append(f"comparisons.parquet has {len(comparisons)} rows")
    if len(ranks) != len(summary) or len(quality) != len(families):
        problems.append(f"ranks.parquet has {len(ranks)} rows, metric_quality.parquet {len(quality)}")
    page = (reports / "report.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        if not (reports / src).is_file():
            problems.append(f"report.html shows a missing figure {src}")
    if problems:
        sys.exit("report check failed: " + "; ".join(problems))
    print(f"reports ok: {len(scores)} scores, {len(summary)} summary rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
