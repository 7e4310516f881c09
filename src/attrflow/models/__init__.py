"""Models: loading, wrapping, small trainable networks and X-DNN conversion."""

from attrflow.models.wrapper import WrappedModel

__all__ = ["WrappedModel"]
