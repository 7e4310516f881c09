"""Planning time against job count: attrflow's DAG beside a trivial DAG of as many jobs.

    python benchmarks/planning_scale.py --jobs 1000 5000 25000 [--rounds 1] [--profile OUT.prof]
        [--group-minutes 10 [--costs benchmarks/catalogue_costs.parquet] [--forward-ms 1]]

For each target it builds the embedded default with every catalogue entry on both models (no
per-entry `samples:`/`models:`/`methods:` limits) and `shard_size: 64`, grows `n_test` until
the plan (attrflow.price.job_counts, the counts `snakemake -n` lists) has about that many jobs,
and times `snakemake -n --quiet rules` on it in a fresh working directory. Beside it, in the
same run and interleaved, a trivial Snakefile with the same shape — one job per evaluation
shard, two jobs per (model, method, shard) (the second reading the first, each with a params
function), one job reading them all — so the ratio is what attrflow adds to Snakemake's own
work. With --profile, the largest attrflow run is also run under cProfile (a .prof file).
Each row is the best of --rounds dry runs in the same working directory: from the second on,
attrflow's code fingerprints come from its memo in `.snakemake/attrflow/` (as in any plan of a
project after its first); with --rounds 1 every dry run computes them.

With --group-minutes, each sized config is also planned with every method's `shards_per_job`
from the cost model (`attrflow.price.shards_per_job`: passes per image from a finished run's
costs.parquet × --forward-ms per pass, jobs of about that many minutes), beside a trivial DAG
grouped the same way (each second-rule job reading its group's shard files).
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from attrflow.catalog import catalog  # noqa: E402
from attrflow.config import dataset_provides, validate_config  # noqa: E402
from attrflow.plan import Plan  # noqa: E402
from attrflow.price import job_counts  # noqa: E402

SHARD = 64
TRIVIAL = '''
N_SHARDS = {shards}
GROUPS = {groups}  # cell -> shards per job


def jobs(cell):
    return range(-(-N_SHARDS // GROUPS[cell]))


def shard_files(w):
    k = GROUPS[w.cell]
    return [f"shards/{{s}}.txt" for s in range(int(w.job) * k, min(N_SHARDS, (int(w.job) + 1) * k))]


rule all:
    input: "agg.txt"

rule prep:
    output: "shards/{{shard}}.txt"
    params: p=lambda w: {{"shard": int(w.shard)}}
    shell: "touch {{output}}"

rule first:
    input: shard_files
    output: "first/{{cell}}/{{job}}.txt"
    params: p=lambda w: {{"cell": w.cell, "range": [int(w.job), int(w.job) + 1]}}
    shell: "touch {{output}}"

rule second:
    input: "first/{{cell}}/{{job}}.txt"
    output: "second/{{cell}}/{{job}}.txt"
    params: p=lambda w: {{"cell": w.cell, "range": [int(w.job), int(w.job) + 1]}}
    shell: "touch {{output}}"

rule agg:
    input: [f"second/{{c}}/{{j}}.txt" for c in GROUPS for j in jobs(c)]
    output: "agg.txt"
    shell: "touch {{output}}"
'''


def study_config(n_test: int) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = copy.deepcopy(config)
    for entry in config["methods"].values():
        for key in ("samples", "models", "datasets"):
            entry.pop(key, None)
    for entry in config["metrics"].values():
        for key in ("samples", "methods"):
            entry.pop(key, None)
    config["run"]["methods"] = [m for m, e in config["methods"].items() if e["fn"] != "x_gradient"]
    dataset = config["run"]["datasets"][0]
    # every metric the dataset can feed (severity and concept metrics need data shapes lacks)
    provides = dataset_provides(config["datasets"][dataset], config["datasets"])
    metrics = catalog("metrics")
    config["run"]["metrics"] = [
        name for name, entry in config["metrics"].items()
        if set(metrics[entry["fn"]].options.get("requires", [])) <= provides
    ]
    config["shard_size"] = SHARD
    config["datasets"][dataset]["n_test"] = n_test
    return config


def plan_jobs(config: dict, workdir: Path) -> tuple[int, Plan]:
    plan = Plan(validate_config(config, workdir=workdir), workdir=str(workdir))
    return sum(job_counts(plan).values()), plan


def sized(target: int, workdir: Path) -> tuple[dict, int, Plan]:
    """The config whose plan has about ``target`` jobs (jobs grow linearly with shards)."""
    one, _ = plan_jobs(study_config(SHARD), workdir)
    two, _ = plan_jobs(study_config(2 * SHARD), workdir)
    per_shard, fixed = two - one, one - (two - one)
    shards = max(1, round((target - fixed) / per_shard))
    config = study_config(shards * SHARD)
    jobs, plan = plan_jobs(config, workdir)
    return config, jobs, plan


def dry_run(snakefile: Path, workdir: Path, config: Path | None, profile: Path | None = None) -> tuple[float, float]:
    """(wall s, CPU s) of one dry run; CPU time (user + system of the child) is the steadier
    figure on a shared machine."""
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += [str(Path(sys.executable).parent / "snakemake"), "-s", str(snakefile), "-d", str(workdir), "-n", "--quiet", "rules", "--cores", "1"]
    if config:
        cmd += ["--configfile", str(config), "--profile", str(REPO / "profiles" / "default")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def grouped(config: dict, plan: Plan, minutes: float, costs: Path, forward_ms: float) -> dict:
    """``config`` with each method's `shards_per_job` from the cost model (jobs of ~``minutes``)."""
    import pandas as pd

    from attrflow.price import compute, shards_per_job, with_shards_per_job

    table = compute(plan, pd.read_parquet(costs), {}, forward_ms)
    return with_shards_per_job(config, shards_per_job(plan, table, minutes))


