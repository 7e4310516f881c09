"""Planning time against job count: attrflow's DAG beside a trivial DAG of as many jobs.

    python benchmarks/planning_scale.py --jobs 1000 5000 25000 [--rounds 1] [--profile OUT.prof]

For each target it builds the embedded default with every catalogue entry on both models (no
per-entry `samples:`/`models:`/`methods:` limits) and `shard_size: 64`, grows `n_test` until
the plan (attrflow.price.job_counts, the counts `snakemake -n` lists) has about that many jobs,
and times `snakemake -n --quiet rules` on it in a fresh working directory. Beside it, in the
same run and interleaved, a trivial Snakefile with the same shape — one job per evaluation
shard, two jobs per (model, method, shard) (the second reading the first, each with a params
function), one job reading them all — so the ratio is what attrflow adds to Snakemake's own
work. With --profile, the largest attrflow run is also run under cProfile (a .prof file).
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
CELLS = {cells}

rule all:
    input: "agg.txt"

rule prep:
    output: "shards/{{shard}}.txt"
    params: p=lambda w: {{"shard": int(w.shard)}}
    shell: "touch {{output}}"

rule first:
    input: "shards/{{shard}}.txt"
    output: "first/{{cell}}/{{shard}}.txt"
    params: p=lambda w: {{"cell": w.cell, "range": [int(w.shard), int(w.shard) + 1]}}
    shell: "touch {{output}}"

rule second:
    input: "first/{{cell}}/{{shard}}.txt"
    output: "second/{{cell}}/{{shard}}.txt"
    params: p=lambda w: {{"cell": w.cell, "range": [int(w.shard), int(w.shard) + 1]}}
    shell: "touch {{output}}"

rule agg:
    input: expand("second/{{cell}}/{{shard}}.txt", cell=CELLS, shard=range(N_SHARDS))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 5000, 25000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="also profile the largest attrflow dry run into this .prof file")
    args = parser.parse_args()
    print("| target | attrflow jobs | trivial jobs | attrflow wall s | trivial wall s | wall ratio | attrflow CPU s | trivial CPU s | CPU ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="attrflow-plan-") as tmp:
        tmp = Path(tmp)
        for target in args.jobs:
            work = tmp / f"a{target}"
            work.mkdir()
            config, jobs, plan = sized(target, work)
            (work / "config.yaml").write_text(yaml.safe_dump(config))
            cells = [f"{m}.{me}" for _, m, me in plan.triples()]
            shards = len(plan.eval_shards(config["run"]["datasets"][0]))
            trivial = tmp / f"t{target}"
            trivial.mkdir()
            (trivial / "Snakefile").write_text(TRIVIAL.format(shards=shards, cells=cells))
            trivial_jobs = shards + 2 * len(cells) * shards + 2
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(dry_run(REPO / "Snakefile", work, work / "config.yaml"))
                theirs.append(dry_run(trivial / "Snakefile", trivial, None))
            (a, ac), (t, tc) = min(ours), min(theirs)
            print(f"| {target:,} | {jobs:,} | {trivial_jobs:,} | {a:.1f} | {t:.1f} | {a / t:.2f} | {ac:.1f} | {tc:.1f} | {ac / tc:.2f} |", flush=True)
        if args.profile:
            dry_run(REPO / "Snakefile", work, work / "config.yaml", profile=args.profile)
            print(f"profile of the {jobs:,}-job dry run: {args.profile}")


if __name__ == "__main__":
    main()
