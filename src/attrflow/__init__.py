"""attrflow: evaluate feature-attribution methods for image classifiers.

From Python (see README, "Use from Python"):

* `attrflow.explain(model, x, target, method, **params)` — maps of any registered method for
  any `torch.nn.Module`;
* `attrflow.score(model, x, maps, metric, target=..., **params)` — one metric per sample;
* `attrflow.compare(model, x, target, methods=[...], metrics=[...])` — the scores table and the
  evidence a workflow run would report for those samples;
* `attrflow.open_results("results/")` — a run's scores (DuckDB/pandas), maps (Zarr) and provenance;
* `attrflow.wrap(model, mean=..., std=...)` — say once how the network normalises its input;
* `attrflow.bind(model, method, **params)` — a method bound to a model (`attrflow.explainer.Explainer`).

The package root imports nothing heavy: the Snakefile imports `attrflow.catalog` and
`attrflow.config` while it plans the DAG, and those must not pay for importing torch. The names
above are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from attrflow.api import Comparison, Explanation, bind, compare, explain, open_results, score, wrap
    from attrflow.explainer import Explainer

# name → module that defines it, imported when the name is first used.
_LAZY = {
    "Comparison": "attrflow.api",
    "Explanation": "attrflow.api",
    "compare": "attrflow.api",
    "explain": "attrflow.api",
    "bind": "attrflow.api",
    "open_results": "attrflow.api",
    "score": "attrflow.api",
    "wrap": "attrflow.api",
    "Explainer": "attrflow.explainer",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attrflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
