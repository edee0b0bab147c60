"""Atomic file writes and the stage output layout.

Every output is written to a temporary sibling and renamed into place, so a killed stage never
leaves a half-written file that looks complete. JSON metrics refuse NaN and infinities: a bare
`NaN` breaks `dvc metrics show`, and a silent one hides a broken run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

OUT = Path("out")  # large stage outputs (DVC-cached, git-ignored)
METRICS = Path("metrics")  # small metrics JSON per stage (kept in git)
PLOTS = Path("plots")  # curves per stage, rendered by `dvc plots show`


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; swap it in for `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_finite(values: dict, where: str) -> None:
    """Raise ValueError naming every key whose value is NaN or infinite."""
    bad = [k for k, v in flatten(values).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"{where}: non-finite values for {', '.join(bad)}; refusing to record them"
        )


def write_json(path: str | Path, data: dict) -> None:
    check_finite(data, str(path))
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it first") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
