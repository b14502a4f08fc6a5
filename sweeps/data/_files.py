"""Read a local CSV/TSV/JSON/JSONL file (optionally .gz) into rows of raw column values.

Every parser failure becomes one `DataError` line naming the config key and the file (and the line where the parser
knows it), so a user never sees a csv/json traceback.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import IO, Any

from sweeps.data._examples import DataError

FORMATS = ("csv", "tsv", "json", "jsonl")
_ALIASES = {"ndjson": "jsonl"}

# One raw row: (where it sits in the file, e.g. "row 3" or "line 7"; column -> value).
Row = tuple[str, dict[str, Any]]


def guess_format(path: str, fmt: str | None, key: str) -> str:
    if fmt:
        chosen = _ALIASES.get(fmt.lower(), fmt.lower())
        if chosen not in FORMATS:
            raise DataError(f"{key}.format: '{fmt}' is not one of {list(FORMATS)}")
        return chosen
    suffixes = [s.lower().lstrip(".") for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == "gz":
        suffixes.pop()
    ext = _ALIASES.get(suffixes[-1], suffixes[-1]) if suffixes else ""
    if ext not in FORMATS:
        raise DataError(f"{key}: cannot tell the format of {path} from its extension; set {key}.format to one of "
                        f"{list(FORMATS)}")
    return ext


def read_file(path: str, fmt: str | None, key: str) -> tuple[list[str], list[Row]]:
    """Return (columns in file order, rows). Columns of JSON rows are the union over all rows."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"{key}: file not found: {path}")
    fmt = guess_format(path, fmt, key)
    try:
        # utf-8-sig: spreadsheet exports often start with a BOM that would otherwise glue onto the first column name.
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            if fmt in ("csv", "tsv"):
                return _read_delimited(f, path, "\t" if fmt == "tsv" else ",", key)
            rows = _read_jsonl(f, path, key) if fmt == "jsonl" else _read_json(f, path, key)
    except (OSError, UnicodeDecodeError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{key}: cannot read {path}: {type(e).__name__}: {_first_line(e)}") from None
    columns = list(dict.fromkeys(c for _, row in rows for c in row))
    return columns, rows


def _read_delimited(f: IO[str], path: str, delimiter: str, key: str) -> tuple[list[str], list[Row]]:
    reader = csv.reader(f, delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{key}: {path} is empty (no header row)")
        rows: list[Row] = []
        for fields in reader:
            if not fields:  # blank line, e.g. a trailing newline
                continue
            n = len(rows) + 1  # data rows count from 1, the header is not a row
            if len(fields) != len(header):
                raise DataError(f"{key}: {path} row {n} (line {reader.line_num}): has {len(fields)} fields but the "
                                f"header has {len(header)} (unquoted delimiter?)")
            rows.append((f"row {n}", dict(zip(header, fields, strict=True))))
    except csv.Error as e:
        raise DataError(f"{key}: {path} line {reader.line_num}: bad {kind}: {e}") from None
    return header, rows


def _read_jsonl(f: IO[str], path: str, key: str) -> list[Row]:
    rows: list[Row] = []
    for i, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{key}: {path} line {i}: bad JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{key}: {path} line {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append((f"line {i}", obj))
    return rows


def _read_json(f: IO[str], path: str, key: str) -> list[Row]:
    try:
        data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{key}: {path} line {e.lineno}: bad JSON: {e.msg} (column {e.colno})") from None
    items = _json_items(data)
    if items is None:
        raise DataError(f"{key}: {path}: expected a list of objects, an object holding one list of objects, or an "
                        "object of equal-length lists (one per column)")
    rows: list[Row] = []
    for i, obj in enumerate(items, 1):
        if not isinstance(obj, dict):
            raise DataError(f"{key}: {path} row {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append((f"row {i}", obj))
    return rows


def _json_items(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    lists = {k: v for k, v in data.items() if isinstance(v, list) and v}  # empty lists (e.g. "inputs": []) say nothing
    if len(lists) == 1 and all(isinstance(x, dict) for x in next(iter(lists.values()))):
        return next(iter(lists.values()))
    # Column-wise files such as safety_tuned_llamas' eval sets: {"instructions": [str, ...], "tags": [str, ...]}.
    if lists and len({len(v) for v in lists.values()}) == 1 and not any(
            isinstance(x, (dict, list)) for v in lists.values() for x in v):
        return [dict(zip(lists, values, strict=True)) for values in zip(*lists.values(), strict=True)]
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
