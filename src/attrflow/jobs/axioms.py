"""The axiom jobs: `synthesize_axioms` per (model, entry), `attribute_axioms` per (model, method),
`score_axioms` per model.

Stores:

* ``axioms/{model}/{entry}/inputs.zarr`` — every started candidate: ``inputs`` (the images to
  explain, all patches pasted), ``backgrounds``, ``patches``, ``boxes`` ((top, left) per patch),
  ``masks`` (per patch), ``targets`` ((a, b) per sample), ``accepted``, ``iterations``,
  ``coalition_logits``, ``own_probability``, ``residuals`` (the authors' tanh relative change),
  ``relative_change``, ``seconds``, ``ids``; added with robust acceptance: ``outcome`` (str:
  accepted | failed | unfinished), ``effect_ratio`` (per constraint: the change over the
  constrained patch's own effect — for saturation the saturation index) and
  ``robust_pass_fraction`` (share of the ``robust_checks`` fresh draws of background and placement
  on which the property held; nan when never re-checked). Attrs: the complete setting (tolerance,
  thresholds, iterations, robust_checks, patch size…), seed, fingerprints and the synthesis
  statistics: ``candidates_started``, ``accepted``, ``failed``, ``unfinished``,
  ``acceptance_rate`` (accepted / (accepted + failed)), ``iterations_per_accepted``,
  ``seconds_per_accepted``, ``feasibility_ratio``, ``effect_ratio``, ``robust_pass_fraction``.
  Candidates not accepted are kept with ``accepted = False`` so failures are reported per sample;
  nothing downstream reads them as samples.
* ``axioms/{model}/maps/{method}.zarr`` — one group per entry with ``maps_a`` and ``maps_b`` (the
  maps explaining class a and class b) for the accepted samples, their ``ids`` and ``targets``;
  attrs ``entries`` say per entry whether the method applied and what it cost.
* ``axioms/{model}/scores.parquet`` — every method on every entry, rows in the scores schema with
  ``dataset = "axioms/<entry>"``, ``metric = <scenario>``, ``method = <method entry>``: one row per
  sample for the per-sample scores, one row with ``sample_id = "all"`` for the correlations, and a
  ``skipped`` row for every candidate that was never accepted. Scoring reads maps only, so one
  job per model is cheap; a changed method re-runs its own `attribute_axioms` job and this one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from attrflow.axioms.metrics import score_scenario
from attrflow.axioms.settings import SCENARIOS
from attrflow.explainer import Explainer
from attrflow.jobs.runtime import (
    derive_seed,
    device_description,
    generator_for,
    library_versions,
    model_card_fingerprint,
    resolve_device,
)
from attrflow.report.schema import SCORES, write_table
from attrflow.store import open_store, write_store

LOG = logging.getLogger("attrflow")
AGGREGATE_ID = "all"


def axiom_dataset(entry: str) -> str:
    """The `dataset` column value of an axiom entry's scores."""
    return f"axioms/{entry}"


def synthesize_axioms(
    *, model_dir: str | Path, out_path: str | Path, model_name: str, entry: str, setting: dict[str, Any],
    code: str, device: str, seed: int, max_batch: int, **_: Any,
) -> Path:
    from attrflow.axioms.synthesis import synthesize
    from attrflow.models.cards import load_model

    dev = resolve_device(device)
    model = load_model(model_dir, dev)
    if model.num_classes < 2:
        raise ValueError(f"axiom entry {entry!r}: model {model_name!r} has {model.num_classes} class(es), needs two")
    classes = setting.get("classes")
    if classes is not None and max(classes) >= model.num_classes:
        raise ValueError(f"axioms.{entry}.classes {classes}: model {model_name!r} has {model.num_classes} classes")
    result = synthesize(model, setting, derive_seed(seed, model_name, entry), max_batch=max_batch, progress=True)
    n = len(result.accepted)
    LOG.info("%s on %s: %s", entry, model_name, result.stats)
    arrays = {
        "ids": np.array([f"{entry}-{i:05d}" for i in range(n)], dtype=str),
        "inputs": result.inputs(),
        "backgrounds": result.backgrounds,
        "patches": result.patches,
        "boxes": result.boxes,
        "masks": result.masks(),
        "targets": result.targets,
        "accepted": result.accepted,
        "iterations": result.iterations,
        "coalition_logits": result.coalition_logits,
        "own_probability": result.own_probability,
        "residuals": result.residuals,
        "relative_change": result.relative_change,
        "effect_ratio": result.effect_ratio,
        "robust_pass_fraction": result.robust_pass_fraction,
        "outcome": result.outcome,
        "seconds": result.seconds,
    }
    scenario = SCENARIOS[setting["scenario"]]
    attrs = {
        "kind": "axiom_inputs",
        "entry": entry,
        "scenario": scenario.name,
        "patch_names": list(scenario.patch_names),
        "constraints": [[c.cls, list(c.with_patches), list(c.without_patches)] for c in scenario.constraints],
        "setting": setting,
        "model": model_name,
        "model_fingerprint": model_card_fingerprint(model_dir),
        "code_fingerprint": code,
        "seed": int(seed),
        "device": device_description(dev),
        "versions": library_versions(),
        "forward_samples": int(model.forward_samples),
        "backward_samples": int(model.backward_samples),
        **result.stats,
    }
    return write_store(out_path, arrays, attrs)


