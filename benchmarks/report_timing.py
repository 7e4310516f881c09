"""The evidence + report steps on a results tree the size of the embedded default.

    python benchmarks/report_timing.py [--out benchmarks/out/report]

Writes, with the project's own writers, what the embedded default leaves for the report rules:
one 64-image 64² dataset, 2 models × 36 methods (one shard each), 23 metrics scored on 4–32
samples (curves on the removal metrics), 4 axiom entries × 15 methods, then times
`write_evidence` (rule evidence) and `write_markdown` + `write_report` (rule report). Scores are
synthetic; the work the steps do depends on the table's shape, not on the values.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attrflow.data.sample_store import SampleSet, write_sample_store  # noqa: E402
from attrflow.report.aggregate import aggregate  # noqa: E402
from attrflow.report.costs import write_costs  # noqa: E402
from attrflow.report.evidence import write_evidence  # noqa: E402
from attrflow.report.html import write_report  # noqa: E402
from attrflow.report.schema import SCORES, write_table  # noqa: E402
from attrflow.report.tables import write_markdown  # noqa: E402
from attrflow.store import write_store  # noqa: E402

N, SIDE, METHODS, MODELS = 64, 64, 36, ("shapes_cnn", "shapes_xcnn")
# (metric, direction, samples, curve length): the embedded default's metric list and limits
METRICS = [("deletion", "lower", 32, 21), ("insertion", "higher", 32, 21), ("mufidelity", "higher", 4, 0),
           ("mufidelity_fixed", "higher", 4, 0), ("faithfulness_correlation", "higher", 4, 0),
           ("kpm", "higher", 8, 17), ("knm", "lower", 8, 17), ("kam", "higher", 8, 17), ("ram", "lower", 8, 17),
           ("diffid", "higher", 8, 0), ("sensitivity_n", "higher", 4, 0), ("pointing_game", "higher", 64, 0),
           ("relevance_mass", "higher", 64, 0), ("ehr", "higher", 64, 0), ("iou", "higher", 64, 0),
           ("completeness", "lower", 64, 0), ("path_monotonicity", "higher", 64, 0), ("mard_ig", "lower", 16, 0),
           ("ig_convergence", "lower", 16, 0), ("attack_spearman", "higher", 4, 0), ("attack_topk", "higher", 4, 0),
           ("riemann_stability", "lower", 4, 0), ("randomization_sanity", "lower", 2, 0)]  # fmt: skip
AXIOMS, AXIOM_METHODS, AXIOM_SAMPLES = 4, 15, 8


def build(root: Path) -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    masks = np.stack([(abs(yy - 32 + i % 9) < 12) & (abs(xx - 30) < 10) for i in range(N)])
    images = np.repeat(masks[:, None].astype(np.float32) * 0.7 + 0.1, 3, axis=1)
    ids = [f"shapes-{i:05d}" for i in range(N)]
    samples = str(write_sample_store(root / "data/shapes/samples.zarr", SampleSet(images, np.zeros(N), ids, masks), None, {}))
    methods = ["random"] + [f"method{i:02d}" for i in range(1, METHODS)]
    stores, parts = [], []
    reports = root / "reports"
    for model in MODELS:
        for skill, method in enumerate(methods):
            fn = "random_attribution" if method == "random" else "f"
            maps = (masks * skill / METHODS + rng.normal(size=masks.shape)).astype(np.float32)
            attrs = {"dataset": "shapes", "model": model, "method": method, "fn": fn, "sample_range": [0, N],
                     "wall_time_s": 0.05 * (skill + 1), "forward_samples": N * skill, "backward_samples": N * skill,
                     "peak_memory_bytes": 2**24, "device": "cpu", "applicable": True}  # fmt: skip
            arrays = {"maps": maps, "targets": np.zeros(N, dtype=np.int64), "ids": np.array(ids)}
            stores.append(str(write_store(root / f"attributions/shapes/{model}/{method}/shard-0.zarr", arrays, attrs)))
            for metric, direction, n, length in METRICS:
                values = skill / METHODS + rng.normal(size=n)
                curves = [list(rng.uniform(size=length)) for _ in range(n)] if length else [None] * n
                cols = {"dataset": ["shapes"] * n, "model": [model] * n, "method": [method] * n, "metric": [metric] * n,
                        "sample_id": ids[:n], "target": [0] * n, "label": [0] * n, "correct": [True] * n,
                        "value_retest": [None] * n, "value": values, "curve": curves, "status": ["ok"] * n,
                        "reason": [None] * n, "direction": [direction] * n, "method_fn": [fn] * n,
                        "metric_fn": ["mufidelity" if metric.startswith("mufidelity") else metric] * n,
                        "method_fingerprint": ["m"] * n, "metric_fingerprint": ["s"] * n,
                        "model_fingerprint": ["c"] * n, "dataset_fingerprint": ["d"] * n}  # fmt: skip
                parts.append(pa.table(cols, schema=SCORES))
    axioms = []
    for e in range(AXIOMS):
        entry = f"entry{e}"
        boxes = np.zeros((AXIOM_SAMPLES, 2, SIDE, SIDE), dtype=bool)
        boxes[:, 0, 5:25, 5:25] = boxes[:, 1, 35:55, 35:55] = True
        arrays = {"ids": np.array([f"{entry}-{i}" for i in range(AXIOM_SAMPLES)]), "accepted": np.ones(AXIOM_SAMPLES, bool),
                  "inputs": rng.uniform(size=(AXIOM_SAMPLES, 3, SIDE, SIDE)).astype(np.float32), "masks": boxes}  # fmt: skip
        axioms.append(str(write_store(root / f"axioms/shapes_cnn/{entry}/inputs.zarr", arrays, {})))
    for m in methods[:AXIOM_METHODS]:
        groups = {f"entry{e}": {"ids": np.array([f"entry{e}-{i}" for i in range(AXIOM_SAMPLES)]),
                                "maps_a": rng.normal(size=(AXIOM_SAMPLES, SIDE, SIDE)).astype(np.float32),
                                "maps_b": rng.normal(size=(AXIOM_SAMPLES, SIDE, SIDE)).astype(np.float32)} for e in range(AXIOMS)}  # fmt: skip
        axioms.append(str(write_store(root / f"axioms/shapes_cnn/maps/{m}.zarr", {}, {}, groups=groups)))
    part = reports / "parts.parquet"
    write_table(pa.concat_tables(parts), part)
    aggregate([part], reports / "scores.parquet", reports / "summary.parquet")
    write_costs(stores, reports / "costs.parquet")
    return {"samples": [samples], "maps": stores, "axioms": axioms, "reports": reports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "report")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    made = build(args.out)
    reports = made["reports"]
    start, cpu = time.perf_counter(), time.process_time()
    write_evidence(reports / "scores.parquet", *(reports / f"{n}.parquet" for n in ("comparisons", "ranks", "metric_quality", "metric_agreement")))
    evidence_s, evidence_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    write_markdown(reports / "summary.parquet", reports / "summary.md", reports / "costs.parquet", reports / "ranks.parquet")
    write_report(reports=reports, out_html=reports / "report.html", sample_stores=made["samples"],
                 attribution_stores=made["maps"], axiom_stores=made["axioms"])  # fmt: skip
    report_s, report_cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = pa.parquet.read_metadata(reports / "scores.parquet").num_rows
    print(
        f"{rows:,} score rows: evidence {evidence_s:.1f} s wall ({evidence_cpu:.1f} s CPU), "
        f"summary.md + report.html {report_s:.1f} s wall ({report_cpu:.1f} s CPU)"
    )


if __name__ == "__main__":
    import pyarrow.parquet  # noqa: F401  (pa.parquet above)

    main()
