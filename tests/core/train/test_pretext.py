"""Restoration pretext and Noise2Noise: corruptions against scipy/skimage, SSIM loss, pairs, encoder transfer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.filters import sobel as skimage_sobel
from skimage.metrics import structural_similarity

from segtune.core.models.unet import UNet
from segtune.core.train.pretext import (
    CorruptionConfig,
    corrupt,
    denoise,
    gaussian_blur,
    n2n_pairs,
    restoration_loss,
    sobel,
    transfer_encoder,
)


@pytest.fixture(scope="module")
def membrane_crops(membranes_dir: Path) -> torch.Tensor:
    """Four real 48x48 TEM crops, scaled to [0, 1]: (4, 1, 48, 48)."""
    from segtune.core.io import open_image

    image = np.asarray(open_image(membranes_dir / "images" / "0.png").data[0, 0, 0], dtype=np.float32) / 255
    crops = [image[y : y + 48, x : x + 48] for y, x in [(0, 0), (100, 200), (300, 64), (450, 450)]]
    return torch.from_numpy(np.stack(crops)[:, None].copy())


def test_blur_equals_scipy_gaussian_filter_2d_and_3d(membrane_crops: torch.Tensor) -> None:
    blurred = gaussian_blur(membrane_crops.double(), 2.0).numpy()
    for i in range(4):
        expected = ndi.gaussian_filter(membrane_crops[i, 0].double().numpy(), 2.0, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(blurred[i, 0], expected, atol=1e-10)
    volume = torch.rand(1, 2, 12, 16, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = ndi.gaussian_filter(volume[0, 1].numpy(), 1.2, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(volume, 1.2)[0, 1].numpy(), expected, atol=1e-10)


def test_sobel_equals_skimage(membrane_crops: torch.Tensor) -> None:
    result = sobel(membrane_crops.double()).numpy()
    for i in range(4):
        np.testing.assert_allclose(
            result[i, 0], skimage_sobel(membrane_crops[i, 0].double().numpy(), mode="mirror"), atol=1e-10
        )
    volume = torch.rand(1, 1, 8, 9, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(
        sobel(volume)[0, 0].numpy(), skimage_sobel(volume[0, 0].numpy(), mode="mirror"), atol=1e-10
    )


def test_corrupt_applies_the_named_corruption_to_each_image(membrane_crops: torch.Tensor) -> None:
    x = membrane_crops.repeat(4, 1, 1, 1)  # 16 images: every kind is drawn
    config = CorruptionConfig(noise_std=0.2)
    y, applied = corrupt(x, config, generator=torch.Generator().manual_seed(0))
    assert set(applied) == {"drop", "blur", "sobel", "noise"}
    for i, kind in enumerate(applied):
        xi, yi = x[i : i + 1], y[i : i + 1]
        if kind == "blur":
            torch.testing.assert_close(yi, gaussian_blur(xi, 2.0))
        elif kind == "sobel":
            torch.testing.assert_close(yi, sobel(xi))
        elif kind == "drop":
            dropped = yi == 0
            assert torch.equal(yi[~dropped], xi[~dropped])
            assert 0.2 < float((dropped & (xi != 0)).float().mean()) < 0.3
        else:
            residual = (yi - xi).flatten()
            assert abs(float(residual.std()) - 0.2) < 0.02 and abs(float(residual.mean())) < 0.02
    # the same seed corrupts the same way; "all" chains the kinds in order
    y2, applied2 = corrupt(x, config, generator=torch.Generator().manual_seed(0))
    assert applied2 == applied and torch.equal(y, y2)
    chained, names = corrupt(x[:2], CorruptionConfig(kinds=("blur", "sobel"), mode="all"))
    assert names == ["blur+sobel"] * 2
    torch.testing.assert_close(chained, sobel(gaussian_blur(x[:2], 2.0)))
    with pytest.raises(ValueError, match="unknown corruption"):
        CorruptionConfig(kinds=("rotate",))


def test_restoration_loss_against_skimage_ssim(membrane_crops: torch.Tensor) -> None:
    target = membrane_crops[:1].double()
    output = gaussian_blur(target, 1.0)
    expected_ssim = structural_similarity(
        output[0, 0].numpy(),
        target[0, 0].numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    ours = 1 - float(restoration_loss(output, target, "ssim"))
    assert ours == pytest.approx(expected_ssim, abs=1e-9)
    l1 = float((output - target).abs().mean())
    assert float(restoration_loss(output, target, "ssim+l1")) == pytest.approx(1 - ours + l1, abs=1e-9)
    assert float(restoration_loss(target, target, "ssim+l1")) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="restoration loss"):
        restoration_loss(output, target, "mse")


def test_n2n_pairs() -> None:
    assert n2n_pairs(4) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert n2n_pairs(3, both_directions=False) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="at least 2 z-slices"):
        n2n_pairs(1)


def test_transfer_encoder_copies_freezes_and_leaves_the_decoder() -> None:
    torch.manual_seed(0)
    source = UNet(depth=2, base_channels=4)
    destination = UNet(depth=2, base_channels=4, out_channels=3)
    decoder_before = {k: v.clone() for k, v in destination.state_dict().items() if not k.startswith("encoder.")}
    copied = transfer_encoder(source, destination, freeze=True)
    assert copied and all(k.startswith("encoder.") for k in copied)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(destination.encoder.state_dict()[key], value)
    for key, value in destination.state_dict().items():
        if not key.startswith("encoder."):
            assert torch.equal(value, decoder_before[key])
    # one optimiser step moves the decoder, not the frozen encoder
    encoder_before = [p.clone() for p in destination.encoder.parameters()]
    optimizer = torch.optim.SGD([p for p in destination.parameters() if p.requires_grad], lr=0.1)
    destination(torch.rand(2, 1, 16, 16)).sum().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, destination.encoder.parameters(), strict=True))
    assert not torch.equal(destination.head.weight, decoder_before["head.weight"])
    # a deeper destination takes the levels the source has
    deeper = UNet(depth=3, base_channels=4)
    assert len(transfer_encoder(source, deeper)) == len(source.encoder.state_dict())
    with pytest.raises(ValueError, match="encoders do not match"):
        transfer_encoder(source, UNet(depth=2, base_channels=4, in_channels=2))


def test_denoise_round_trips_intensities_through_an_identity_model(membrane_crops: torch.Tensor) -> None:
    class Identity(torch.nn.Module):
        in_channels = 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    stack = (membrane_crops[:, 0].numpy() * 4000 + 100).astype(np.uint16)  # (Z, Y, X) uint16
    out = denoise(Identity(), stack)
    assert out.shape == stack.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, stack.astype(np.float32), rtol=1e-5, atol=1e-2)
