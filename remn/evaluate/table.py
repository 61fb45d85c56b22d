"""Result tables in the official DAVIS toolkit's formats.

The toolkit builds pandas DataFrames and writes them with ``to_csv(index=False,
float_format="%.3f")`` (NaN as an empty field) and prints them with
``to_string(index=False)``. `ResultsTable` reproduces both without pandas.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from remn.data.atomic import atomic_path

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
CSV_FLOAT_FORMAT = "%.3f"
PRINT_DIGITS = 6  # pandas' display.precision
_DECIMAL_NUMBER = re.compile(r"^\s*[+-]?[0-9]+\.[0-9]*$")


def _is_float(value) -> bool:
    return isinstance(value, float)


def _format_float_column(values: list[float]) -> list[str]:
    """pandas' fixed-width float column: 6 decimals (scientific if any |v| < 1e-6 is non-zero),
    then trailing zeros trimmed equally from all numbers, keeping one decimal."""
    finite = [abs(v) for v in values if not math.isnan(v)]
    scientific = any(0 < v < 10 ** -PRINT_DIGITS for v in finite) or any(v > 1e6 for v in finite)
    pattern = f"{{:.{PRINT_DIGITS}{'e' if scientific else 'f'}}}"
    cells = ["NaN" if math.isnan(v) else pattern.format(v) for v in values]
    numbers = [i for i, c in enumerate(cells) if _DECIMAL_NUMBER.match(c)]
    while numbers and all(cells[i].endswith("0") for i in numbers):
        for i in numbers:
            cells[i] = cells[i][:-1]
        numbers = [i for i, c in enumerate(cells) if _DECIMAL_NUMBER.match(c)]
    return [c + "0" if _DECIMAL_NUMBER.match(c) and c.endswith(".") else c for c in cells]


@dataclass(frozen=True)
class ResultsTable:
    """A small column-named table: rows are tuples of str or float."""

    columns: tuple[str, ...]
    rows: tuple[tuple, ...]

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row} does not have the {len(self.columns)} columns {self.columns}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, column: str) -> list:
        """The values of one column, in row order."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns are {self.columns}")
        index = self.columns.index(column)
        return [row[index] for row in self.rows]

    def to_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    def to_csv(self) -> str:
        """CSV text as pandas writes it: floats "%.3f", NaN empty, "\\n" line ends."""
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(
                ("" if math.isnan(v) else CSV_FLOAT_FORMAT % v) if _is_float(v) else v for v in row
            )
        return stream.getvalue()

    def to_string(self) -> str:
        """The table as pandas' ``to_string(index=False)`` prints it: right-justified columns
        one space apart, numeric headers with a leading space."""
        columns = []
        for index, name in enumerate(self.columns):
            values = [row[index] for row in self.rows]
            numeric = bool(values) and all(_is_float(v) for v in values)
            cells = _format_float_column(values) if numeric else [str(v) for v in values]
            header = " " + name if numeric else name
            width = max([len(header)] + [len(c) for c in cells])
            columns.append([header.rjust(width)] + [c.rjust(width) for c in cells])
        return "\n".join(" ".join(parts) for parts in zip(*columns))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text through a temp file in the same folder, then rename it over `path`."""
    with atomic_path(path) as temp:
        temp.write_text(text, newline="")
    return Path(path)
