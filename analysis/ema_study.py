"""Issue 16's EMA study (README "Studies"): a thin alias of `python -m analysis.study ema [options]`."""

from __future__ import annotations

import sys

from analysis import study

if __name__ == "__main__":
    sys.exit(study.main(["ema", *sys.argv[1:]]))
