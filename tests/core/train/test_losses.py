"""Losses against hand-computed values, SSIM against scikit-image, sums parsed from the CLI form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from segtune.core.train.losses import (
    bce_loss,
    dice_loss,
    focal_loss,
    iou_loss,
    mae_loss,
    parse_loss,
    ssim,
    ssim_loss,
)

# two pixels: p = sigmoid(logit) = (0.5, 0.75), target = (1, 0)
LOGITS = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
TARGET = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)


def test_bce_hand_value():
    assert bce_loss(LOGITS, TARGET).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_dice_hand_value_with_smoothing():
    # intersection 0.5, sum(p) 1.25, sum(t) 1, smooth 1
    assert dice_loss(LOGITS, TARGET).item() == pytest.approx(1 - 2.0 / 3.25)
    assert dice_loss(LOGITS, TARGET, smooth=0.0).item() == pytest.approx(1 - 1.0 / 2.25)


def test_iou_hand_value():
    assert iou_loss(LOGITS, TARGET).item() == pytest.approx(1 - 1.5 / 2.75)


def test_focal_hand_value():
    # p_t = (0.5, 0.25); alpha_t = 0.5 both; gamma 2
    expected = (0.5 * 0.5**2 * math.log(2) + 0.5 * 0.75**2 * math.log(4)) / 2
    assert focal_loss(LOGITS, TARGET).item() == pytest.approx(expected)
    # gamma 0, alpha 0.5 is half the BCE
    assert focal_loss(LOGITS, TARGET, gamma=0.0).item() == pytest.approx(bce_loss(LOGITS, TARGET).item() / 2)


def test_mae_hand_value():
    assert mae_loss(LOGITS, TARGET).item() == pytest.approx((0.5 + 0.75) / 2)


def test_valid_mask_excludes_pixels():
    valid = torch.tensor([1.0, 0.0]).reshape(1, 1, 2)
    assert bce_loss(LOGITS, TARGET, valid).item() == pytest.approx(math.log(2))
    assert focal_loss(LOGITS, TARGET, valid).item() == pytest.approx(0.5 * 0.25 * math.log(2))
    assert dice_loss(LOGITS, TARGET, valid).item() == pytest.approx(1 - 2.0 / 2.5)
    assert mae_loss(LOGITS, TARGET, valid).item() == pytest.approx(0.5)


def test_multiclass_hand_values():
    # one pixel of each class; logits give softmax rows known in closed form
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [0.0, 0.0, math.log(6.0)]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([0, 1, 2]).reshape(1, 1, 3)
    # p(true class): 1/3, 2/4, 6/8
    expected_ce = -(math.log(1 / 3) + math.log(0.5) + math.log(0.75)) / 3
    assert bce_loss(logits, target, head="three_class").item() == pytest.approx(expected_ce)
    assert parse_loss("ce", "semantic")(logits, target).item() == pytest.approx(expected_ce)
    # dice over classes 1 and 2 (class 0 is background)
    probs = torch.softmax(logits, 1)[0, :, 0]  # (3 classes, 3 pixels)
    dice = []
    for k in (1, 2):
        inter = probs[k, k].item()
        dice.append(1 - (2 * inter + 1) / (probs[k].sum().item() + 1 + 1))
    assert dice_loss(logits, target, head="three_class").item() == pytest.approx(sum(dice) / 2)
    # focal: alpha 0.5 on every class
    pt = torch.tensor([1 / 3, 0.5, 0.75])
    expected_focal = (-0.5 * (1 - pt) ** 2 * pt.log()).mean().item()
    assert focal_loss(logits, target, head="three_class").item() == pytest.approx(expected_focal)


def test_multiclass_ignore_value_under_invalid_pixels():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    valid = torch.ones(2, 8, 8)
    valid[:, :4] = 0
    target_with_ignore = target.clone()
    target_with_ignore[:, :4] = 255
    for name in ("bce", "dice", "focal", "iou", "mae"):
        loss = parse_loss(name, "three_class")
        assert loss(logits, target_with_ignore, valid).item() == pytest.approx(
            loss(logits[:, :, 4:], target[:, 4:]).item(), rel=1e-5
        ), name


@pytest.mark.parametrize("shape", [(32, 40), (12, 20, 24)])
def test_ssim_matches_skimage(shape):
    rng = np.random.default_rng(0)
    a = rng.random(shape).astype(np.float64)
    b = np.clip(a + 0.3 * rng.standard_normal(shape), 0, 1)
    expected = structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    got = ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]).item()
    assert got == pytest.approx(expected, abs=1e-10)


def test_ssim_loss_and_sums():
    x = torch.randn(2, 1, 24, 24)
    perfect = (x > 0).float()
    confident = (perfect * 2 - 1) * 50  # logits whose sigmoid is the target
    assert ssim_loss(confident, perfect).item() == pytest.approx(0.0, abs=1e-4)
    probs = torch.sigmoid(x)
    assert ssim_loss(x, perfect).item() == pytest.approx(1 - ssim(probs, perfect).item(), abs=1e-6)
    combined = parse_loss("ssim+mae")(x, perfect)
    assert combined.item() == pytest.approx(ssim_loss(x, perfect).item() + mae_loss(x, perfect).item(), rel=1e-6)
    weighted = parse_loss("0.5*bce + 2*dice")(x, perfect)
    assert weighted.item() == pytest.approx(
        0.5 * bce_loss(x, perfect).item() + 2 * dice_loss(x, perfect).item(), rel=1e-6
    )


def test_ssim_valid_mask_drops_touched_windows():
    x = torch.rand(1, 1, 30, 30)
    y = x.clone()
    y[..., 25:, :] = 1 - y[..., 25:, :]  # damage the bottom rows only
    valid = torch.ones(1, 1, 30, 30)
    valid[..., 14:, :] = 0  # windows below row 14 - 5 are dropped
    assert ssim(x, y, weight=valid).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, y).item() < 0.99


def test_losses_are_differentiable_and_decrease():
    torch.manual_seed(0)
    target = (torch.rand(1, 1, 16, 16) > 0.5).float()
    for spec in ("bce+dice", "focal", "ssim+dice", "iou", "ssim+mae"):
        logits = torch.zeros(1, 1, 16, 16, requires_grad=True)
        loss_fn = parse_loss(spec)
        first = loss_fn(logits, target).item()
        optimizer = torch.optim.SGD([logits], lr=5.0)
        for _ in range(20):
            optimizer.zero_grad()
            loss_fn(logits, target).backward()
            optimizer.step()
        assert loss_fn(logits, target).item() < first, spec


def test_parse_errors_name_the_term():
    with pytest.raises(ValueError, match="'dcie' is not a known loss"):
        parse_loss("bce+dcie")
    with pytest.raises(ValueError, match="head must be"):
        parse_loss("bce", head="multi")
    assert parse_loss("BCE + Jaccard").spec == "bce+iou"


def test_shape_errors():
    with pytest.raises(ValueError, match="binary head has 1 output channel"):
        bce_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
