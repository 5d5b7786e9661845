"""Tests of segtune.core.metrics: hand-computed cases and an independent brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from segtune.core.metrics import (
    DEFAULT_THRESHOLDS,
    count_objects,
    evaluate,
    evaluate_many,
    matched_metrics,
    object_metrics,
    overlay,
    pixel_metrics,
    save_overlay_png,
    to_instances,
)

# --- pixel -----------------------------------------------------------------------------------


def test_pixel_counts_and_ratios():
    pred = np.array([[1, 1, 0, 0]])
    truth = np.array([[0, 1, 1, 0]])
    m = pixel_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["accuracy"] == 0.5


def test_pixel_instance_and_binary_inputs_use_foreground():
    truth = np.zeros((6, 6), np.uint8)
    truth[1:4, 1:4] = 255  # a 0/255 PNG mask
    pred = np.zeros((6, 6), np.uint16)
    pred[1:3, 1:4] = 7  # two instances covering the mask rows 1..3 plus one extra row
    pred[3:5, 1:4] = 70000 % 65536
    m = pixel_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (9, 3, 0)
    assert m["precision"] == 0.75 and m["recall"] == 1.0
    assert m == pixel_metrics(pred > 0, truth == 255)


def test_pixel_multiclass_per_class():
    truth = np.array([[0, 1, 1, 2], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 2, 2], [2, 1, 0, 1]])
    m = pixel_metrics(pred, truth, classes=4)
    assert m["accuracy"] == 5 / 8
    c0, c1, c2, c3 = (m["classes"][k] for k in "0123")
    assert (c0["tp"], c0["fp"], c0["fn"]) == (2, 0, 1)
    assert c0["precision"] == 1.0 and c0["recall"] == pytest.approx(2 / 3)
    assert c0["f1"] == pytest.approx(0.8) and c0["iou"] == pytest.approx(2 / 3)
    assert c0["accuracy"] == 7 / 8
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 2, 1)
    assert c1["precision"] == pytest.approx(1 / 3) and c1["recall"] == 0.5
    assert c1["f1"] == pytest.approx(0.4) and c1["iou"] == 0.25
    assert (c2["tp"], c2["fp"], c2["fn"]) == (2, 1, 1)
    assert c2["f1"] == pytest.approx(2 / 3) and c2["iou"] == 0.5
    # a class absent from both is perfect by the both-empty convention
    assert c3["f1"] == 1.0 and c3["iou"] == 1.0 and c3["tp"] == 0
    assert m["mean"]["f1"] == pytest.approx((0.8 + 0.4 + 2 / 3 + 1.0) / 4)

    only = pixel_metrics(pred, truth, classes=[2, 1])
    assert list(only["classes"]) == ["2", "1"]
    assert only["classes"]["1"] == c1 and only["classes"]["2"] == c2
    assert only["accuracy"] == 3 / 8  # class-0 agreement is not counted among the classes asked for


def test_pixel_3d_and_4d_inputs():
    truth = np.zeros((2, 3, 4, 4), bool)
    truth[0, 1, 1:3, 1:3] = True
    pred = truth.copy()
    pred[1, 0, 0, 0] = True
    m = pixel_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 1, 0)


# --- empty conventions -----------------------------------------------------------------------


def _square(shape=(10, 10), where=(slice(2, 5), slice(2, 5))):
    mask = np.zeros(shape, np.uint8)
    mask[where] = 1
    return mask


def test_empty_truth():
    r = evaluate(_square(), np.zeros((10, 10), np.uint8))
    for section in ("pixel", "object"):
        assert r[section]["precision"] == 0.0 and r[section]["recall"] == 0.0
        assert r[section]["f1"] == 0.0 and r[section]["iou"] == 0.0
    assert r["pixel"]["accuracy"] == 91 / 100
    assert (r["object"]["tp"], r["object"]["fp"], r["object"]["fn"]) == (0, 1, 0)
    matched = r["matched"]
    assert matched["f1_at_0.5"] == 0.0 and matched["ap_at_0.5"] == 0.0
    assert matched["mean_iou_matched"] == 0.0 and matched["pq"] == 0.0
    assert matched["thresholds"]["0.5"]["fp"] == 1 and matched["thresholds"]["0.5"]["fn"] == 0


def test_empty_prediction():
    r = evaluate(np.zeros((10, 10), bool), _square())
    for section in ("pixel", "object"):
        assert r[section]["precision"] == 0.0 and r[section]["recall"] == 0.0 and r[section]["f1"] == 0.0
    assert (r["object"]["tp"], r["object"]["fp"], r["object"]["fn"]) == (0, 0, 1)
    assert r["matched"]["f1_at_0.5"] == 0.0 and r["matched"]["thresholds"]["0.95"]["fn"] == 1


def test_both_empty_is_perfect():
    empty = np.zeros((5, 7), np.uint16)
    r = evaluate(empty, empty)
    for key in ("precision", "recall", "f1", "iou", "accuracy"):
        assert r["pixel"][key] == 1.0
    for key in ("precision", "recall", "f1", "iou"):
        assert r["object"][key] == 1.0
    m = r["matched"]
    assert m["f1_at_0.5"] == m["ap_at_0.5"] == m["mean_iou_matched"] == m["pq"] == 1.0
    assert all(v["f1"] == 1.0 and v["tp"] == 0 for v in m["thresholds"].values())


# --- split, merge, touching, 3D --------------------------------------------------------------


def test_one_object_split_in_two():
    truth = np.zeros((8, 12), np.uint8)
    truth[2:6, 2:10] = 255  # 32 px
    pred = np.zeros((8, 12), bool)
    pred[2:6, 2:6] = True  # 16 px
    pred[2:6, 7:10] = True  # 12 px, separated by column 6
    r = evaluate(pred, truth)
    assert (r["pixel"]["tp"], r["pixel"]["fp"], r["pixel"]["fn"]) == (28, 0, 4)
    obj = r["object"]
    assert (obj["tp"], obj["tp_pred"], obj["fp"], obj["fn"], obj["n_truth"], obj["n_pred"]) == (1, 2, 0, 0, 1, 2)
    assert obj["precision"] == obj["recall"] == obj["f1"] == obj["iou"] == 1.0
    m = r["matched"]
    at = m["thresholds"]["0.5"]
    assert (at["tp"], at["fp"], at["fn"]) == (1, 1, 0)  # IoU 16/32 = 0.5 matches, 12/32 does not
    assert m["f1_at_0.5"] == pytest.approx(2 / 3)
    assert m["ap_at_0.5"] == pytest.approx(0.5)
    assert m["mean_iou_matched"] == pytest.approx(0.5)
    assert m["pq"] == pytest.approx(0.5 / 1.5)
    above = m["thresholds"]["0.55"]
    assert (above["tp"], above["fp"], above["fn"], above["f1"]) == (0, 2, 1, 0.0)


def test_two_objects_merged_into_one():
    truth = np.zeros((8, 12), np.uint16)
    truth[2:6, 2:6] = 1  # 16 px
    truth[2:6, 7:11] = 2  # 16 px
    pred = np.zeros((8, 12), np.uint8)
    pred[2:6, 2:10] = 1  # 32 px bridging both
    r = evaluate(pred, truth)
    assert (r["pixel"]["tp"], r["pixel"]["fp"], r["pixel"]["fn"]) == (28, 4, 4)
    obj = r["object"]
    assert (obj["tp"], obj["tp_pred"], obj["fp"], obj["fn"]) == (2, 1, 0, 0)
    assert obj["f1"] == 1.0
    m = r["matched"]
    at = m["thresholds"]["0.5"]
    assert (at["tp"], at["fp"], at["fn"]) == (1, 0, 1)  # IoU 16/32 and 12/36
    assert m["f1_at_0.5"] == pytest.approx(2 / 3) and m["ap_at_0.5"] == pytest.approx(0.5)
    assert m["mean_iou_matched"] == pytest.approx(0.5) and m["pq"] == pytest.approx(1 / 3)


def test_object_level_uses_connected_components_of_the_binary_masks():
    truth = np.zeros((6, 8), np.uint16)
    truth[1:4, 1:4] = 1
    truth[1:4, 4:7] = 2  # touching instance: one connected component
    truth[5, 0] = 3
    pred = truth.copy()
    pred[5, 0] = 0
    pred[4, 7] = 9  # touches instance 2 only at a corner: joins it (8-connectivity)
    obj = object_metrics(pred, truth)
    assert (obj["n_truth"], obj["n_pred"], obj["tp"], obj["fp"], obj["fn"]) == (2, 1, 1, 0, 1)
    # matched metrics keep the instance ids of an instance image
    matched = matched_metrics(pred, truth)
    assert matched["n_truth"] == 3 and matched["n_pred"] == 3
    assert matched["thresholds"]["0.5"]["tp"] == 2


def test_diagonal_pixels_are_one_object():
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8)
    labels, n = to_instances(mask)
    assert n == 1 and set(np.unique(labels)) == {0, 1}


def test_binary_or_instance_rule():
    two_pieces = np.zeros((4, 8), np.uint16)
    two_pieces[1:3, 0:2] = 1
    two_pieces[1:3, 5:7] = 1
    for value, n in ((1, 2), (255, 2), (65535, 2), (7, 1)):
        assert to_instances(two_pieces * value)[1] == n, value  # mask values split; an id stays one
    assert to_instances(two_pieces.astype(bool))[1] == 2


def test_3d_case():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1:5, 1:5, 1:5] = 1  # A, 64 voxels
    truth[7:9, 1:3, 1:3] = 1  # B, 8 voxels, never predicted
    pred = np.zeros_like(truth)
    pred[2:6, 1:5, 1:5] = 1  # A shifted by one plane: 48 voxels shared
    pred[8, 8, 8] = 1  # a false positive voxel
    r = evaluate(pred, truth)
    px = r["pixel"]
    assert (px["tp"], px["fp"], px["fn"], px["tn"]) == (48, 17, 24, 911)
    obj = r["object"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (1, 1, 1)
    assert obj["precision"] == obj["recall"] == obj["f1"] == 0.5
    assert obj["iou"] == pytest.approx(1 / 3)
    m = r["matched"]
    assert m["mean_iou_matched"] == pytest.approx(0.6)
    assert m["f1_at_0.5"] == 0.5 and m["ap_at_0.5"] == pytest.approx(1 / 3)
    assert m["pq"] == pytest.approx(0.6 / 2)
    assert m["thresholds"]["0.65"]["tp"] == 0
    # 3D connectivity is 26: voxels touching at a corner are one object
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert to_instances(corner)[1] == 1


def test_instance_ids_need_not_be_consecutive():
    rng = np.random.default_rng(3)
    truth = _random_instances(rng, (48, 48), 10)
    pred = _perturb(rng, truth)
    big = np.array([0, *rng.choice(2**40, size=int(pred.max()), replace=False) + 1], dtype=np.uint64)
    assert matched_metrics(big[pred], truth) == matched_metrics(pred, truth)
    spaced = (truth * 1000).astype(np.int64)
    assert evaluate(pred, spaced) == evaluate(pred, truth)


def test_integral_floats_accepted_probabilities_refused():
    truth = _square()
    assert evaluate(truth.astype(np.float32), truth) == evaluate(truth, truth)
    probabilities = truth * 0.9
    with pytest.raises(ValueError, match=r"`pred` has non-integer values.*threshold it first"):
        evaluate(probabilities, truth)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((10, 10), np.nan), truth)
    with pytest.raises(ValueError, match="negative"):
        evaluate(truth, -truth.astype(np.int8))
    with pytest.raises(ValueError, match="integers or booleans"):
        pixel_metrics(truth.astype(complex), truth)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"`pred` shape \(4, 4\) vs `truth` shape \(4, 5\)"):
        evaluate(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="2D .* or 3D"):
        evaluate(np.zeros((2, 2, 4, 4), np.uint8), np.zeros((2, 2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="thresholds"):
        matched_metrics(_square(), _square(), thresholds=[0.0, 0.5])


def test_thresholds_table_layout():
    m = matched_metrics(_square(), _square())
    assert list(m["thresholds"]) == ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    assert set(m["thresholds"]["0.75"]) == {"tp", "fp", "fn", "precision", "recall", "f1", "ap", "mean_iou", "pq"}
    assert m["ap_mean"] == 1.0
    assert list(matched_metrics(_square(), _square(), thresholds=[0.3])["thresholds"]) == ["0.3"]


# --- independent brute-force reference -------------------------------------------------------


def _random_instances(rng, shape, n):
    labels = np.zeros(shape, np.int32)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    for i in range(1, n + 1):
        centre = [rng.integers(0, s) for s in shape]
        radii = rng.integers(2, 8, size=len(shape))
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        labels[inside] = i
    return labels


def _perturb(rng, labels):
    """Shift, merge some, split some, drop some and add a few objects."""
    pred = np.roll(labels, tuple(rng.integers(-2, 3, size=labels.ndim)), axis=tuple(range(labels.ndim)))
    ids = [i for i in np.unique(pred) if i]
    rng.shuffle(ids)
    top = int(labels.max()) + 1
    for a, b in zip(ids[0:2], ids[2:4], strict=False):  # merges
        pred[pred == a] = b
    for c in ids[4:6]:  # splits along the last axis
        where = np.nonzero(pred == c)
        if where[0].size:
            half = where[-1] > np.median(where[-1])
            pred[tuple(w[half] for w in where)] = top
            top += 1
    for d in ids[6:7]:  # a miss
        pred[pred == d] = 0
    extra = _random_instances(rng, labels.shape, 3)
    pred[(extra > 0) & (pred == 0)] = extra[(extra > 0) & (pred == 0)] + top
    return pred


def _brute_force(pred, truth, thresholds, instance_ids=True):
    """Dense IoU of every (truth, pred) pair from full masks, then StarDist-style assignment."""
    from skimage.measure import label as sk_label

    def objects(x):
        x = np.asarray(x)
        values = np.unique(x[x > 0])
        if values.size <= 1 or not instance_ids:  # binary mask: skimage components, full connectivity
            x = sk_label(x > 0, connectivity=x.ndim)
            values = np.unique(x[x > 0])
        return [x == v for v in values]

    truths, preds = objects(truth), objects(pred)
    # every pair's intersection at once: object-by-pixel indicator matrices multiplied (exact
    # in float32 below 2**24 pixels), a different route from the sparse overlap counts
    t_matrix = np.array([t.ravel() for t in truths], np.float32).reshape(len(truths), -1)
    p_matrix = np.array([p.ravel() for p in preds], np.float32).reshape(len(preds), -1)
    inter = (t_matrix @ p_matrix.T).astype(np.float64)
    union = t_matrix.sum(1)[:, None] + p_matrix.sum(1)[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    out = {}
    n_min = min(iou.shape)
    for th in thresholds:
        if n_min == 0:
            tp, total = 0, 0.0
        else:
            ok = iou >= th
            cost = -ok.astype(float) - iou / (2 * n_min)
            r, c = linear_sum_assignment(cost)
            good = ok[r, c]
            tp, total = int(good.sum()), float(iou[r, c][good].sum())
        out[th] = (tp, len(preds) - tp, len(truths) - tp, total)
    return out


def _check_against_brute_force(pred, truth, thresholds):
    fast = matched_metrics(pred, truth, thresholds=thresholds)
    slow = _brute_force(pred, truth, thresholds)
    for th in thresholds:
        row = fast["thresholds"][format(th, "g")]
        tp, fp, fn, total = slow[th]
        assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn), th
        expected_mean = total / tp if tp else 0.0
        assert row["mean_iou"] == pytest.approx(expected_mean, abs=1e-6), th
        denominator = tp + fp + fn
        assert row["ap"] == pytest.approx(tp / denominator if denominator else 1.0, abs=1e-6)
        assert row["pq"] == pytest.approx(total / (tp + fp / 2 + fn / 2) if denominator else 1.0, abs=1e-6)
    return fast


LOW_AND_DEFAULT = (0.05, 0.1, 0.2, 0.3, 0.4, *DEFAULT_THRESHOLDS)


@pytest.mark.parametrize("seed", range(6))
def test_matched_equals_brute_force_random_2d(seed):
    rng = np.random.default_rng(seed)
    truth = _random_instances(rng, (64, 64), 14)
    pred = _perturb(rng, truth)
    _check_against_brute_force(pred, truth, LOW_AND_DEFAULT)


@pytest.mark.parametrize("seed", range(2))
def test_matched_equals_brute_force_random_3d(seed):
    rng = np.random.default_rng(100 + seed)
    truth = _random_instances(rng, (16, 32, 32), 8)
    pred = _perturb(rng, truth)
    _check_against_brute_force(pred, truth, LOW_AND_DEFAULT)


def test_low_thresholds_maximise_the_number_of_matches():
    truth = np.zeros((1, 8), np.uint8)
    truth[0, 0:4] = 1
    truth[0, 4:6] = 2
    pred = np.zeros((1, 8), np.uint8)
    pred[0, 1:5] = 1  # IoU 3/5 with truth 1, 1/5 with truth 2
    pred[0, 0] = 2  # IoU 1/4 with truth 1
    m = matched_metrics(pred, truth, thresholds=[0.2, 0.3])
    # greedy by IoU would pair (1, 1) and stop; the optimal matching pairs (1, 2) and (2, 1)
    assert m["thresholds"]["0.2"]["tp"] == 2
    assert m["thresholds"]["0.2"]["mean_iou"] == pytest.approx((0.25 + 0.2) / 2)
    assert m["thresholds"]["0.3"]["tp"] == 1
    assert m["thresholds"]["0.3"]["mean_iou"] == pytest.approx(0.6)
    _check_against_brute_force(pred, truth, LOW_AND_DEFAULT)


def _nuclei_masks(nuclei_dir, count=3):
    import imageio.v3 as iio

    paths = sorted((nuclei_dir / "labels").glob("*.png"))[:count]
    assert paths, f"no masks in {nuclei_dir / 'labels'}"
    return [np.asarray(iio.imread(p)) for p in paths]


def test_matched_equals_brute_force_on_real_masks(nuclei_dir):
    from scipy import ndimage

    disk = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], bool)
    checked = 0
    for mask in _nuclei_masks(nuclei_dir, count=2):
        assert set(np.unique(mask)) <= {0, 255}
        truth = mask[::3, ::3]  # 0/255: nuclei by connected components; subsampled: brute force is dense
        variants = {
            "eroded": ndimage.binary_erosion(truth > 0, disk, iterations=2),
            "dilated": ndimage.binary_dilation(truth > 0, disk, iterations=2),
            "shifted": np.roll(truth, (4, -6), axis=(0, 1)),
        }
        for name, pred in variants.items():
            m = _check_against_brute_force(pred.astype(np.uint8) * 255, truth, LOW_AND_DEFAULT)
            assert m["n_truth"] > 10, name
            checked += 1
    assert checked


def test_object_metrics_equal_brute_force_on_real_masks(nuclei_dir):
    from scipy import ndimage
    from skimage.measure import label as sk_label

    for mask in _nuclei_masks(nuclei_dir, count=2):
        truth = mask > 0
        pred = ndimage.binary_erosion(np.roll(truth, (9, 12), axis=(0, 1)), iterations=3)
        t_cc, p_cc = sk_label(truth, connectivity=2), sk_label(pred, connectivity=2)
        found = sum(bool(pred[t_cc == i].any()) for i in range(1, t_cc.max() + 1))
        true_pred = sum(bool(truth[p_cc == j].any()) for j in range(1, p_cc.max() + 1))
        m = object_metrics(pred, truth)
        assert (m["n_truth"], m["n_pred"]) == (t_cc.max(), p_cc.max())
        assert (m["tp"], m["tp_pred"]) == (found, true_pred)
        assert m["precision"] == pytest.approx(true_pred / p_cc.max())
        assert m["recall"] == pytest.approx(found / t_cc.max())


def test_threshold_above_half_is_unique_pairs():
    # above IoU 0.5 a pairing is unique; the TP count is the number of pairs over the threshold
    rng = np.random.default_rng(11)
    truth = _random_instances(rng, (96, 96), 30)
    pred = _perturb(rng, truth)
    slow = _brute_force(pred, truth, [0.75])
    assert matched_metrics(pred, truth)["thresholds"]["0.75"]["tp"] == slow[0.75][0]


@pytest.mark.parametrize("ids_offset", [0, 5000])  # small ids: dense counting; large: np.unique
def test_pair_overlaps_counts_every_shared_pixel(ids_offset):
    from segtune.core.metrics.matching import pair_overlaps

    rng = np.random.default_rng(3)
    truth = _random_instances(rng, (64, 64), 12).astype(np.int64)
    pred = _perturb(rng, truth).astype(np.int64)
    truth[truth > 0] += ids_offset
    pred[pred > 0] += 2 * ids_offset
    t, p, shared, iou = pair_overlaps(truth, int(truth.max()), pred, int(pred.max()))
    expected = {}
    for i in np.unique(truth[truth > 0]):
        for j in np.unique(pred[truth == i]):
            if j:
                both = int(np.sum((truth == i) & (pred == j)))
                expected[(i, j)] = (both, both / np.sum((truth == i) | (pred == j)))
    assert len(expected) > 12  # the perturbation leaves objects overlapping more than one
    got = {(a, b): (c, d) for a, b, c, d in zip(t.tolist(), p.tolist(), shared.tolist(), iou.tolist(), strict=True)}
    assert got.keys() == expected.keys()
    for key, (both, value) in expected.items():
        assert got[key][0] == both and got[key][1] == pytest.approx(value)


# --- evaluate_many ---------------------------------------------------------------------------


def test_evaluate_many_means_and_sums_in_order():
    a_truth, a_pred = _square(), _square()
    b_truth = _square()
    b_pred = np.zeros((10, 10), np.uint8)
    result = evaluate_many([a_pred, b_pred], [a_truth, b_truth])
    assert result["n_images"] == 2
    assert [img["pixel"]["f1"] for img in result["images"]] == [1.0, 0.0]
    assert result["pixel"]["f1"] == 0.5 and result["object"]["recall"] == 0.5
    assert result["matched"]["f1_at_0.5"] == 0.5 and result["matched"]["mean_iou_matched"] == 0.5
    assert result["object"]["tp"] == 1 and result["object"]["fn"] == 1  # counts are summed
    assert result["matched"]["thresholds"]["0.9"]["fn"] == 1
    assert result["pixel"]["tp"] == 9 and result["pixel"]["fn"] == 9
    events = []
    evaluate_many([a_pred], [a_truth], progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("evaluate", 1, 1)]


def test_evaluate_many_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 ground truths"):
        evaluate_many([_square(), _square()], [_square()])
    with pytest.raises(ValueError, match=r"image pair 1: `pred` shape \(3, 3\)"):
        evaluate_many([_square(), np.zeros((3, 3), np.uint8)], [_square(), _square()])
    with pytest.raises(ValueError, match="no image pairs"):
        evaluate_many([], [])


def test_evaluate_is_json_ready():
    import json

    r = evaluate(_square(), _square(where=(slice(3, 6), slice(2, 5))))
    assert json.loads(json.dumps(r)) == r


# --- counting --------------------------------------------------------------------------------


def test_count_objects_components_and_area_estimate():
    mask = np.zeros((20, 20), bool)
    mask[1:5, 1:5] = True  # 16
    mask[10:14, 1:5] = True  # 16
    mask[10:14, 10:18] = True  # a clump of two: 32
    (row,) = count_objects(mask)
    assert row["components"] == 3 and row["labels"] == 1
    assert row["foreground"] == 64 and row["typical_size"] == 16.0 and row["estimate"] == 4.0
    (given,) = count_objects(mask, typical_size=32)
    assert given["estimate"] == 2.0
    instances = mask.astype(np.uint8)
    instances[10:14, 14:18] = 2
    assert count_objects(instances)[0]["labels"] == 2


def test_count_objects_per_plane_and_time_point():
    stack = np.zeros((2, 3, 8, 8), np.uint8)  # TZYX
    stack[0, :, 1:3, 1:3] = 1  # a column through all planes: 1 object in 3D, 1 per plane
    stack[1, 0, 5:7, 5:7] = 1
    stack[1, 2, 1:3, 1:3] = 1
    stack[1, 2, 5:7, 5:7] = 1
    rows = count_objects(stack)
    assert [(r["t"], r["z"], r["components"]) for r in rows] == [
        (0, 0, 1),
        (0, 1, 1),
        (0, 2, 1),
        (1, 0, 1),
        (1, 1, 0),
        (1, 2, 2),
    ]
    assert all(r["typical_size"] == 4.0 for r in rows)
    assert rows[4]["estimate"] == 0.0
    volumes = count_objects(stack, per_plane=False)
    assert [(r["t"], r["z"], r["components"], r["foreground"]) for r in volumes] == [(0, None, 1, 12), (1, None, 3, 12)]
    assert volumes[0]["typical_size"] == 4.0  # median of 12, 4, 4, 4
    assert volumes[0]["estimate"] == 3.0
    time_series = count_objects(stack[:, 2], axes="TYX")
    assert [(r["t"], r["z"], r["components"]) for r in time_series] == [(0, None, 1), (1, None, 2)]
    with pytest.raises(ValueError, match="axes"):
        count_objects(stack, axes="ZYX")


# --- overlays --------------------------------------------------------------------------------


def test_overlay_pixel_colours():
    truth = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 1, 1, 0]])
    rgb = overlay(pred, truth)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0].tolist() == [[0, 0, 255], [0, 255, 0], [255, 0, 0], [0, 0, 0]]
    image = np.array([[0.0, 10.0, 20.0, 30.0]])
    grey = overlay(pred, truth, image, alpha=0.0)
    assert grey[0, :, 0].tolist() == grey[0, :, 1].tolist() == grey[0, :, 2].tolist()
    assert grey[0, 0, 0] == 0 and grey[0, 3, 0] == 255
    half = overlay(pred, truth, image, alpha=0.5)
    assert half[0, 3].tolist() == [255, 255, 255]  # background untouched
    assert half[0, 0, 2] > half[0, 0, 0]  # blue tint on the false negative


def test_overlay_object_colours_3d():
    truth = np.zeros((2, 6, 6), np.uint8)
    truth[0, 0:2, 0:3] = 1  # found (partly)
    truth[1, 4:6, 4:6] = 1  # missed
    pred = np.zeros_like(truth)
    pred[0, 1:3, 0:3] = 1
    pred[1, 0, 5] = 1  # false positive
    rgb = overlay(pred, truth, level="object")
    assert rgb.shape == (2, 6, 6, 3)
    assert rgb[0, 0, 0].tolist() == [0, 255, 0]  # truth pixel of a touched object
    assert rgb[0, 2, 0].tolist() == [0, 255, 0]  # predicted pixel of a touched object
    assert rgb[1, 5, 5].tolist() == [0, 0, 255]
    assert rgb[1, 0, 5].tolist() == [255, 0, 0]
    assert rgb[1, 3, 3].tolist() == [0, 0, 0]


def test_save_overlay_png_round_trip(tmp_path):
    import imageio.v3 as iio

    rgb = overlay(np.eye(5, dtype=np.uint8), np.fliplr(np.eye(5, dtype=np.uint8)))
    path = save_overlay_png(tmp_path / "sub" / "o.png", rgb)
    assert np.array_equal(iio.imread(path), rgb)
    with pytest.raises(FileExistsError):
        save_overlay_png(path, rgb)
    save_overlay_png(path, rgb[::-1].copy(), overwrite=True)
    assert np.array_equal(iio.imread(path), rgb[::-1])
    with pytest.raises(ValueError, match="one plane at a time"):
        save_overlay_png(tmp_path / "3d.png", np.zeros((2, 4, 4, 3), np.uint8))
    assert [p.name for p in path.parent.iterdir()] == ["o.png"]
