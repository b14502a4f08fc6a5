"""`python -m analysis`: studies and sweep folders → a trial table, fronts, comparisons, a report folder.

    python -m analysis studies multirun/seed_paper_toy/optuna.journal
    python -m analysis load multirun/seed_paper_toy -o trials.csv
    python -m analysis front sqlite:///sweeps.db --study sft --objectives asr:min,utility_acc:max --feasible-only
    python -m analysis compare multirun/sft multirun/ema --by study
    python -m analysis report multirun/seed_paper_toy -o reports/seed_paper

argparse rather than Hydra: this command reads finished results and writes files where it is told. There is no
config to compose or sweep, Hydra would add a run dir and a log per call, and its errors for a bad path or URL would
come after composition; here every user mistake is one `error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.errors import AnalysisError

COLOR_BY = ("lr", "effective_batch_size", "eta")


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _unwritable(path: Path, folder: bool) -> str | None:
    """Why `path` (a folder to fill, or a file to write) cannot be written, checked before any source is read and
    without creating anything: it, or its nearest existing parent, must be a writable folder."""
    if path.exists():
        if folder and not path.is_dir():
            return f"'{path}' exists and is not a folder"
        if not folder and path.is_dir():
            return f"'{path}' is a folder"
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create '{path}': '{parent}' is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write into '{parent}'"
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("sources", nargs="+", help="storage URLs (sqlite:///x.db, postgresql://...), journal or "
                        "sqlite files, or folders holding optuna.journal files and/or run dirs")  # fmt: skip
    common.add_argument("--study", action="append", default=[], help="keep only this study (repeatable)")
    common.add_argument("--label", action="append", default=[], metavar="STUDY=LABEL",
                        help="method label for all trials of STUDY, not the derived 'SFT' / 'EMA η=…'")  # fmt: skip
    common.add_argument("--constraint", action="append", default=[], metavar="SPEC",
                        help="an extra budget such as 'asr<=0.05' (for run dirs, which carry none)")  # fmt: skip
    common.add_argument("--objectives", default="asr:min,utility_acc:max",
                        help="columns and directions, two or three: 'asr:min,utility_acc:max' (default)")  # fmt: skip
    common.add_argument("--feasible-only", action="store_true", help="fronts over feasible trials only")
    common.add_argument("--ref", help="hypervolume reference point, one number per objective (default: 1 / 0 for "
                        "rates such as ASR and accuracy, else the worst observed value)")  # fmt: skip
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _Parser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("studies", help="list the studies in a storage")
    s.add_argument("url", help="storage URL, journal file or sqlite file")
    s = sub.add_parser("load", parents=[common], help="one tidy table of every trial (CSV)")
    s.add_argument("-o", "--out", help="write the table to this CSV file (default: print a summary)")
    s = sub.add_parser("front", parents=[common], help="the Pareto front (recipes averaged over seeds)")
    s.add_argument("-o", "--out", help="also write the front to this file (.csv or .tex)")
    s.add_argument("--bootstrap", type=_count, default=2000, help="resamples for the ASR interval (0: none)")
    s = sub.add_parser("compare", parents=[common], help="fronts of several methods or studies, dominance summary")
    s.add_argument("--by", default="method", help="group by this column: method (default), study, ...")
    s = sub.add_parser("report", parents=[common], help="every figure and table into a folder with an index page")
    s.add_argument("-o", "--out", required=True, help="the report folder (created; files in it are replaced)")
    s.add_argument("--by", default="method", help="grouping compared on one figure: method (default), study, ...")
    s.add_argument("--color-by", help=f"Pareto scatter colourings, columns of the trial table (default: "
                   f"{','.join(COLOR_BY)}, those present)")  # fmt: skip
    s.add_argument("--bootstrap", type=_count, default=2000, help="resamples for the ASR intervals (0: none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder that could not be written after all (disk full, permissions)
        print(f"error: cannot write {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis import load as loading
    from analysis.pareto import compare, dominance_sentences, frame_hypervolume, parse_objectives, parse_reference

    if args.command == "studies":
        names = loading.list_studies(loading.resolve_url(args.url))
        print("\n".join(names) if names else "(no studies)")
        return 0
    labels = {}
    for item in args.label:
        study, eq, text = item.partition("=")
        if not eq or not study or not text:
            raise AnalysisError(f"--label: expected STUDY=LABEL, got '{item}'")
        labels[study] = text
    objectives = parse_objectives(args.objectives)
    ref = parse_reference(args.ref, objectives)
    if args.command == "front" and args.out and Path(args.out).suffix not in (".csv", ".tex"):
        raise AnalysisError(f"--out: '{args.out}' should end in .csv or .tex")
    if getattr(args, "out", None) and (why := _unwritable(Path(args.out), folder=args.command == "report")):
        raise AnalysisError(f"--out: {why}")
    df = loading.load(args.sources, args.study or None, labels, args.constraint, progress=not args.quiet)
    if not len(df):
        raise AnalysisError("the sources hold no trials")
    if args.command == "load":
        if args.out:
            from analysis._io import atomic_write_text

            atomic_write_text(args.out, df.to_csv(index=False))
        counts = df.groupby(["study", "state"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"{len(df)} trials, {len(df.columns)} columns" + (f" -> {args.out}" if args.out else ""))
        return 0

    from analysis.pareto import pareto_front, reference_point, require_eligible
    from analysis.stats import aggregate_seeds, asr_bootstrap

    require_eligible(df, objectives, args.feasible_only)
    ref = reference_point(df, objectives, args.feasible_only) if ref is None else ref
    if args.command == "front":
        from analysis import tables

        recipes = aggregate_seeds(df, objectives, ["over_refusal"])
        front = pareto_front(recipes, objectives, args.feasible_only)
        if "asr" in front and args.bootstrap > 0:
            front = asr_bootstrap(front, args.bootstrap, progress=not args.quiet)
        display = tables.recipe_display(front, objectives, ["over_refusal"])
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(display.to_string(index=False))
        hv = frame_hypervolume(recipes, objectives, ref, args.feasible_only)
        print(f"{len(front)} of {len(recipes)} recipes on the front; hypervolume {hv:.4f} against "
              f"{', '.join(f'{o.column}={r:g}' for o, r in zip(objectives, ref, strict=True))}")  # fmt: skip
        if args.out:
            _write_front(Path(args.out), display, front)
        return 0
    if args.command == "compare":
        recipes = aggregate_seeds(df, objectives)
        summary, coverage = compare(recipes, objectives, args.by, ref, args.feasible_only)
        with pd.option_context("display.width", 200):
            print(summary.to_string(index=False))
            print(f"\ncoverage C(row, column): share of the column's front weakly dominated by the row's front\n"
                  f"{coverage.to_string(float_format=lambda v: f'{v:.2f}')}\n")  # fmt: skip
        print("\n".join(dominance_sentences(summary, coverage, args.by)))
        return 0
    from analysis.report import ReportOptions, write_report

    if args.color_by is None:
        color_by = list(COLOR_BY)
    else:
        color_by = [c for c in args.color_by.split(",") if c]
        unknown = [c for c in color_by if c not in df.columns]
        if unknown or not color_by:
            raise AnalysisError(f"--color-by: no column {', '.join(map(repr, unknown)) or 'given'}; use columns of "
                                f"the trial table, e.g. {','.join(COLOR_BY)}")  # fmt: skip
    opts = ReportOptions(objectives=objectives, ref=ref, feasible_only=args.feasible_only, by=args.by,
                         color_by=color_by, n_boot=args.bootstrap,
                         progress=not args.quiet)  # fmt: skip
    index = write_report(df, args.out, opts)
    print(f"report: {index}")
    return 0


def _write_front(path: Path, display, front) -> None:
    from analysis import tables
    from analysis._io import atomic_write_text
    from analysis.stats import RUN_LISTS

    if path.suffix == ".tex":
        atomic_write_text(path, tables.to_latex(display, caption="Pareto front (mean ± std over seeds)."))
    else:
        atomic_write_text(path, front.drop(columns=RUN_LISTS, errors="ignore").to_csv(index=False))


if __name__ == "__main__":
    sys.exit(main())
