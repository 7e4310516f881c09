"""Check that a SLURM run grouped its Snakemake jobs: fewer SLURM jobs than Snakemake jobs that
went to the cluster, every SLURM job COMPLETED, and the GPU rules (alone or in a group) held the
GPU.

    python .ci/check_grouping.py RUN_LOG SLURM_JOBS [--min-jobs 200]

RUN_LOG is Snakemake's output of the run; SLURM_JOBS the lines
`squeue -t all -h --Format=JobID:12,Comment:80,State:12,tres-per-job:20` of the jobs it submitted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What profiles/slurm-ci groups (`groups:`): a group job's SLURM comment is rule_<group>_<rules>.
GROUPS = ("shard", "eval_shards", "references", "axioms")
# SLURM comments of jobs that must hold the (fake) GPU: single jobs of these rules, and group
# `shard` (attribute + score).
GPU_COMMENT = re.compile(r"^rule_(attribute|score|prepare_model)(_wildcards_|$)|^rule_shard_")


def local_rules(rules_dir: Path = ROOT / "rules") -> set[str]:
    """Rules that run on the submitting machine (`localrule: True`), and the target rule `all`."""
    local = {"all"}
    for smk in rules_dir.glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+localrule:\s*True", block, flags=re.M):
                local.add(name.group(1))
    return local


def snakemake_jobs(log: str, local: set[str] | None = None) -> tuple[int, int]:
    """(all jobs, local jobs) of a run, from its first `Job stats` table."""
    local = local_rules() if local is None else local
    table = re.search(r"^Job stats:\n(.*?)^total\s+(\d+)\s*$", log, flags=re.M | re.S)
    if not table:
        raise ValueError("no 'Job stats' table (total N) in the Snakemake log")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table.group(1), flags=re.M))
    return int(table.group(2)), sum(int(n) for rule, n in counts.items() if rule in local)


def slurm_jobs(text: str) -> list[tuple[str, str, str, str]]:
    """(job id, comment, state, tres) per SLURM job line (Snakemake's comments start `rule_`)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("rule_"):
            rows.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return rows


def check(log: str, slurm: str, min_jobs: int) -> list[str]:
    """The problems found (empty: grouping shown)."""
    total, local = snakemake_jobs(log)
    cluster = total - local
    rows = slurm_jobs(slurm)
    problems = []
    if total < min_jobs:
        problems.append(f"the run had {total} Snakemake jobs; the grouping check needs at least {min_jobs}")
    if not rows:
        problems.append("no SLURM job of this run found")
    elif len(rows) >= cluster:
        problems.append(f"{len(rows)} SLURM jobs for {cluster} cluster jobs of Snakemake: nothing was grouped")
    groups = [r for r in rows if r[1].startswith(tuple(f"rule_{g}_" for g in GROUPS))]
    if rows and not groups:
        problems.append("no SLURM job ran a group of Snakemake jobs")
    for job_id, comment, state, tres in rows:
        if state != "COMPLETED":
            problems.append(f"SLURM job {job_id} ({comment}) is {state}, not COMPLETED")
        if GPU_COMMENT.search(comment) and "gpu:1" not in tres:
            problems.append(f"SLURM job {job_id} ({comment}) runs a GPU rule without a GPU ({tres or 'no tres'})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("slurm", type=Path)
    parser.add_argument("--min-jobs", type=int, default=200)
    args = parser.parse_args()
    log, slurm = args.log.read_text(), args.slurm.read_text()
    total, local = snakemake_jobs(log)
    rows = slurm_jobs(slurm)
    print(f"{total} Snakemake jobs ({local} local, {total - local} on the cluster) ran as {len(rows)} SLURM jobs")
    problems = check(log, slurm, args.min_jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
