"""The continual-learning tables of "Unforgotten Safety" (README "Studies"): a thin alias of analysis.study.

    python -m analysis.cl_study --table 1|2|3|4|5|all [--seeds 0 1 2] [--quick] [--out ROOT] [--model smollm2]
        [--set optim.lr=1e-3 ...]

Table N is the study `cl_tableN` (conf/study/cl_tableN.yaml), written to ROOT/cl_tableN (default
studies/<scale>[+KEY=VALUE…]/cl_tableN); `all` runs 1, 2, 3, 5, then 4, which only reads runs of 1 and 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis import study

ORDER = ["1", "2", "3", "5", "4"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.cl_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, choices=[*sorted(ORDER), "all"])
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="the folder of the studies (default studies/<scale>)")
    parser.add_argument("--model", help="a real-model scale (smollm2)")
    parser.add_argument("--check", action="store_true", help="compose and validate every row, run nothing")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweeps.train override for every row (repeatable); folder studies/<scale>+KEY=VALUE")
    args = parser.parse_args(argv)
    scale = args.model or "toy"
    worst = 0
    for n in ORDER if args.table == "all" else [args.table]:
        name = f"cl_table{n}"
        rest = [*(["--seeds", *map(str, args.seeds)] if args.seeds else []), *(["--quick"] if args.quick else []),
                *(["--model", args.model] if args.model else []), *(["--check"] if args.check else []),
                *[a for o in args.sets for a in ("--set", o)],
                "--out", str((args.out or study.default_out(name, scale, args.sets).parent) / name)]  # fmt: skip
        worst = max(worst, study.main([name, *rest]))
    return worst


if __name__ == "__main__":
    sys.exit(main())