def _accepted(inputs_path: str | Path) -> tuple[Any, np.ndarray]:
    group = open_store(inputs_path)
    return group, np.flatnonzero(group["accepted"][:])


def attribute_axioms(
    *, inputs_paths: list[str | Path], entries: list[str], model_dir: str | Path, out_path: str | Path,
    model_name: str, method: str, method_entry: dict[str, Any], code: str, device: str, seed: int, max_batch: int,
    references_path: str | Path | None = None, **_: Any,
) -> Path:
    """Maps explaining class a and class b of every accepted sample of every entry, one group per entry.

    One job per (model, method) covers all entries: a Snakemake job costs seconds of start-up,
    and a changed method still re-runs only its own job. A method with a reference set gets the
    one built on the model's training dataset (``references_path``); without it, it is recorded
    as not applicable.
    """
    from attrflow.methods import MethodNotApplicable
    from attrflow.models.cards import load_model

    if len(inputs_paths) != len(entries):
        raise ValueError(f"{len(inputs_paths)} input stores for {len(entries)} axiom entries {entries}")
    dev = resolve_device(device)
    model = load_model(model_dir, dev)
    explainer = Explainer.from_entry(method_entry, model, max_batch=max_batch)
    if explainer.info.references is not None and references_path is not None:
        from attrflow.jobs.references import load_references

        references, reference_weights = load_references(references_path, dev)
        explainer = replace(explainer, references=references, reference_weights=reference_weights)
    groups: dict[str, dict[str, np.ndarray]] = {}
    per_entry: dict[str, dict[str, Any]] = {}
    for entry, inputs_path in zip(entries, inputs_paths, strict=True):
        started = time.perf_counter()
        group, rows = _accepted(inputs_path)
        images = torch.from_numpy(group["inputs"][:][rows]).to(dev)
        targets = torch.from_numpy(group["targets"][:][rows]).to(dev)
        arrays = {"ids": np.array(group["ids"][:].tolist(), dtype=str)[rows], "targets": targets.cpu().numpy()}
        status: dict[str, Any] = {"inputs_fingerprint": dict(group.attrs).get("code_fingerprint", ""), "samples": len(rows)}
        try:
            explainer.check_references(
                f"{explainer.fn} draws {explainer.info.references!r} references from the model's training "
                f"dataset, and model {model_name!r} names none"
            )
            if len(rows):
                for column, name in ((0, "maps_a"), (1, "maps_b")):
                    gen = generator_for(dev, derive_seed(seed, model_name, entry, method, name))
                    arrays[name], _ = explainer.explain_all(images, targets[:, column], generator=gen, progress=True)
        except MethodNotApplicable as why:
            LOG.warning("%s is not applicable to model %s on %s: %s", method, model_name, entry, why)
            status.update(applicable=False, reason=str(why))
        else:
            status.update(applicable=True, reason=None)
        status["wall_time_s"] = round(time.perf_counter() - started, 3)
        groups[entry], per_entry[entry] = arrays, status
    attrs = {
        "kind": "axiom_attribution", "method": method, "fn": explainer.fn, "params": explainer.params,
        "keep_channels": explainer.keep_channels, "code_fingerprint": code, "model": model_name, "entries": per_entry,
        "seed": int(seed), "device": device_description(dev), "versions": library_versions(),
        "references": str(references_path) if explainer.references is not None else None,
        "forward_samples": int(model.forward_samples), "backward_samples": int(model.backward_samples),
    }
    return write_store(out_path, {}, attrs, groups=groups)


