"""DAVIS evaluation: J (region similarity), F (boundary F-measure) and the semi-supervised
protocol of the official davis2017-evaluation toolkit, on files or in memory.

Command line: ``python -m remn.evaluate --davis-root ROOT --results RESULTS --set val``.
"""
from remn.evaluate.davis import evaluate_davis, find_missing_results, write_result_csvs
from remn.evaluate.metrics import (
    boundary_f,
    boundary_radius,
    decay_bins,
    mean_recall_decay,
    region_similarity,
    seg2bmap,
)
from remn.evaluate.protocol import evaluate_predictions, evaluate_sequence, summarise
from remn.evaluate.table import GLOBAL_COLUMNS, SEQUENCE_COLUMNS, ResultsTable

__all__ = [
    "GLOBAL_COLUMNS",
    "SEQUENCE_COLUMNS",
    "ResultsTable",
    "boundary_f",
    "boundary_radius",
    "decay_bins",
    "evaluate_davis",
    "evaluate_predictions",
    "evaluate_sequence",
    "find_missing_results",
    "mean_recall_decay",
    "region_similarity",
    "seg2bmap",
    "summarise",
    "write_result_csvs",
]
