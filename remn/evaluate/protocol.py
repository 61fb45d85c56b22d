"""The DAVIS semi-supervised protocol on id maps held in memory.

As the official davis2017-evaluation toolkit computes it:
- ground truth void (255) becomes background; the semi-supervised protocol gives the
  measures no void mask, so void pixels count as background, not as excluded;
- the objects are ids 1..N with N the largest id in the first-frame annotation;
- the first and last frames are not evaluated (frames 1..T-2);
- a predicted id above N is an error; an object the prediction never shows scores as an
  empty mask;
- per object, J and F per frame → (Mean, Recall, Decay) by `mean_recall_decay`; the
  global table averages those over all objects of all sequences, J&F-Mean =
  (J-Mean + F-Mean) / 2; the per-sequence table has one row `SEQ_k` per object.
DAVIS 2016 (`single_object=True`): ground-truth objects merge into object 1 and every
non-zero predicted id counts as that object.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Mapping, Sequence

import numpy as np

from remn.data.sequence import merge_objects
from remn.data.palette import VOID_ID
from remn.evaluate.metrics import CHUNK_PIXELS, boundary_radius, mask_scores, mean_recall_decay
from remn.evaluate.table import GLOBAL_COLUMNS, SEQUENCE_COLUMNS, ResultsTable

TASKS = ("semi-supervised",)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(
            f"task must be one of {TASKS}, got {task!r} (the unsupervised protocol's "
            "proposal matching is not implemented)"
        )


def _id_stack(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer id array, got dtype {array.dtype}")
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape [T, H, W], got {array.shape}")
    return array


def prepare_ground_truth(gt_ids, single_object: bool = False) -> tuple[np.ndarray, int]:
    """Ground truth ids [T, H, W] → (ids with void set to 0 [T, H, W], number of objects N)."""
    gt = _id_stack("gt_ids", gt_ids)
    if single_object:
        gt = merge_objects(gt)
    void = gt == VOID_ID
    if void.any():
        gt = gt.copy()
        gt[void] = 0
    return gt, int(gt[0].max()) if len(gt) else 0


def score_frames(gt_eval, pred_eval, num_objects: int, *, name: str = "sequence",
                 single_object: bool = False, bound_th: float = 0.008):
    """J and F of the evaluated frames: (float64 [N, T'], float64 [N, T']).

    gt_eval: ids [T', H, W] with void already 0; pred_eval: ids [T', H, W].
    """
    gt_eval, pred_eval = _id_stack("gt", gt_eval), _id_stack("pred", pred_eval)
    if gt_eval.shape != pred_eval.shape:
        raise ValueError(
            f"{name}: predictions {pred_eval.shape} do not match the ground truth {gt_eval.shape}"
        )
    frames, height, width = gt_eval.shape
    if single_object:
        pred_eval = (pred_eval > 0).astype(np.uint8)
    if frames and pred_eval.max() > num_objects:
        raise ValueError(
            f"{name}: predictions use id {int(pred_eval.max())} but the first-frame annotation "
            f"has {num_objects} objects (ids 1..{num_objects})"
        )
    radius = boundary_radius(height, width, bound_th)
    j = np.ones((num_objects, frames))
    f = np.ones((num_objects, frames))
    step = max(1, CHUNK_PIXELS // max(height * width, 1))
    for start in range(0, frames, step):
        chunk = slice(start, min(start + step, frames))
        gt_chunk, pred_chunk = gt_eval[chunk], pred_eval[chunk]
        for obj in range(num_objects):
            j[obj, chunk], f[obj, chunk] = mask_scores(pred_chunk == obj + 1, gt_chunk == obj + 1, radius)
    return j, f


def evaluate_sequence(gt_ids, pred_ids, *, name: str = "sequence", single_object: bool = False,
                      bound_th: float = 0.008):
    """Per-object, per-frame J and F of one sequence: (float64 [N, T-2], float64 [N, T-2]).

    gt_ids: annotation ids [T, H, W] (255 = void); pred_ids: predicted ids [T, H, W]
    (frames 0 and T-1 are ignored, as the protocol skips them).
    """
    gt, num_objects = prepare_ground_truth(gt_ids, single_object)
    pred = _id_stack("pred_ids", pred_ids)
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: predictions {pred.shape} do not match the ground truth {gt.shape}")
    return score_frames(gt[1:-1], pred[1:-1], num_objects, name=name,
                        single_object=single_object, bound_th=bound_th)


def summarise(scores: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> tuple[ResultsTable, ResultsTable]:
    """(global table, per-sequence table) from (sequence name, J [N, T'], F [N, T']) triples."""
    stats = {"J": [], "F": []}
    rows = []
    for name, j, f in scores:
        for obj in range(len(j)):
            j_stats, f_stats = mean_recall_decay(j[obj]), mean_recall_decay(f[obj])
            stats["J"].append(j_stats)
            stats["F"].append(f_stats)
            rows.append((f"{name}_{obj + 1}", j_stats[0], f_stats[0]))
    means = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # no objects at all: NaN
        for measure, per_object in stats.items():
            # one 1-D mean per statistic, as np.mean(list) sums (same rounding as the toolkit)
            means[measure] = [float(np.mean([s[i] for s in per_object])) for i in range(3)]
    overall = (means["J"][0] + means["F"][0]) / 2.0
    values = (overall, *means["J"], *means["F"])
    global_table = ResultsTable(GLOBAL_COLUMNS, (tuple(float(v) for v in values),))
    return global_table, ResultsTable(SEQUENCE_COLUMNS, tuple(rows))


def run_jobs(function: Callable, jobs: list, workers: int) -> list:
    """`[function(job) for job in jobs]`, in order, over `workers` processes (0: in-process)."""
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if workers == 0 or len(jobs) <= 1:
        return [function(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(function, jobs))


def _score_in_memory(job):
    name, gt_ids, pred_ids, single_object = job
    j, f = evaluate_sequence(gt_ids, pred_ids, name=name, single_object=single_object)
    return name, j, f


def evaluate_predictions(
    predictions: Mapping[str, np.ndarray],
    ground_truth: Mapping[str, np.ndarray],
    *,
    task: str = "semi-supervised",
    single_object: bool = False,
    workers: int = 0,
) -> tuple[ResultsTable, ResultsTable]:
    """Evaluate in-memory predictions: (global table, per-sequence table).

    predictions, ground_truth: sequence name → ids [T, H, W] (ground truth with 255 void);
    the sequences are those of `ground_truth`, in its order (extra predictions are ignored,
    missing ones raise). workers > 0 scores sequences in that many processes; each
    sequence's arrays are copied to its worker, so for large in-memory inputs workers pay
    off less than in `evaluate_davis`, where workers read their own files.
    """
    check_task(task)
    missing = [name for name in ground_truth if name not in predictions]
    if missing:
        raise KeyError(f"no predictions for {len(missing)} sequences: {', '.join(missing[:10])}")
    jobs = [(name, ground_truth[name], predictions[name], single_object) for name in ground_truth]
    return summarise(run_jobs(_score_in_memory, jobs, workers))
