"""benchmarks/gpu.sh: its summary parses what the benchmarks print, and the whole script runs
at toy sizes on the CPU (slow: it also runs config/test.yaml end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_summary import quantus_ratios, summary  # noqa: E402

METRICS_MD = """| model | metric (settings) | fwd / img | ours ms / img | bare ms / img | ours / bare | Quantus counterpart | Quantus ms / img | Quantus / ours |
|---|---|---|---|---|---|---|---|---|
| resnet50 (random weights) | deletion (p = 3136 px/step, black, prob) | 17 | 10.0 | 9.0 | 1.11 | PixelFlipping (16 fwd / img) | 35.0 | 3.5 |
| resnet50 (random weights) | insertion (20 steps, blur 29/15, prob) | 21 | 12.0 | 11.0 | 1.09 | – | – | – |
| resnet50 (random weights) | faithfulness_correlation (100 × 224 px, black, logit) | 101 | 50.0 | 45.0 | 1.11 | FaithfulnessCorrelation (101 fwd / img) | 100.0 | 2.0 |
| resnet50 | bare forward, batch 128 | 1 | 0.500 | | | | | |
"""


def test_summary_reads_the_ratios_and_judges_the_goals(tmp_path):
    assert quantus_ratios(METRICS_MD) == [
        ("resnet50 (random weights)", "deletion (p = 3136 px/step, black, prob)", 3.5),
        ("resnet50 (random weights)", "faithfulness_correlation (100 × 224 px, black, logit)", 2.0),
    ]
    (tmp_path / "metrics.md").write_text(METRICS_MD)
    (tmp_path / "ig.json").write_text(json.dumps([
        dict(model="resnet50", steps=32, max_batch=128, dtype="fp32", efficiency=0.93),
        dict(model="resnet50", steps=32, max_batch=128, dtype="bf16", efficiency=0.71),
    ]))
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "timing.json").write_text(json.dumps(dict(config="config.yaml", cores="16", total_wall_s=120.0, sum_job_wall_s=300.0, startup_share_of_job_time=0.1)))
    text = summary(tmp_path)
    assert "| fp32 | 0.93 | met |" in text and "| bf16 | 0.71 | not met |" in text
    assert "| 3.50 | met |" in text and "| 2.00 | not met |" in text
    assert "120.0 s wall" in text and "start-up 10.0 %" in text


@pytest.mark.slow
@pytest.mark.workflow
def test_gpu_script_runs_at_toy_sizes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--toy", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "summary.md").read_text()
    assert "| fp32 |" in text and "| bf16 |" in text
    assert "PixelFlipping" not in text  # the summary names metrics, the counterparts stay in metrics.md
    assert len(quantus_ratios((tmp_path / "metrics.md").read_text())) >= 3
    assert "Workflow (config/test.yaml" in text
