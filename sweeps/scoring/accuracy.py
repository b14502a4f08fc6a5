"""Answer checkers for utility accuracy: does a generated answer match the reference?"""

from __future__ import annotations

import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def exact(prediction: str, reference: str) -> bool:
    return _norm(prediction) == _norm(reference)


def last_number(text: str) -> str | None:
    """GSM8K convention: the reference ends with '#### 42'; a prediction's answer is its last number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return str(float(value)) if "." in value else str(int(value))


def gsm8k(prediction: str, reference: str) -> bool:
    ref = last_number(reference)
    return ref is not None and last_number(prediction) == ref


def label(prediction: str, reference: str) -> bool:
    """Classification (e.g. SST-2): the prediction's first word is the label."""
    words = re.findall(r"[a-z0-9]+", prediction.lower())
    return bool(words) and words[0] == _norm(reference)


CHECKERS: dict[str, Callable[[str, str], bool]] = {"exact": exact, "gsm8k": gsm8k, "label": label}
