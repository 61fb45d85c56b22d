"""DAVIS region (J) and boundary (F) measures, vectorised over frames.

Conventions follow the official davis2017-evaluation toolkit (``db_eval_iou``,
``db_eval_boundary``/``f_measure``, ``_seg2bmap``, ``db_statistics``):

- J = |P ∩ G| / |P ∪ G| counted over non-void pixels; 1 when the union is empty.
- F = 2·prec·rec / (prec + rec) between one-pixel boundary maps (`seg2bmap`), where a
  boundary pixel matches when the other map has a boundary pixel within the disk of
  radius r = ceil(bound_th · ‖(H, W)‖) (bound_th < 1) or r = bound_th (bound_th ≥ 1).
  Empty boundaries: none predicted but some true → prec 1, rec 0; some predicted but none
  true → prec 0, rec 1; both empty → 1, 1. F = 0 when prec + rec = 0.

The toolkit dilates each boundary map with ``cv2.dilate`` and a ``skimage`` disk; here each
boundary pixel instead searches, row by row of the disk, the sorted positions of the other
map's boundary pixels, which is the same set test without a dense dilation. Masks are
cropped to their bounding box first. `remn.evaluate.metrics_ref` holds the literal
dense version that the tests compare against.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

CHUNK_PIXELS = 1 << 22  # frames per chunk × H × W stays under ~4M pixels
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def _as_mask_stack(name: str, array) -> np.ndarray:
    """Boolean view of a mask [H, W] or [T, H, W] (non-zero is foreground)."""
    array = np.asarray(array)
    if array.dtype != bool and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a boolean or integer mask, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape [H, W] or [T, H, W], got {array.shape}")
    return array.astype(bool, copy=False)


def _check_masks(pred, gt, void):
    pred, gt = _as_mask_stack("pred", pred), _as_mask_stack("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    if void is not None:
        void = _as_mask_stack("void", void)
        if void.shape != gt.shape:
            raise ValueError(f"void {void.shape} must have the shape of gt {gt.shape}")
    return pred, gt, void


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Match radius in pixels: ceil(bound_th · sqrt(H² + W²)) for bound_th < 1, else bound_th.

    480x854 frames give 8. A bound_th ≥ 1 must be a whole number of pixels (for a
    fractional one the toolkit builds an even-sized, off-centre kernel; not reproduced).
    """
    if not bound_th > 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}")
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of masks [..., H, W] → bool [..., H, W] (the toolkit's `_seg2bmap`).

    b[y, x] is set when the mask differs between (y, x) and any of its right, lower or
    lower-right neighbours that lie inside the frame, so boundaries sit half a pixel
    towards the origin; the last row compares only rightwards, the last column only
    downwards, and the bottom-right pixel is never a boundary.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim < 2:
        raise ValueError(f"mask must have shape [..., H, W], got {m.shape}")
    b = np.zeros(m.shape, dtype=bool)
    here = m[..., :-1, :-1]
    b[..., :-1, :-1] = (here != m[..., :-1, 1:]) | (here != m[..., 1:, :-1]) | (here != m[..., 1:, 1:])
    b[..., -1, :-1] = m[..., -1, :-1] != m[..., -1, 1:]
    b[..., :-1, -1] = m[..., :-1, -1] != m[..., 1:, -1]
    return b


def _disk_rows(radius: int) -> list[tuple[int, int]]:
    """The disk {dx² + dy² ≤ r²} as (dy, half-width) rows, nearest rows first."""
    rows = [(0, radius)]
    for dy in range(1, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        rows += [(dy, half), (-dy, half)]
    return rows


def _count_matched(src: np.ndarray, dst: np.ndarray, radius: int) -> np.ndarray:
    """Per frame, how many src pixels have a dst pixel within the disk: int [T].

    src, dst: bool [T, h, w]. Equals sum(src & dilate(dst, disk(radius))) per frame, with
    nothing outside the frame taking part in the dilation. Each src pixel asks, for each
    row dy of the disk (nearest rows first, stopping once found), whether the sorted flat
    indices of dst hold one in [x − half(dy), x + half(dy)] of row y + dy.
    """
    frames, height, width = dst.shape
    src_flat = np.flatnonzero(src)
    dst_flat = np.flatnonzero(dst)  # sorted
    if src_flat.size == 0 or dst_flat.size == 0:
        return np.zeros(frames, dtype=np.int64)
    row, x = np.divmod(src_flat, width)  # row = t·h + y
    y = row % height
    last = dst_flat.size - 1
    matched = []
    for dy, half in _disk_rows(radius):
        if row.size == 0:
            break
        target = y + dy
        valid = (target >= 0) & (target < height)
        start = (row + dy) * width
        lo = start + np.maximum(x - half, 0)
        hi = start + np.minimum(x + half, width - 1)
        first = np.searchsorted(dst_flat, lo)  # first dst index ≥ lo
        found = valid & (dst_flat[np.minimum(first, last)] <= hi) & (first <= last)
        matched.append(row[found] // height)
        keep = ~found
        row, x, y = row[keep], x[keep], y[keep]
    return np.bincount(np.concatenate(matched), minlength=frames)


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """Rows and columns of mask [T, H, W] that hold any pixel in any frame, padded by `pad`."""
    any_frame = np.logical_or.reduce(mask, axis=0)  # [H, W]
    rows = np.flatnonzero(any_frame.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(any_frame.any(axis=0))
    height, width = mask.shape[1:]
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, height)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, width)),
    )


