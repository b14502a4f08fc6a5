"""A resumable point store: one append-only JSONL file per worker; a crash loses at most the point in flight.

Workers (processes or GPUs) split the grid by index and write to their own file in the same folder; the table is
the union. A half-written last line (killed mid-write) is ignored, so that point is simply computed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class PointStore:
    def __init__(self, folder: str | Path, worker: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"points.{worker}.jsonl"
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """Cut a last line that a crash left without its newline, so the next point starts on a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def done(self) -> dict[str, dict[str, Any]]:
        """Every finished point of every worker, by key."""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("points.*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a crash cut short
                out[row["key"]] = row
        return out

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
