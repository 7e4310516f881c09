"""Models: one module per job.

* `preparation` — `prepare_model`: the model a config entry names, trained here or loaded;
* `training` — the deterministic training loop of the networks attrflow trains itself;
* `cards` — the model directory: `model_card`, `save_model`, `read_card`, `load_model`;
* `checkpoints` — reading weight files safely (`read_state_dict`, `load_weights_into`);
* `checkpoint_check` — a checkpoint's header against its architecture, at planning time;
* `architectures` — networks by name (`build_architecture`, `trainable_network`, CAM layers);
* `hub` — pretrained timm and torchvision networks from the local caches;
* `normalisation` — training statistics and `wrap_network`, which makes a `WrappedModel`;
* `wrapper`, `small_cnn`, `preact_resnet`, `xdnn`, `layers` — the building blocks.

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
