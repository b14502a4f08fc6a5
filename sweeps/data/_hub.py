"""Load one split of a Hugging Face hub dataset into the same raw rows as a local file."""

from __future__ import annotations

from sweeps.data._examples import DataError
from sweeps.data._files import Row


def hub_label(name: str, subset: str | None, split: str) -> str:
    return f"hub dataset {name}" + (f" ({subset})" if subset else "") + f" split {split}"


def read_hub(name: str, subset: str | None, split: str, key: str) -> tuple[list[str], list[Row]]:
    # Imported here: `datasets` is slow to import and only hub-backed configs need it.
    try:
        import datasets

        ds = datasets.load_dataset(name, subset, split=split)
        columns = list(ds.column_names)
        rows: list[Row] = [(f"row {i}", dict(r)) for i, r in enumerate(ds, 1)]
    except Exception as e:  # network, auth, unknown name/subset/split: all one line for the user
        first = str(e).strip().splitlines()
        msg = f"{type(e).__name__}: {first[0]}" if first else type(e).__name__
        raise DataError(f"{key}: cannot load {hub_label(name, subset, split)}: {msg}") from None
    return columns, rows
