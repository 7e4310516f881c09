"""Attribution methods.

Importing this package registers nothing by itself: `get_method` imports just the module that
defines the requested function (found by `attrflow.catalog`), so a job that runs plain gradients
never pays for importing captum. `load_all` imports every module, for tests and docs.
"""

from __future__ import annotations

from attrflow.methods._batching import differentiable_maps
from attrflow.methods.base import (
    METHODS,
    Attribution,
    MapsNotDifferentiable,
    MethodInfo,
    MethodNotApplicable,
    call_method,
    reduce_channels,
    register_method,
)
from attrflow.catalog import check_current
from attrflow.registry import import_registered


def get_method(fn: str) -> MethodInfo:
    import_registered("methods", fn)
    info = METHODS.get(fn)
    check_current("methods", info)
    return info


def load_all() -> list[str]:
    import_registered("methods")
    return list(METHODS)


__all__ = [
    "METHODS",
    "Attribution",
    "MapsNotDifferentiable",
    "MethodInfo",
    "MethodNotApplicable",
    "call_method",
    "differentiable_maps",
    "get_method",
    "load_all",
    "reduce_channels",
    "register_method",
]
