"""Layer names that layer-level methods accept: default, stage1..stage4, module paths."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from attrflow.models import WrappedModel
from attrflow.models.layers import resolve_layer, stage_layers, tokens_to_grid
from attrflow.models.architectures import default_cam_layer
from attrflow.models.small_cnn import SmallCNN


def test_stages_of_the_small_cnn_are_its_four_blocks():
    assert stage_layers(SmallCNN(4, width=2)) == ["features.0", "features.1", "features.2", "features.3"]


def test_stages_of_a_resnet_are_layer1_to_layer4():
    assert stage_layers(timm.create_model("resnet18", pretrained=False)) == ["layer1", "layer2", "layer3", "layer4"]


def test_vit_stages_end_on_the_last_blocks_input_norm_where_patch_tokens_still_matter():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=8, img_size=32)
    assert stage_layers(vit) == ["blocks.1", "blocks.3", "blocks.5", "blocks.7.norm1"]
    assert default_cam_layer(vit) == "blocks.7.norm1"


def test_other_cnns_use_the_last_convolution_of_each_quarter():
    net = nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(8)])
    assert stage_layers(net) == ["1", "3", "5", "7"]
    with pytest.raises(ValueError, match="at least 4"):
        stage_layers(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_resolve_layer_accepts_default_stage_and_path_and_names_a_bad_one():
    model = WrappedModel(SmallCNN(4, width=2), num_classes=4, cam_layer="features.3")
    assert resolve_layer(model, "default")[0] == "features.3"
    assert resolve_layer(model, "stage2")[0] == "features.1"
    assert resolve_layer(model, "features.2.0")[1] is model.net.features[2][0]
    with pytest.raises(ValueError, match="'layer9'.*features, pool"):
        resolve_layer(model, "layer9")


def test_tokens_to_grid_drops_prefix_tokens_and_keeps_patch_order():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class + 2×2 patches
    grid = tokens_to_grid(tokens, num_prefix=1)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[0, :, 0, 1], tokens[0, 2])  # patch 1 is row 0, column 1
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.zeros(1, 4, 3), num_prefix=1)