def measure(label: str, config: dict, tmp: Path, rounds: int) -> tuple[Path, int]:
    """One table row: attrflow's dry run of ``config`` beside the trivial DAG of its shape."""
    work = tmp / f"a-{label}"
    work.mkdir()
    jobs, plan = plan_jobs(config, work)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    groups = {f"{m}.{me}": plan.shards_per_job(me) for _, m, me in plan.triples()}
    shards = len(plan.eval_shards(config["run"]["datasets"][0]))
    trivial = tmp / f"t-{label}"
    trivial.mkdir()
    (trivial / "Snakefile").write_text(TRIVIAL.format(shards=shards, groups=groups))
    trivial_jobs = shards + 2 * sum(-(-shards // k) for k in groups.values()) + 2
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(dry_run(REPO / "Snakefile", work, work / "config.yaml"))
        theirs.append(dry_run(trivial / "Snakefile", trivial, None))
    (a, ac), (t, tc) = min(ours), min(theirs)
    print(f"| {label} | {jobs:,} | {trivial_jobs:,} | {a:.1f} | {t:.1f} | {a / t:.2f} | {ac:.1f} | {tc:.1f} | {ac / tc:.2f} |", flush=True)
    return work, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 5000, 25000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="also profile the largest attrflow dry run into this .prof file")
    parser.add_argument("--group-minutes", type=float, help="also plan each config with shards grouped into jobs of ~this long")
    parser.add_argument("--costs", type=Path, default=REPO / "benchmarks" / "catalogue_costs.parquet",
                        help="passes per image per method from finished runs (default: every catalogue entry of "
                        "config.yaml, recorded by `make run` and a run of the entries it does not select)")
    parser.add_argument("--forward-ms", type=float, default=1.0, help="assumed ms per forward pass per image (default 1)")
    parser.add_argument("--skip-ungrouped", action="store_true", help="with --group-minutes, time the grouped configs only")
    args = parser.parse_args()
    print("| config (target jobs) | attrflow jobs | trivial jobs | attrflow wall s | trivial wall s | wall ratio | attrflow CPU s | trivial CPU s | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="attrflow-plan-") as tmp:
        tmp = Path(tmp)
        for target in args.jobs:
            sizing = tmp / f"s{target}"
            sizing.mkdir()
            config, jobs, plan = sized(target, sizing)
            if not (args.group_minutes and args.skip_ungrouped):
                work, jobs = measure(f"{target:,}", config, tmp, args.rounds)
            if args.group_minutes:
                label = f"{target:,}, grouped at {args.group_minutes:g} min"
                work, jobs = measure(label, grouped(config, plan, args.group_minutes, args.costs, args.forward_ms), tmp, args.rounds)
        if args.profile:
            dry_run(REPO / "Snakefile", work, work / "config.yaml", profile=args.profile)
            print(f"profile of the {jobs:,}-job dry run: {args.profile}")


if __name__ == "__main__":
    main()
