"""Contrastive stages: NT-Xent and the local supervised loss against hand loops, views, heads, features."""

from __future__ import annotations

import math

import pytest
import torch

from segtune.core.models.unet import UNet
from segtune.core.train.contrastive import (
    PixelProjectionHead,
    ProjectionHead,
    ViewConfig,
    encode,
    local_supervised_contrastive_loss,
    nt_xent_loss,
    simclr_views,
    unet_features,
)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(a * a for a in v))
    return [a / norm for a in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_nt_xent_matches_a_hand_computation() -> None:
    z1 = [[1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [0.0, 0.3, -2.0]]
    z2 = [[0.9, 2.2, 0.1], [1.0, -0.5, 0.5], [-0.2, 0.1, -1.0]]
    t = 0.5
    vectors = [_unit(v) for v in z1 + z2]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(_dot(vectors[i], vectors[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_dot(vectors[i], vectors[j]) / t) / denominator)
    expected = total / (2 * n)
    loss = nt_xent_loss(torch.tensor(z1, dtype=torch.float64), torch.tensor(z2, dtype=torch.float64), temperature=t)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # the views' scale does not matter (embeddings are normalised); swapping views does not either
    scaled = nt_xent_loss(
        3 * torch.tensor(z1, dtype=torch.float64), torch.tensor(z2, dtype=torch.float64), temperature=t
    )
    swapped = nt_xent_loss(torch.tensor(z2, dtype=torch.float64), torch.tensor(z1, dtype=torch.float64), temperature=t)
    assert float(scaled) == pytest.approx(expected) and float(swapped) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2 images"):
        nt_xent_loss(torch.ones(1, 3), torch.ones(1, 3))


def _local_loss_by_hand(embeddings, labels, valid, block, t, background):
    """Pure-python loops over blocks, anchors, positives (the formula of the docstring)."""
    n, d, h, w = embeddings.shape
    terms = []
    for b in range(n):
        for by in range(h // block):
            for bx in range(w // block):
                pixels = [(by * block + y, bx * block + x) for y in range(block) for x in range(block)]
                pixels = [p for p in pixels if valid[b][p[0]][p[1]]]
                z = {p: _unit([float(embeddings[b, c, p[0], p[1]]) for c in range(d)]) for p in pixels}
                for i in pixels:
                    yi = int(labels[b, i[0], i[1]])
                    if background is not None and yi == background:
                        continue
                    others = [a for a in pixels if a != i]
                    positives = [p for p in others if int(labels[b, p[0], p[1]]) == yi]
                    if not positives:
                        continue
                    log_denominator = math.log(sum(math.exp(_dot(z[i], z[a]) / t) for a in others))
                    terms.append(-sum(_dot(z[i], z[p]) / t - log_denominator for p in positives) / len(positives))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("background", [0, None])
def test_local_contrastive_matches_hand_loops(background) -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 3, 6, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 4), generator=generator)
    valid = torch.rand(2, 6, 4, generator=generator) > 0.2
    loss = local_supervised_contrastive_loss(
        embeddings, labels, block_size=2, temperature=0.07, background=background, valid=valid
    )
    expected = _local_loss_by_hand(embeddings, labels, valid.tolist(), 2, 0.07, background)
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_local_contrastive_never_anchors_background() -> None:
    # block of 4: two background pixels close together, two foreground pixels of different classes
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]], dtype=torch.float64).T.reshape(
        1, 2, 2, 2
    )
    labels = torch.tensor([[[0, 0], [1, 2]]])
    # the only pixels with a positive are background ones: no anchors, loss 0 (with a gradient)
    embeddings.requires_grad_(True)
    loss = local_supervised_contrastive_loss(embeddings, labels, block_size=2, temperature=0.07)
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))
    # with background allowed as anchor the same batch has a loss
    assert (
        float(local_supervised_contrastive_loss(embeddings, labels, block_size=2, temperature=0.07, background=None))
        > 0
    )
    # and background pixels do act as negatives: moving one changes a foreground anchor's loss
    labels2 = torch.tensor([[[0, 1], [1, 2]]])
    base = float(local_supervised_contrastive_loss(embeddings, labels2, block_size=2))
    moved = embeddings.detach().clone()
    moved[0, :, 0, 0] = torch.tensor([0.0, 1.0])
    assert float(local_supervised_contrastive_loss(moved, labels2, block_size=2)) != pytest.approx(base)


