"""Models: loading, wrapping, small trainable networks and X-DNN conversion.

`WrappedModel` is imported on first use (PEP 562), so that planning can import
`attrflow.models.checkpoint_check` without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attrflow.models.wrapper import WrappedModel

__all__ = ["WrappedModel"]


def __getattr__(name: str) -> Any:
    if name == "WrappedModel":
        from attrflow.models.wrapper import WrappedModel

        return WrappedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
