"""Time the embedded default end to end, per rule, its start-up share, and a no-op re-run.

    .venv/bin/python benchmarks/workflow_timing.py [--config config.yaml] [--workdir benchmarks/out/run]

Runs Snakemake on a fresh working directory (the repository's workflow, the given config),
then reads what the workflow itself recorded: Snakemake's `benchmark:` files (wall seconds per
job) and each job log's "startup X s" line (process start → job code imported). Prints a
Markdown report for benchmarks/RESULTS.md and writes it as JSON next to the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = re.compile(r"startup ([0-9.]+) s")


def snakemake(workdir: Path, config: Path, *args: str) -> float:
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s", str(REPO / "Snakefile"),
        "-d", str(workdir),
        "--configfile", str(config),
        "--profile", str(REPO / "profiles" / "default"),
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def per_rule(workdir: Path) -> dict[str, dict[str, float]]:
    rules: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "startup_s": 0.0})
    for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results" / "benchmarks").parts[0].removesuffix(".tsv")
        lines = tsv.read_text().splitlines()
        rules[rule]["jobs"] += 1
        rules[rule]["wall_s"] += float(lines[1].split("\t")[0])
    for log in (workdir / "logs").rglob("*.log"):
        rule = log.relative_to(workdir / "logs").parts[0].removesuffix(".log")
        match = STARTUP.search(log.read_text(errors="replace"))
        if match:
            rules[rule]["startup_s"] += float(match.group(1))
    return dict(rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "run")
    parser.add_argument("--cores", default="2")
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    config = args.config.resolve()

    total = snakemake(args.workdir, config, "--cores", args.cores)
    noop = [snakemake(args.workdir, config, "-n") for _ in range(3)]
    rules = per_rule(args.workdir)
    job_wall = sum(r["wall_s"] for r in rules.values())
    startup = sum(r["startup_s"] for r in rules.values())
    result = {
        "config": str(args.config),
        "cores": args.cores,
        "total_wall_s": round(total, 1),
        "sum_job_wall_s": round(job_wall, 1),
        "sum_startup_s": round(startup, 1),
        "startup_share_of_job_time": round(startup / job_wall, 3) if job_wall else None,
        "noop_dry_run_s": [round(t, 2) for t in noop],
        "rules": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in sorted(rules.items())},
    }
    (args.workdir / "timing.json").write_text(json.dumps(result, indent=1))

    print(f"total wall {total:.1f} s on {args.cores} cores; no-op `snakemake -n` median {statistics.median(noop):.2f} s")
    print(f"sum of job wall {job_wall:.1f} s, of which start-up {startup:.1f} s ({100 * startup / job_wall:.1f} %)\n")
    print("| rule | jobs | wall s (sum) | start-up s (sum) | start-up share |")
    print("|---|---|---|---|---|")
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["wall_s"]):
        share = r["startup_s"] / r["wall_s"] if r["wall_s"] else 0
        print(f"| {name} | {int(r['jobs'])} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {100 * share:.0f} % |")


if __name__ == "__main__":
    main()
