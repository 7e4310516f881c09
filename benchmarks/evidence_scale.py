"""The paired statistics (attrflow.report.evidence) on a synthetic scores table of many rows.

    python benchmarks/evidence_scale.py --rows 10000000

Builds a table shaped like a large run (datasets × models × metrics × methods × samples, one
random control, 2 % NaN, a retest column), writes it as Parquet, then times `write_evidence`
(read → comparisons, ranks, agreement, metric quality → four Parquet files) and reports the
wall time and the process's peak resident memory (ru_maxrss, which includes building the table).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attrflow.report.evidence import write_evidence  # noqa: E402


def synthetic(rows: int, datasets: int, models: int, metrics: int, methods: int, seed: int = 0) -> pa.Table:
    samples = rows // (datasets * models * metrics * methods)
    rng = np.random.default_rng(seed)
    shape = (datasets, models, metrics, methods, samples)
    idx = np.indices(shape).reshape(len(shape), -1)
    n = idx.shape[1]
    skill = rng.normal(size=(datasets, models, metrics, methods))[idx[0], idx[1], idx[2], idx[3]]
    value = skill * 0.1 + rng.normal(size=n)
    value[rng.random(n) < 0.02] = np.nan
    names = lambda prefix, k: np.array([f"{prefix}{i}" for i in range(k)])  # noqa: E731
    method = names("method", methods)
    method[0] = "random"

    def cat(values: np.ndarray, codes: np.ndarray) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values))

    return pa.table(
        {
            "dataset": cat(names("d", datasets), idx[0]),
            "model": cat(names("model", models), idx[1]),
            "method": cat(method, idx[3]),
            "metric": cat(names("metric", metrics), idx[2]),
            "sample_id": cat(names("s", samples), idx[4]),
            "target": np.zeros(n, dtype=np.int64),
            "value": value,
            "status": cat(np.array(["ok", "nan"]), np.isnan(value).astype(np.int32)),
            "direction": cat(np.array(["higher", "lower"]), idx[2] % 2),
            "method_fn": cat(np.array(["random_attribution", "f"]), (idx[3] > 0).astype(np.int32)),
            "value_retest": value + 0.3 * rng.normal(size=n),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--datasets", type=int, default=2)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--methods", type=int, default=25)
    args = parser.parse_args()
    table = synthetic(args.rows, args.datasets, args.models, args.metrics, args.methods)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.parquet"
        pq.write_table(table, path)
        rows = table.num_rows
        del table
        start = time.perf_counter()
        write_evidence(path, *(Path(tmp) / f"{name}.parquet" for name in ("c", "r", "q", "g")))
        wall = time.perf_counter() - start
        pairs = pq.read_metadata(Path(tmp) / "c.parquet").num_rows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{rows:,} rows, {pairs:,} method pairs: {wall:.1f} s wall, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
