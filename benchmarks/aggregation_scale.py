"""Aggregation time and peak memory against rows, over a synthetic hive-partitioned score set.

    python benchmarks/aggregation_scale.py --rows 100000 1000000 10000000 [--whole] [--keep DIR]

Writes score files shaped like a study's (`scores/dataset=…/model=…/method=…/shard-k.parquet`,
the full scores schema, one random control, 2 % NaN, 3 % skipped, a retest column on a third of
the metrics, no curves), then runs, each in a fresh process so its peak resident memory
(ru_maxrss, imports included) is its own:

- `aggregate` (streams the partitions → scores.parquet + summary.parquet),
- `evidence` (streams the (dataset, model, metric) families of scores.parquet → four tables),
- with `--whole`, the whole-table path these replaced (every score file concatenated and
  loaded into pandas, `summarise` on it) for the same rows.

Prints one line per (rows, stage): wall seconds, CPU seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_scores(root: Path, rows: int, datasets: int, models: int, methods: int, metrics: int, shard: int, seed: int = 0) -> list[str]:
    from attrflow.report.schema import SCORES

    samples = max(1, rows // (datasets * models * methods * metrics))
    rng = np.random.default_rng(seed)
    metric_names = [f"metric{i:02d}" for i in range(metrics)]
    paths = []
    for d in range(datasets):
        for m in range(models):
            for me in range(methods):
                method = "random" if me == 0 else f"method{me:02d}"
                skill = rng.normal(size=metrics)
                for k, start in enumerate(range(0, samples, shard)):
                    ids = np.arange(start, min(start + shard, samples))
                    n = ids.size * metrics
                    metric_idx = np.repeat(np.arange(metrics), ids.size)
                    value = 0.1 * skill[metric_idx] + rng.normal(size=n)
                    draw = rng.random(n)
                    status = np.where(draw < 0.02, "nan", np.where(draw < 0.05, "skipped", "ok"))
                    value[status == "nan"] = np.nan
                    retest = np.where(metric_idx % 3 == 0, value + 0.3 * rng.normal(size=n), np.nan)
                    sample = np.tile(ids, metrics)
                    table = pa.table(
                        {
                            "dataset": [f"dataset{d}"] * n,
                            "model": [f"model{m}"] * n,
                            "method": [method] * n,
                            "metric": np.array(metric_names)[metric_idx],
                            "sample_id": np.char.add("img", sample.astype(str)),
                            "target": sample % 1000,
                            "label": sample % 1000,
                            "correct": draw > 0.3,
                            "value": value,
                            "value_retest": pa.array(retest, from_pandas=True),
                            "curve": pa.nulls(n, pa.list_(pa.float64())),
                            "status": status,
                            "reason": pa.array(np.where(status == "ok", None, "synthetic"), pa.string()),
                            "direction": np.where(metric_idx % 2 == 0, "higher", "lower"),
                            "method_fn": ["random_attribution" if me == 0 else "f"] * n,
                            "metric_fn": np.array(metric_names)[metric_idx],
                            "method_fingerprint": ["a" * 16] * n,
                            "metric_fingerprint": ["b" * 16] * n,
                            "model_fingerprint": ["c" * 16] * n,
                            "dataset_fingerprint": ["d" * 16] * n,
                        },
                        schema=SCORES,
                    )
                    path = root / f"dataset=dataset{d}" / f"model=model{m}" / f"method={method}" / f"shard-{k}.parquet"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(table, path)
                    paths.append(str(path))
    return paths


def stage(name: str, work: Path, draws: int) -> dict:
    """Run one stage in this (fresh) process; report wall, CPU and this process's peak RSS."""
    paths = json.loads((work / "paths.json").read_text())
    start, cpu = time.perf_counter(), time.process_time()
    if name == "aggregate":
        from attrflow.report.aggregate import aggregate

        aggregate(paths, work / "scores.parquet", work / "summary.parquet")
    elif name == "evidence":
        from attrflow.report.evidence import write_evidence

        write_evidence(work / "scores.parquet", *(work / f"{n}.parquet" for n in ("c", "r", "q", "g")), draws=draws)
    elif name == "whole":
        from attrflow.report.aggregate import concat_scores, summarise

        summarise(concat_scores(paths).to_pandas())
    else:
        raise SystemExit(f"unknown stage {name}")
    return {
        "stage": name,
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--datasets", type=int, default=2)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--methods", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=22)
    parser.add_argument("--shard", type=int, default=256, help="samples per score file")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws in evidence")
    parser.add_argument("--whole", action="store_true", help="also time the whole-table pandas path")
    parser.add_argument("--no-evidence", action="store_true")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.work, args.draws)))
        return
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="attrflow-agg-", dir=args.keep))
        try:
            start = time.perf_counter()
            paths = write_scores(work / "scores", rows, args.datasets, args.models, args.methods, args.metrics, args.shard)
            (work / "paths.json").write_text(json.dumps(paths))
            total = sum(pq.read_metadata(p).num_rows for p in paths)
            size = sum(Path(p).stat().st_size for p in paths) / 2**20
            print(f"{total:,} rows in {len(paths):,} files ({size:.0f} MiB) written in {time.perf_counter() - start:.0f} s", flush=True)
            stages = ["aggregate"] + ([] if args.no_evidence else ["evidence"]) + (["whole"] if args.whole else [])
            for name in stages:
                cmd = [sys.executable, __file__, "--stage", name, "--work", str(work), "--draws", str(args.draws)]
                out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                print(f"  {total:>12,} rows  {name:<9} {out['wall_s']:8.1f} s wall  {out['cpu_s']:8.1f} s CPU  peak RSS {out['peak_rss_mib']:8.0f} MiB", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
