"""The CI's check that SLURM grouped the jobs (.ci/check_grouping.py), on a Snakemake log and
squeue lines of the shapes a grouped run produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("check_grouping", Path(__file__).resolve().parents[2] / ".ci" / "check_grouping.py")
check_grouping = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check_grouping)

LOG = """Building DAG of jobs...
Job stats:
job                   count
------------------  -------
prepare_dataset           1
prepare_eval_shard       25
prepare_model             1
attribute               100
score                   100
aggregate                 1
evidence                  1
report                    1
all                       1
total                   231

[Sat Dec  5 05:02:05 2026] Group job shard (jobs in lexicogr. order):

    [Sat Dec  5 05:02:05 2026]
    rule attribute:
        output: results/attributions/tiny/cnn/gradient/shard-24.zarr
[Sat Dec  5 05:09:00 2026]
rule aggregate:
[Sat Dec  5 05:09:10 2026]
localrule evidence:
[Sat Dec  5 05:09:20 2026]
localrule report:
[Sat Dec  5 05:09:30 2026]
localrule all:
"""


def _squeue(shard_groups=10, state="COMPLETED", shard_tres="gres:gpu:1"):
    lines = ["11 rule_prepare_dataset_wildcards_dataset=tiny COMPLETED", "12 rule_prepare_model_wildcards_model=cnn COMPLETED gres:gpu:1"]
    lines.append("13 rule_eval_shards_prepare_eval_shard COMPLETED")
    lines += [f"{14 + i} rule_shard_attribute_score {state} {shard_tres}" for i in range(shard_groups)]
    return "\n".join(lines)


def test_counts_come_from_the_job_stats_and_localrule_headers():
    assert check_grouping.snakemake_jobs(LOG) == (231, 4)
    assert {"aggregate", "evidence", "score_axioms", "all"} <= check_grouping.local_rules()
    assert "attribute" not in check_grouping.local_rules()


def test_a_grouped_completed_run_passes():
    assert check_grouping.check(LOG, _squeue(), min_jobs=200) == []


@pytest.mark.parametrize(
    "slurm, min_jobs, problem",
    [
        (_squeue(shard_groups=240), 200, "nothing was grouped"),
        (_squeue(state="FAILED"), 200, "is FAILED, not COMPLETED"),
        (_squeue(shard_tres=""), 200, "without a GPU"),
        (_squeue(), 300, "needs at least 300"),
        ("", 200, "no SLURM job of this run"),
        ("\n".join(f"{i} rule_attribute_wildcards_x={i} COMPLETED gres:gpu:1" for i in range(20)), 200, "no SLURM job ran a group"),
    ],
)
def test_each_failure_is_named(slurm, min_jobs, problem):
    problems = check_grouping.check(LOG, slurm, min_jobs=min_jobs)
    assert any(problem in p for p in problems), problems


def test_a_log_without_job_stats_is_an_error():
    with pytest.raises(ValueError, match="Job stats"):
        check_grouping.snakemake_jobs("nothing here")