def _count_per_frame(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels per frame of mask [T, H, W]: int64 [T] (faster than an axis count)."""
    return np.array([np.count_nonzero(frame) for frame in mask], dtype=np.int64)


def jaccard_from_counts(n_inter, n_union) -> np.ndarray:
    """J [T] = n_inter / n_union, 1 where the union is empty."""
    n_inter, n_union = np.asarray(n_inter), np.asarray(n_union)
    return np.where(n_union > 0, n_inter / np.maximum(n_union, 1), 1.0)


def f_from_counts(n_pred, n_gt, pred_matched, gt_matched) -> np.ndarray:
    """Boundary F [T] from boundary sizes and matched counts, with the toolkit's empty cases.

    precision = pred_matched / n_pred and recall = gt_matched / n_gt, each 1 when its
    boundary is empty; with one boundary empty the other ratio is 0/n = 0, which gives
    the toolkit's (1, 0) and (0, 1) cases.
    """
    n_pred, n_gt = np.asarray(n_pred), np.asarray(n_gt)
    precision = np.where(n_pred > 0, pred_matched / np.maximum(n_pred, 1).astype(np.float64), 1.0)
    recall = np.where(n_gt > 0, gt_matched / np.maximum(n_gt, 1).astype(np.float64), 1.0)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


def mask_scores(pred: np.ndarray, gt: np.ndarray, radius: int, void: np.ndarray | None = None):
    """J and F of bool stacks pred, gt [T, H, W] (void [T, H, W] or None): two float64 [T].

    Works on the frames' common bounding box of pred ∪ gt (plus one pixel, so boundaries
    just outside the masks are kept), a chunk of frames at a time.
    """
    frames, height, width = gt.shape
    j = np.ones(frames, dtype=np.float64)
    f = np.ones(frames, dtype=np.float64)
    step = max(1, CHUNK_PIXELS // max(height * width, 1))
    for start in range(0, frames, step):
        chunk = slice(start, min(start + step, frames))
        p, g = pred[chunk], gt[chunk]
        if void is not None:
            keep = ~void[chunk]
            p, g = p & keep, g & keep  # void pixels count for neither J nor F
        union = p | g
        box = _bbox(union, pad=1)
        if box is None:
            continue  # both empty in every frame: J = F = 1
        p, g, union = p[:, box[0], box[1]], g[:, box[0], box[1]], union[:, box[0], box[1]]
        j[chunk] = jaccard_from_counts(_count_per_frame(p & g), _count_per_frame(union))
        pb, gb = seg2bmap(p), seg2bmap(g)  # exact: the crop keeps a background margin
        f[chunk] = f_from_counts(
            _count_per_frame(pb), _count_per_frame(gb),
            _count_matched(pb, gb, radius), _count_matched(gb, pb, radius),
        )
    return j, f


def region_similarity(pred, gt, void=None):
    """Region similarity J (Jaccard) of boolean masks.

    pred, gt, void: [H, W] → float, or [T, H, W] → float64 [T]. Void pixels are left out
    of both intersection and union; an empty union gives 1.
    """
    pred, gt, void = _check_masks(pred, gt, void)
    single = gt.ndim == 2
    if single:
        pred, gt = pred[None], gt[None]
        void = None if void is None else void[None]
    keep = True if void is None else ~void
    j = jaccard_from_counts(_count_per_frame(pred & gt & keep), _count_per_frame((pred | gt) & keep))
    return float(j[0]) if single else j


def boundary_f(pred, gt, void=None, bound_th: float = 0.008):
    """Boundary F-measure of boolean masks (void pixels are removed from both first).

    pred, gt, void: [H, W] → float, or [T, H, W] → float64 [T]; see the module docstring
    and `boundary_radius` for the matching radius.
    """
    pred, gt, void = _check_masks(pred, gt, void)
    single = gt.ndim == 2
    if single:
        pred, gt = pred[None], gt[None]
        void = None if void is None else void[None]
    radius = boundary_radius(*gt.shape[1:], bound_th)
    _, f = mask_scores(pred, gt, radius, void)
    return float(f[0]) if single else f


def decay_bins(length: int) -> list[slice]:
    """The toolkit's 4 decay bins over `length` frames (bins share their edge frames).

    Edges are round(linspace(1, length, 5)) − 1 with halves rounded up; bin i spans
    edges[i]..edges[i+1] inclusive. (The toolkit stores edges as uint8, which wraps past
    255 frames; here they do not wrap.)
    """
    edges = (np.round(np.linspace(1, length, DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
    return [slice(int(edges[i]), int(edges[i + 1]) + 1) for i in range(DECAY_BINS)]


def mean_recall_decay(values) -> tuple[float, float, float]:
    """The toolkit's `db_statistics` of one object's per-frame scores [T].

    Mean = nanmean(values); Recall = fraction of frames with score > 0.5;
    Decay = nanmean(first bin) − nanmean(last bin) over `decay_bins`. All NaN when T = 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must have shape [T], got {values.shape}")
    if values.size == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices give NaN
        mean = float(np.nanmean(values))
        recall = float(np.mean(values > RECALL_THRESHOLD))
        bins = decay_bins(values.size)
        decay = float(np.nanmean(values[bins[0]]) - np.nanmean(values[bins[-1]]))
    return mean, recall, decay
