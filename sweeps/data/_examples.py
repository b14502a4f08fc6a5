from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """A bad data file, row or field; the message names the file, the row and the field."""


@dataclass(frozen=True)
class Example:
    prompt: str  # the user turn (instruction, with its input appended when the data has one)
    response: str | None = None  # target text: trained on, or scored by NLL
    answer: str | None = None  # checkable reference for accuracy (exact text, GSM8K number, SST-2 label)
    harmful: bool = False  # a harmful (prompt, compliant answer) pair (the toy world's poison split)
    tag: str = "user"  # the training data source: "user", or the data.mixes.<tag> it was mixed in from
