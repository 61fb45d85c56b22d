"""Evaluate a results folder against a dataset's ground truth, as the official DAVIS toolkit does.

Results layout: RESULTS/SEQ/FRAME.png, indexed PNGs whose ids are the object ids of the
first-frame annotation. Only the evaluated frames (all but the first and the last) are
read; the ground truth comes through the `remn.data.Sequence` interface (every frame
annotated). Writes, on request, the toolkit's ``global_results-SPLIT.csv`` and
``per-sequence_results-SPLIT.csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from remn.data.davis import DavisDataset
from remn.data.palette import read_annotation
from remn.data.sequence import Sequence
from remn.evaluate.protocol import check_task, prepare_ground_truth, run_jobs, score_frames, summarise
from remn.evaluate.table import ResultsTable, write_text_atomic


def global_csv_name(split: str) -> str:
    return f"global_results-{split}.csv"


def sequence_csv_name(split: str) -> str:
    return f"per-sequence_results-{split}.csv"


def _result_paths(results_dir: Path, sequence: Sequence) -> list[Path]:
    """Result files the protocol reads for one sequence: frames 1..T-2."""
    return [results_dir / sequence.name / f"{stem}.png" for stem in sequence.frame_names[1:-1]]


def find_missing_results(results_dir, sequences: Iterable[Sequence]) -> list[str]:
    """Missing sequence folders ("SEQ/") and result frames ("SEQ/00003.png"), in order."""
    results_dir = Path(results_dir)
    missing = []
    for sequence in sequences:
        if not (results_dir / sequence.name).is_dir():
            missing.append(f"{sequence.name}/")
            continue
        paths = _result_paths(results_dir, sequence)
        missing += [f"{sequence.name}/{p.name}" for p in paths if not p.is_file()]
    return missing


def _score_sequence_files(job):
    """(name, J [N, T-2], F [N, T-2]) of one sequence read from disk."""
    sequence, results_dir = job
    gt, num_objects = prepare_ground_truth(sequence.annotations(), sequence.single_object)
    paths = _result_paths(results_dir, sequence)
    pred = np.zeros((len(paths), *sequence.size), dtype=np.uint8)
    for index, path in enumerate(paths):
        ids, _ = read_annotation(path)
        if ids.shape != sequence.size:
            raise ValueError(
                f"result {path} is {ids.shape[0]}x{ids.shape[1]} (HxW) but sequence "
                f"{sequence.name} is {sequence.size[0]}x{sequence.size[1]}"
            )
        pred[index] = ids
    j, f = score_frames(gt[1:-1], pred, num_objects, name=sequence.name, single_object=sequence.single_object)
    return sequence.name, j, f


def evaluate_davis(
    davis_root,
    results_dir,
    split: str = "val",
    year: int = 2017,
    task: str = "semi-supervised",
    workers: int = 0,
    resolution: str = "480p",
) -> tuple[ResultsTable, ResultsTable]:
    """Evaluate RESULTS/SEQ/*.png on DAVIS `year` `split`: (global table, per-sequence table).

    Raises FileNotFoundError naming every missing result sequence and frame before any
    scoring. workers > 0 scores sequences in that many processes.
    """
    check_task(task)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    dataset = DavisDataset(davis_root, split=split, year=year, resolution=resolution)
    missing = find_missing_results(results_dir, dataset)
    if missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "")
        raise FileNotFoundError(f"{results_dir} is missing {len(missing)} result sequences/frames: {shown}")
    jobs = [(sequence, results_dir) for sequence in dataset]
    return summarise(run_jobs(_score_sequence_files, jobs, workers))


def write_result_csvs(results_dir, split: str, global_table: ResultsTable,
                      sequence_table: ResultsTable) -> tuple[Path, Path]:
    """Write the toolkit's two CSVs into results_dir, atomically; returns their paths."""
    results_dir = Path(results_dir)
    return (
        write_text_atomic(results_dir / global_csv_name(split), global_table.to_csv()),
        write_text_atomic(results_dir / sequence_csv_name(split), sequence_table.to_csv()),
    )
