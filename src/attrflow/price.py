"""Price a study before running it: jobs per rule, GPU-hours and storage, nothing computed.

    python -m attrflow.price --configfile config/imagenet_study.yaml \\
        --costs results/reports/costs.parquet [--forward-ms resnet50=1.2 ...]

Jobs per rule come from the same plan the Snakefile wires (`attrflow.plan.Plan`), so they are
the counts `snakemake -n` would list for a fresh `results/`, without building the DAG. The
compute estimate is the cost model of attribution: each method's forward and backward passes
per image, as recorded in a finished run's `costs.parquet` (the stores' provenance), × the images
each (dataset, model, method) explains; a pass is priced at the model's forward time per image
(`--forward-ms`, an assumption you give for your GPU, default 1 ms) and a backward pass at twice
that. Passes per image depend on the method's settings (IG's steps) and for some methods on the
image size (occlusion's patch count): price with a `costs.parquet` of a run at the study's
settings where they differ. Scoring and training are not priced (their passes are not recorded).
Storage is the uncompressed size of what the stores hold (float32 images and maps).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import yaml

from attrflow.config import ConfigError, validate_config
from attrflow.plan import Plan

BACKWARD_PER_FORWARD = 2.0  # a backward pass costs about two forwards (weights and inputs)
FLOAT32 = 4
# Bytes per score row in Parquet: keys and fingerprints dictionary-encoded, value, status, a
# curve of ~20 points where the metric has one (measured on the embedded default: 60-250).
SCORE_ROW_BYTES = 200


def image_side(spec: dict) -> int:
    """Side length of the square images a dataset entry yields (crop, else size)."""
    if spec.get("kind") == "corrupted":
        raise ValueError("pass the base entry")
    return int(spec.get("crop") or spec.get("size") or spec.get("resize"))


def job_counts(plan: Plan) -> dict[str, int]:
    """Jobs per rule of a fresh run of ``plan``, as the rules in rules/*.smk wire them."""
    jobs: Counter[str] = Counter()
    run = plan.run
    jobs["prepare_dataset"] = len(plan.sample_stores())
    jobs["prepare_eval_shard"] = len(plan.eval_shard_stores())
    jobs["prepare_model"] = len(set(run["models"]) | set(plan.axiom_models()))
    references = {(d, m, kind) for d, m, me in plan.triples() if (kind := plan.method_references(me))}
    references |= {
        (plan.model_dataset(m), m, kind) for m, me in plan.axiom_pairs() if (kind := plan.method_references(me))
    }
    jobs["prepare_references"] = len(references)
    jobs["attribute"] = len(plan.attribution_stores())
    jobs["score"] = len(plan.score_files())
    jobs["synthesize_axioms"] = len(plan.axiom_models()) * len(plan.axiom_entries())
    jobs["attribute_axioms"] = len(plan.axiom_pairs())
    jobs["score_axioms"] = len(plan.axiom_score_files())
    if plan.roar:
        raise NotImplementedError("pricing ROAR retraining is not supported; remove `roar:` to price the rest")
    jobs["aggregate"] = jobs["evidence"] = jobs["report"] = 1
    return {rule: n for rule, n in jobs.items() if n}


# Keys of a method entry that are not its parameters (as attrflow.explainer.ENTRY_KEYS,
# repeated here so pricing does not import torch; a unit test keeps them equal).
ENTRY_KEYS = ("fn", "keep_channels", "samples", "models", "datasets", "shards_per_job")


def _side(plan: Plan, dataset: str) -> int:
    spec = plan.config["datasets"][dataset]
    while spec.get("kind") == "corrupted":
        spec = plan.config["datasets"][spec["of"]]
    return image_side(spec)


def passes_per_image(costs, method: str, fn: str, params: str, side: int) -> tuple[float, float, str]:
    """(forward, backward, source) for a method: measured at the same fn, parameters and image
    size if costs.parquet has it, else at the same fn and parameters (another image size), else
    the same entry name (other settings: flagged); NaN when nothing matches."""
    has = "params" in costs.columns
    same = costs[(costs["method_fn"] == fn) & (costs["params"] == params)] if has else costs.iloc[:0]
    tiers = [
        (same[same["image_size"] == side] if has else same, "measured at these settings"),
        (same, "these settings, other image size"),
        (costs[costs["method"] == method], "same entry name, OTHER settings"),
    ]
    for match, source in tiers:
        match = match[match["n"] > 0]
        if not match.empty:
            return float(match["forward_per_image"].mean()), float(match["backward_per_image"].mean()), source
    return math.nan, math.nan, "not in costs.parquet"


def compute(plan: Plan, costs, forward_ms: dict[str, float], default_ms: float):
    """One row per (dataset, model, method): images, passes per image (and where they came from),
    forward/backward passes and GPU-hours."""
    import pandas as pd

    from attrflow.report.costs import params_json

    rows = []
    for dataset, model, method in plan.triples():
        entry = plan.method_entry(method)
        params = params_json({k: v for k, v in entry.items() if k not in ENTRY_KEYS})
        forward, backward, source = passes_per_image(costs, method, entry["fn"], params, _side(plan, dataset))
        images = plan.eval_count(dataset, method)
        ms = forward_ms.get(model, default_ms)
        rows.append(
            dict(
                dataset=dataset, model=model, method=method, fn=entry["fn"], images=images,
                forward_per_image=forward, backward_per_image=backward, passes_source=source,
                forward_passes=images * forward, backward_passes=images * backward,
                forward_ms=ms, gpu_hours=images * (forward + BACKWARD_PER_FORWARD * backward) * ms / 3.6e6,
            )
        )
    return pd.DataFrame(rows)


def storage(plan: Plan) -> dict[str, float]:
    """Bytes the stores hold, uncompressed: samples, evaluation shards, maps, score rows."""
    samples = 0.0
    for path in plan.sample_stores():
        dataset = Path(path).parent.name
        side = _side(plan, dataset)
        samples += plan.eval_count(dataset) * 3 * side * side * FLOAT32
    eval_shards = samples  # the shards hold the evaluation images once more, split
    maps = 0.0
    rows = 0
    for dataset, _, method in plan.triples():
        side = _side(plan, dataset)
        maps += plan.eval_count(dataset, method) * side * side * FLOAT32
        rows += sum(plan.scored_samples(dataset, method, metric) for metric in plan.run["metrics"])
    # scores: the per-shard files and scores.parquet, each once
    return {"samples": samples, "eval_shards": eval_shards, "maps": maps, "scores": 2.0 * rows * SCORE_ROW_BYTES, "score_rows": rows}


def _size(n: float) -> str:
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def shard_sizes(compute_table, target_minutes: float) -> dict[str, int]:
    """Shard sizes from the cost model for attribution jobs of about ``target_minutes``:
    `costliest` keeps every method's jobs within the target, `median` the median method's (the
    costliest methods' jobs then run longer). Larger shards mean fewer jobs: less start-up,
    scheduling and planning per image."""
    seconds_per_image = (compute_table["gpu_hours"] * 3600 / compute_table["images"]).dropna()
    seconds_per_image = seconds_per_image[seconds_per_image > 0]
    if seconds_per_image.empty:
        return {}
    target = 60 * target_minutes
    return {
        "costliest": max(1, int(target // seconds_per_image.max())),
        "median": max(1, int(target // seconds_per_image.median())),
    }


def shards_per_job(plan: Plan, compute_table, target_minutes: float) -> dict[str, int]:
    """Per method entry, the `shards_per_job` whose attribution jobs take about
    ``target_minutes`` at the configured `shard_size` (its costliest model and dataset decide; at
    least 1, at most the shards it has). Costs span orders of magnitude — a gradient is one
    backward pass per image, exact Shapley values on a 4×4 grid 65,536 forwards — so one shard size
    for all either floods the scheduler with seconds-long jobs or makes hours-long ones."""
    seconds_per_image = (compute_table["gpu_hours"] * 3600 / compute_table["images"]).groupby(compute_table["method"]).max()
    size = plan.config["shard_size"]
    out = {}
    for method, seconds in seconds_per_image.dropna().items():
        # the evaluation shards it explains (not its jobs: the config may group them already)
        most = max(math.ceil(plan.eval_count(d, method) / size) for d, _, me in plan.triples() if me == method)
        # A method without passes (the random control) costs next to nothing: one job.
        out[method] = most if seconds <= 0 else int(min(most, max(1, 60 * target_minutes / seconds // size)))
    return out


def with_shards_per_job(config: dict, grouping: dict[str, int]) -> dict:
    """``config`` with each method entry's `shards_per_job` set as ``grouping`` says (1: left out)."""
    methods = {}
    for name, entry in config["methods"].items():
        entry = {k: v for k, v in entry.items() if k != "shards_per_job"}
        if grouping.get(name, 1) > 1:
            entry["shards_per_job"] = grouping[name]
        methods[name] = entry
    return {**config, "methods": methods}


def price(config_path: Path, costs_path: Path, forward_ms: dict[str, float], default_ms: float = 1.0, workdir: Path | None = None, target_minutes: float | None = None) -> dict:
    """Everything `main` prints, as data: jobs per rule, the compute table, storage and, with
    ``target_minutes``, shard sizes from the cost model with the job count each would plan."""
    import pandas as pd

    config = yaml.safe_load(Path(config_path).read_text())
    checked = validate_config(config, workdir=workdir or Path.cwd())
    plan = Plan(checked, workdir=str(workdir or Path.cwd()))
    costs = pd.read_parquet(costs_path)
    table = compute(plan, costs, forward_ms, default_ms)
    result = {"jobs": job_counts(plan), "compute": table, "storage": storage(plan), "shard_sizes": {}, "shard_size": checked["shard_size"]}
    if target_minutes:
        for name, size in shard_sizes(table, target_minutes).items():
            resized = Plan({**checked, "shard_size": size}, workdir=str(workdir or Path.cwd()))
            result["shard_sizes"][name] = (size, sum(job_counts(resized).values()))
        grouping = shards_per_job(plan, table, target_minutes)
        grouped = Plan(with_shards_per_job(checked, grouping), workdir=str(workdir or Path.cwd()))
        result["shards_per_job"] = (grouping, sum(job_counts(grouped).values()))
    return result


def _forward_ms(values: list[str]) -> dict[str, float]:
    out = {}
    for item in values:
        model, _, ms = item.partition("=")
        try:
            out[model] = float(ms)
        except ValueError:
            raise SystemExit(f"--forward-ms expects MODEL=MILLISECONDS, got {item!r}") from None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attrflow.price", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, required=True)
    parser.add_argument("--costs", type=Path, default=Path("results/reports/costs.parquet"),
                        help="a finished run's costs.parquet: passes per image per method (default: %(default)s)")
    parser.add_argument("--forward-ms", nargs="*", default=[], metavar="MODEL=MS",
                        help="forward time per image of a model on the target GPU, at batch (an assumption you give)")
    parser.add_argument("--default-forward-ms", type=float, default=1.0, help="for models not named in --forward-ms")
    parser.add_argument("--target-job-minutes", type=float, default=None,
                        help="also suggest shard sizes whose attribution jobs take about this long")
    args = parser.parse_args(argv)
    if not args.costs.exists():
        raise SystemExit(f"{args.costs} not found: run a small study first (make run) or pass --costs")
    try:
        result = price(args.configfile, args.costs, _forward_ms(args.forward_ms), args.default_forward_ms, target_minutes=args.target_job_minutes)
    except (ConfigError, NotImplementedError) as err:
        raise SystemExit(str(err)) from None
    jobs, compute_table, store = result["jobs"], result["compute"], result["storage"]
    print(f"# {args.configfile}: nothing was run\n")
    print("jobs per rule:")
    for rule, n in jobs.items():
        print(f"  {rule:<20} {n:>9,}")
    print(f"  {'total':<20} {sum(jobs.values()):>9,}\n")
    by_method = compute_table.groupby("method", sort=False).agg(
        images=("images", "sum"), forward_per_image=("forward_per_image", "first"),
        backward_per_image=("backward_per_image", "first"), gpu_hours=("gpu_hours", lambda h: h.sum(min_count=1)),
        source=("passes_source", "first"))
    print("attribution compute (passes per image from costs.parquet × images; a backward = 2 forwards):")
    print(by_method.sort_values("gpu_hours", ascending=False).to_string(float_format=lambda v: f"{v:,.2f}"))
    unknown = compute_table.loc[compute_table["gpu_hours"].isna(), "method"].unique()
    total = compute_table["gpu_hours"].sum()
    print(f"\nGPU-hours for attribution: {total:,.1f}" + (f" (+ unknown: {', '.join(unknown)})" if len(unknown) else ""))
    per_model = compute_table.groupby("model", sort=False)["forward_ms"].first()
    print("  at forward ms per image: " + ", ".join(f"{m} {ms:g}" for m, ms in per_model.items()) + " (assumed; pass --forward-ms)")
    print("  not priced: scoring (metrics' passes are not recorded), model preparation, references, axioms\n")
    print("storage (uncompressed):")
    for key in ["samples", "eval_shards", "maps", "scores"]:
        print(f"  {key:<12} {_size(store[key])}")
    print(f"  {'total':<12} {_size(sum(store[k] for k in ['samples', 'eval_shards', 'maps', 'scores']))}")
    print(f"  score rows   {store['score_rows']:,}")
    if args.target_job_minutes:
        print(f"\nshard_size for attribution jobs of ~{args.target_job_minutes:g} min (now {result['shard_size']}, {sum(jobs.values()):,} jobs):")
        for name, (size, total_jobs) in result["shard_sizes"].items():
            what = "every method within the target" if name == "costliest" else "the median method at the target"
            print(f"  {size:>7,}  ({what}): {total_jobs:,} jobs")
        grouping, total_jobs = result["shards_per_job"]
        print(f"\nor keep shard_size {result['shard_size']} and group shards per method ({total_jobs:,} jobs; the numbers do not change):")
        print("methods:")
        for method, k in sorted(grouping.items(), key=lambda item: -item[1]):
            if k > 1:
                print(f"  {method}: {{shards_per_job: {k}}}")


if __name__ == "__main__":
    main(sys.argv[1:])
