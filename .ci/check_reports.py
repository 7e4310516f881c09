"""Check the reports of a finished run: every (sample, method, metric) scored exactly once.

    python .ci/check_reports.py WORKDIR CONFIG
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import yaml


def main(workdir: Path, config_path: Path) -> None:
    config = yaml.safe_load(config_path.read_text())
    run = config["run"]
    reports = workdir / "results" / "reports"
    scores = pd.read_parquet(reports / "scores.parquet")
    summary = pd.read_parquet(reports / "summary.parquet")
    n_samples = sum(config["datasets"][d].get("n_test", 0) for d in run["datasets"])
    expected = n_samples * len(run["models"]) * len(run["methods"]) * len(run["metrics"])
    keys = ["dataset", "model", "method", "metric", "sample_id"]
    problems = []
    if len(scores) != expected:
        problems.append(f"scores.parquet has {len(scores)} rows, expected {expected}")
    if scores.duplicated(keys).any():
        problems.append("scores.parquet has duplicate (dataset, model, method, metric, sample) rows")
    if not (scores["status"] == "ok").any():
        problems.append("no score has status ok")
    if len(summary) != len(run["models"]) * len(run["methods"]) * len(run["metrics"]) * len(run["datasets"]):
        problems.append(f"summary.parquet has {len(summary)} rows")
    if not (reports / "summary.md").read_text().startswith("# attrflow summary"):
        problems.append("summary.md is not the report")
    if problems:
        sys.exit("report check failed: " + "; ".join(problems))
    print(f"reports ok: {len(scores)} scores, {len(summary)} summary rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
