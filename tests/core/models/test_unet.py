"""The U-Net: 2D/3D shapes, odd sizes, every option, He initialisation, config round-trip."""

from __future__ import annotations

import math

import pytest
import torch

from segtune.core.models.unet import UNet, build_model, default_architecture


@pytest.mark.parametrize("shape", [(32, 32), (37, 50), (1, 9), (64, 17)])
def test_2d_output_shape_matches_input_for_any_size(shape):
    model = UNet(spatial_dims=2, in_channels=2, out_channels=3, depth=3, base_channels=4)
    out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)


@pytest.mark.parametrize("shape", [(8, 16, 16), (5, 13, 22)])
def test_3d_output_shape_matches_input_for_any_size(shape):
    model = UNet(spatial_dims=3, in_channels=1, out_channels=1, depth=2, base_channels=4)
    out = model(torch.randn(1, 1, *shape))
    assert out.shape == (1, 1, *shape)


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_norm_and_upsampling_trains_one_step(norm, upsample, spatial_dims):
    torch.manual_seed(0)
    model = UNet(spatial_dims, 1, 2, depth=2, base_channels=4, norm=norm, upsample=upsample, dropout=0.2)
    x = torch.randn(2, 1, *([8] * spatial_dims))
    loss = model(x).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_depth_zero_is_a_plain_conv_net():
    model = UNet(2, 1, 1, depth=0, base_channels=4)
    assert model(torch.zeros(1, 1, 5, 7)).shape == (1, 1, 5, 7)


def test_widths_double_per_level():
    model = UNet(2, 1, 1, depth=3, base_channels=8)
    widths = [block[0].out_channels for block in model.encoder]
    assert widths == [8, 16, 32, 64]


def test_he_initialisation_variance():
    torch.manual_seed(0)
    model = UNet(2, 1, 1, depth=2, base_channels=32)
    conv = model.encoder[1][0]  # 32 -> 64 channels, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert conv.bias is None  # followed by a norm
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))


def test_encoder_parameters_are_the_contracting_path():
    model = UNet(2, 1, 1, depth=2, base_channels=4)
    encoder = {id(p) for p in model.encoder_parameters()}
    assert encoder and encoder < {id(p) for p in model.parameters()}
    assert id(model.head.weight) not in encoder


def test_build_model_round_trips_the_architecture():
    model = UNet(3, 2, 4, depth=2, base_channels=6, norm="group", dropout=0.1, upsample="resize")
    rebuilt = build_model(model.architecture)
    assert rebuilt.architecture == model.architecture
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_build_model_defaults_and_errors():
    assert build_model({"spatial_dims": 2}).architecture == default_architecture()
    with pytest.raises(ValueError, match="unknown architecture keys"):
        build_model({"spatial_dims": 2, "widht": 3})
    with pytest.raises(ValueError, match="name 'resnet'"):
        build_model({"name": "resnet"})
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        UNet(spatial_dims=1)


def test_wrong_input_is_reported_clearly():
    model = UNet(2, 1, 1, depth=1, base_channels=4)
    with pytest.raises(ValueError, match="expects 1 input channel"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="2D U-Net"):
        model(torch.zeros(1, 1, 4, 8, 8))
