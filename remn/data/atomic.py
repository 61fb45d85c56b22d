"""Atomic file writes: write a temp file beside the target, then rename it into place.

An interrupted run leaves either the old file or the new one, never half of one, and no
temp file behind (except after a hard kill, when a hidden ``.NAME.*.tmp`` may remain).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in path's folder; on success rename it to `path`, else delete it.

    The temp file is created (empty, with the usual umask permissions) before the yield.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
