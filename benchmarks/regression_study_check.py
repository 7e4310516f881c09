"""Severity correlation, box IoU and relevance mass per method on a trained severity CNN.

Usage: train and save the study's model first (config/regression.yaml's dataset and model, e.g.
through the workflow), then ``PYTHONPATH=src python benchmarks/regression_study_check.py RUN``
where RUN holds ``samples.zarr`` and ``model/`` (model.safetensors + card.json). Explains the
first 16 test scenes with every method of the study (feature statistics from 1000 train scenes).
"""
import sys
import numpy as np, torch
from torch import nn
from attrflow.models.cards import load_model
from attrflow.data.sample_store import read_samples
from attrflow.methods import call_method, get_method
from attrflow.methods.references import build_feature_statistics
from attrflow.methods._bottleneck import LayerStatistics
from attrflow.metrics import MetricInputs, call_metric, get_metric
torch.set_num_threads(2)
R = sys.argv[1] if len(sys.argv) > 1 else "results"
model = load_model(f"{R}/model")
train = read_samples(f"{R}/samples.zarr", "train", 0, 1000)
ev = read_samples(f"{R}/samples.zarr", "eval", 0, 16)
stats, attrs = build_feature_statistics(model, train, seed=0)
refs = {}
for name, arrays in stats.items():
    refs[name] = LayerStatistics(*(torch.from_numpy(arrays[k]) for k in LayerStatistics._fields))
    refs.setdefault(attrs["layers"][name], refs[name])
x = torch.from_numpy(ev.images); t = torch.zeros(16, dtype=torch.long)
with torch.no_grad():
    pred = model(x)[:, 0]
print("pred vs label r", np.corrcoef(pred.numpy(), ev.labels)[0, 1], "mae", (pred - torch.from_numpy(ev.labels).float()).abs().mean().item())
entries = {
    "random": ("random_attribution", {}), "gradient": ("gradient", {}),
    "ig_black": ("integrated_gradients", {"steps": 32}), "gradcam": ("gradcam", {}),
    "dv": ("regression_iba", {"loss": "deviation"}), "mse0": ("regression_iba", {"loss": "mse", "target_score": 0.0}),
    "rm": ("regression_iba", {"loss": "maximisation"}), "inverse_dv": ("regression_iba", {"loss": "deviation", "inverse": True, "beta": 30.0}),
    "multi_layer": ("multi_layer_iba", {}),
}
for name, (fn, params) in entries.items():
    info = get_method(fn)
    res = call_method(info, model, x, t, params, generator=torch.Generator().manual_seed(0), references=refs if info.references else None)
    maps = res.maps if res.maps.dim() == 3 else res.maps.sum(1)
    inp = MetricInputs(model=model, images=x, maps=maps.detach(), targets=t, labels=torch.from_numpy(ev.labels), ids=ev.ids,
                       masks=torch.from_numpy(ev.masks), severity=torch.from_numpy(ev.severity))
    out = {m: call_metric(get_metric(m), inp, {}).values for m in ("severity_correlation", "box_iou", "relevance_mass")}
    print(f"{name:12s} " + "  ".join(f"{m} {np.nanmean(v):.3f}" for m, v in out.items()), flush=True)