def score_axioms(
    *, inputs_paths: list[str | Path], maps_paths: list[str | Path], out_path: str | Path, model_name: str,
    entries: list[str], methods: dict[str, dict[str, str]], metric_code: str, **_: Any,
) -> pa.Table:
    """Every method's score on every entry (Eq. 8–11) as rows in the scores schema (see the module
    docstring). ``methods`` maps each method entry, in ``maps_paths`` order, to its ``fn`` and ``code``."""
    if len(inputs_paths) != len(entries) or len(maps_paths) != len(methods):
        raise ValueError(f"score_axioms: {len(inputs_paths)} input stores for entries {entries}, "
                         f"{len(maps_paths)} map stores for methods {list(methods)}")
    tables = []
    for entry, inputs_path in zip(entries, inputs_paths, strict=True):
        inputs, rows = _accepted(inputs_path)
        for (method, about), maps_path in zip(methods.items(), maps_paths, strict=True):
            maps = open_store(maps_path)
            tables.append(_score_entry(inputs, rows, maps, Path(maps_path), model_name, entry, method, about, metric_code))
    table = pa.concat_tables(tables) if tables else SCORES.empty_table()
    write_table(table, out_path)
    return table


def _score_entry(
    inputs: Any, rows: np.ndarray, maps_store: Any, maps_path: Path, model_name: str, entry: str, method: str,
    about: dict[str, str], metric_code: str,
) -> pa.Table:
    in_attrs = dict(inputs.attrs)
    status = dict(maps_store.attrs).get("entries", {}).get(entry)
    if status is None or entry not in maps_store:
        raise ValueError(f"{maps_path} holds no maps for axiom entry {entry!r}; re-run attribute_axioms")
    maps = maps_store[entry]
    scenario = in_attrs["scenario"]
    ids = np.array(inputs["ids"][:].tolist(), dtype=str)
    targets = inputs["targets"][:]
    if maps["ids"][:].tolist() != ids[rows].tolist():
        raise ValueError(f"{maps_path} [{entry}] was computed for other samples than the inputs; re-run attribute_axioms")
    records: list[dict[str, Any]] = []
    if not status.get("applicable", True):
        records += [_record(ids[i], targets[i, 0], np.nan, "skipped", f"method not applicable: {status.get('reason')}") for i in rows]
    elif len(rows):
        masks = inputs["masks"][:][rows]
        result = score_scenario(scenario, maps["maps_a"][:], maps["maps_b"][:], masks)
        if result.per_sample:
            records += [_record(ids[i], targets[i, 0], v, s, r) for i, v, s, r in zip(rows, result.values, result.status, result.reasons, strict=True)]
        else:
            records.append(_record(AGGREGATE_ID, None, result.values[0], result.status[0], result.reasons[0]))
    failed = np.flatnonzero(~inputs["accepted"][:])
    iterations = inputs["iterations"][:]
    outcomes = inputs["outcome"][:].tolist() if "outcome" in inputs else ["failed"] * len(ids)
    records += [
        _record(
            ids[i], targets[i, 0], np.nan, "skipped",
            f"synthesis unfinished after {int(iterations[i])} iterations (time budget)" if outcomes[i] == "unfinished"
            else f"synthesis not accepted within {int(iterations[i])} iterations",
        )
        for i in failed
    ]
    n = len(records)
    return pa.table(
        {
            "dataset": [axiom_dataset(entry)] * n,
            "model": [model_name] * n,
            "method": [method] * n,
            "metric": [scenario] * n,
            "sample_id": [r["sample_id"] for r in records],
            "target": [r["target"] for r in records],
            "label": [None] * n,  # generated inputs belong to no labelled dataset
            "correct": [None] * n,
            "value": np.array([r["value"] for r in records], dtype=np.float64),
            "value_retest": [None] * n,
            "curve": [None] * n,
            "status": [r["status"] for r in records],
            "reason": [r["reason"] for r in records],
            "direction": [SCENARIOS[scenario].direction] * n,
            "method_fn": [about["fn"]] * n,
            "metric_fn": [f"axioms.{scenario}"] * n,
            "method_fingerprint": [about["code"]] * n,
            "metric_fingerprint": [metric_code] * n,
            "model_fingerprint": [in_attrs.get("model_fingerprint", "")] * n,
            "dataset_fingerprint": [in_attrs.get("code_fingerprint", "")] * n,
        },
        schema=SCORES,
    )


def _record(sample_id: str, target: Any, value: float, status: str, reason: str | None) -> dict[str, Any]:
    return {
        "sample_id": str(sample_id),
        "target": None if target is None else int(target),
        "value": float(value),
        "status": status,
        "reason": reason,
    }
