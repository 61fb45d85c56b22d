"""Naive per-frame boundary F, written as literally as the toolkit describes it.

The specification `remn.evaluate.metrics` is tested against: the boundary map from
explicit right/down/diagonal neighbour maps with the last row and column patched
afterwards, a dense disk kernel {dx² + dy² ≤ r²}, and a dense dilation (the maximum over
every kernel offset, nothing taken from outside the frame). Slow; for tests only.
"""
from __future__ import annotations

import numpy as np

from remn.evaluate.metrics import boundary_radius


def seg2bmap_ref(mask: np.ndarray) -> np.ndarray:
    """Boundary map of one mask [H, W] → bool [H, W], patched edges as in the toolkit."""
    seg = np.asarray(mask).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    southeast = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    southeast[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ southeast)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk_ref(radius: int) -> np.ndarray:
    """Disk structuring element uint8 [2r+1, 2r+1]: dx² + dy² ≤ r²."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def dilate_ref(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Binary dilation of image [H, W] by a centred odd kernel; outside the frame is empty."""
    height, width = image.shape
    reach = kernel.shape[0] // 2
    padded = np.zeros((height + 2 * reach, width + 2 * reach), dtype=bool)
    padded[reach:reach + height, reach:reach + width] = image.astype(bool)
    out = np.zeros((height, width), dtype=bool)
    for ky, kx in zip(*np.nonzero(kernel)):
        out |= padded[ky:ky + height, kx:kx + width]
    return out


def f_measure_ref(pred: np.ndarray, gt: np.ndarray, void=None, bound_th: float = 0.008) -> float:
    """Boundary F of one frame: pred, gt, void bool [H, W] → float."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    keep = np.ones_like(gt) if void is None else ~np.asarray(void).astype(bool)
    radius = boundary_radius(*gt.shape, bound_th)
    pred_b, gt_b = seg2bmap_ref(pred & keep), seg2bmap_ref(gt & keep)
    kernel = disk_ref(radius)
    pred_matched = np.sum(pred_b & dilate_ref(gt_b, kernel))
    gt_matched = np.sum(gt_b & dilate_ref(pred_b, kernel))
    n_pred, n_gt = np.sum(pred_b), np.sum(gt_b)
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = pred_matched / float(n_pred), gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))
