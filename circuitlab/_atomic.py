"""Atomic writes shared by every stage: a reader sees the old file or directory, or the new one."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any


def strict_json(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None (JSON null): Python's json
    writes `NaN` and `Infinity`, which strict parsers (browsers, jq, other languages) reject."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def dumps_strict(data: Any, **kwargs: Any) -> str:
    return json.dumps(strict_json(data), allow_nan=False, **kwargs)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write strict JSON to `path` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_strict(data, indent=2) + "\n")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Publish the finished directory `tmp` as `final`, replacing any previous `final`."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