def test_local_contrastive_pixels_interact_only_within_their_block() -> None:
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(1, 4, 4, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (1, 4, 8), generator=generator)
    whole = local_supervised_contrastive_loss(embeddings, labels, block_size=4)
    parts, counts = [], []
    for x in (0, 4):
        e, y = embeddings[..., x : x + 4], labels[..., x : x + 4]
        parts.append(float(local_supervised_contrastive_loss(e, y, block_size=4)))
        n_foreground = int((y == 1).sum())  # each is an anchor when it has a partner in the block
        counts.append(n_foreground if n_foreground > 1 else 0)
    assert float(whole) == pytest.approx(sum(p * c for p, c in zip(parts, counts, strict=True)) / sum(counts))
    # a 3D map works too, and a partial block at the edge is cropped away
    volume = torch.randn(1, 2, 4, 4, 5, generator=generator)
    assert local_supervised_contrastive_loss(volume, torch.ones(1, 4, 4, 5, dtype=torch.long), block_size=4) > 0


def test_simclr_views_identity_and_salt_and_pepper() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32, generator=generator)
    off = ViewConfig(translate=0.0, zoom=(1.0, 1.0), p=0.0)
    a, b = simclr_views(x, off, generator=generator)
    torch.testing.assert_close(a, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, x, atol=1e-5, rtol=0)
    # only salt-and-pepper can change pixels here (no blur width, no noise, no brightness change)
    only_noise = ViewConfig(
        translate=0.0,
        zoom=(1.0, 1.0),
        brightness=0.0,
        contrast=(1.0, 1.0),
        blur_sigma=(0.01, 0.01),
        noise_std=(0.0, 0.0),
        salt_pepper=0.1,
        p=1.0,
    )
    views = torch.cat(simclr_views(x.repeat(4, 1, 1, 1), only_noise, generator=generator))
    original = x.repeat(8, 1, 1, 1)
    changed = (views - original).abs() > 1e-5
    assert changed.any()
    low, high = float(x.min()), float(x.max())
    values = views[changed]
    assert bool(((values == low) | (values == high)).all())
    per_image = changed.flatten(1).float().mean(1)
    salted = per_image[per_image > 0]
    assert 0.07 < float(salted.mean()) < 0.13 and 0 < len(salted) < len(per_image)


def test_simclr_views_differ_and_are_reproducible() -> None:
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = simclr_views(x, generator=torch.Generator().manual_seed(5))
    assert a.shape == b.shape == x.shape
    assert not torch.allclose(a, b) and not torch.allclose(a, x)
    a2, _ = simclr_views(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, a2)
    with pytest.raises(ValueError, match="2D batches"):
        simclr_views(torch.rand(1, 1, 4, 8, 8))


def test_heads_and_features_of_a_unet() -> None:
    torch.manual_seed(0)
    unet = UNet(depth=2, base_channels=4).eval()
    x = torch.rand(3, 1, 32, 32)
    bottleneck = encode(unet, x)
    assert bottleneck.shape == (3, 16, 8, 8)
    projection = ProjectionHead(16)(bottleneck)
    assert projection.shape == (3, 256)
    features = unet_features(unet, x)
    assert features.shape == (3, 4, 32, 32)
    # the hook captures exactly what the U-Net's own head sees
    torch.testing.assert_close(unet.head(features), unet(x))
    odd = torch.rand(1, 1, 30, 27)
    assert unet_features(unet, odd).shape == (1, 4, 30, 27)
    assert PixelProjectionHead(4, out_dim=8)(features).shape == (3, 8, 32, 32)
