"""Metrics. As with methods, `get_metric` imports only the module that defines a function."""

from __future__ import annotations

from attrflow.metrics.base import (
    METRICS,
    MetricInfo,
    MetricInputs,
    MetricOutput,
    call_metric,
    register_metric,
)
from attrflow.catalog import check_current
from attrflow.registry import import_registered


def get_metric(fn: str) -> MetricInfo:
    import_registered("metrics", fn)
    info = METRICS.get(fn)
    check_current("metrics", info)
    return info


def load_all() -> list[str]:
    import_registered("metrics")
    return list(METRICS)


__all__ = [
    "METRICS",
    "MetricInfo",
    "MetricInputs",
    "MetricOutput",
    "call_metric",
    "get_metric",
    "load_all",
    "register_metric",
]
