"""One folder with every figure and table of a study (or several), and an index page (index.html, index.md)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis import curves, early, figures, tables
from analysis._io import atomic_write_text, slug
from analysis.errors import AnalysisError
from analysis.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    compare,
    dominance_sentences,
    hypervolume_history,
    pareto_front,
    reference_point,
    require_eligible,
    values,
)
from analysis.stats import RUN_LISTS, aggregate_seeds, asr_bootstrap

EXTRA_METRICS = ("over_refusal", "safety_loss", "utility_loss")  # shown beside the objectives where present


@dataclass
class ReportOptions:
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES
    ref: Sequence[float] | None = None  # hypervolume reference point; None: reference_point()
    feasible_only: bool = False  # fronts and hypervolumes over feasible trials only
    by: str = "method"  # the grouping compared on one figure: method | study | any column
    color_by: Sequence[str] = ("lr", "effective_batch_size", "eta")
    n_boot: int = 2000  # bootstrap resamples for the ASR intervals
    level: float = 0.95  # confidence level of every interval
    seed: int = 0  # bootstrap RNG seed: reports are reproducible
    progress: bool = True
    extra_metrics: Sequence[str] = field(default_factory=lambda: list(EXTRA_METRICS))


@dataclass
class _Entry:
    title: str
    files: list[Path]
    text: str = ""
    table: pd.DataFrame | None = None


def write_report(trials: pd.DataFrame, out_dir: str | Path, opts: ReportOptions | None = None) -> Path:
    """Write the report of `trials` (analysis.load's frame) into out_dir; returns the index.html path."""
    opts = opts or ReportOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    obj = list(opts.objectives)
    missing = [c for c in ("study", "trial", "state", "method") if c not in trials.columns]
    if missing:
        raise AnalysisError(f"the trial table lacks column(s) {', '.join(missing)} (make it with analysis.load)")
    require_eligible(trials, obj, opts.feasible_only)
    ref = np.asarray(opts.ref, float) if opts.ref is not None else reference_point(trials, obj, opts.feasible_only)
    recipes = aggregate_seeds(trials, obj, opts.extra_metrics, opts.level)
    extra = [m for m in opts.extra_metrics if m in recipes]
    entries: list[_Entry] = []
    steps = tqdm(total=11, desc="report", disable=not opts.progress, leave=False)

    def done(entry: _Entry | None) -> None:
        if entry is not None and entry.files:
            entries.append(entry)
        steps.update()

    # tables
    trial_csv = out / "trials.csv"
    atomic_write_text(trial_csv, trials.to_csv(index=False))
    recipe_raw = recipes.drop(columns=RUN_LISTS, errors="ignore")
    files = tables.write_table(tables.recipe_display(recipes, obj, extra), recipe_raw, out / "recipes",
                               caption="Every recipe: mean ± std over seeds.", label="tab:recipes")  # fmt: skip
    done(
        _Entry(
            "All trials and recipes",
            [trial_csv, *files],
            f"{len(trials)} trials ({(trials['state'] == 'COMPLETE').sum()} complete) in "
            f"{trials['study'].nunique()} study(ies); {len(recipes)} recipe(s) after averaging over seeds.",
        )
    )
    front = pareto_front(recipes, obj, opts.feasible_only)
    if "asr" in front:
        front = asr_bootstrap(front, opts.n_boot, opts.level, opts.seed, opts.progress)
    display = tables.recipe_display(front, obj, extra)
    files = tables.write_table(display, front.drop(columns=RUN_LISTS, errors="ignore"), out / "front",
                               caption=_front_caption(obj, opts), label="tab:front")  # fmt: skip
    done(_Entry("Pareto front", files, _front_caption(obj, opts), display))

    summary, coverage = compare(recipes, obj, opts.by, ref, opts.feasible_only)
    knees = _knees(recipes, obj, opts)
    if "asr" in knees and len(knees):
        knees = asr_bootstrap(knees, opts.n_boot, opts.level, opts.seed, opts.progress)
    methods_raw = summary.merge(knees.drop(columns=RUN_LISTS, errors="ignore"), on=opts.by, how="left",
                                suffixes=("", "_knee"))  # fmt: skip
    methods_disp = _methods_display(summary, knees, obj, opts.by)
    name = f"compare_{slug(opts.by)}"
    files = tables.write_table(methods_disp, methods_raw, out / name, caption=_compare_caption(ref, obj, opts),
                               label=f"tab:{name}")  # fmt: skip
    cov_csv = out / f"coverage_{slug(opts.by)}.csv"
    atomic_write_text(cov_csv, coverage.to_csv())
    sentences = dominance_sentences(summary, coverage, opts.by)
    done(_Entry(f"Comparison by {opts.by}", [*files, cov_csv], _compare_caption(ref, obj, opts) + "\n\n" +
                "\n".join(f"- {s}" for s in sentences), methods_disp))  # fmt: skip

    history = hypervolume_history(trials, obj, ref, opts.feasible_only, by="study")
    hist_csv = out / "hypervolume_history.csv"
    atomic_write_text(hist_csv, history.to_csv(index=False))
    files = figures.hypervolume_figure(history, out / "hypervolume_history", by="study") if len(history) else []
    done(_Entry("Hypervolume over trials", [*files, hist_csv],
                f"Hypervolume of the front of all trials so far (each seed a trial), reference point "
                f"{_ref_text(ref, obj)}."))  # fmt: skip

    # figures
    files = []
    for col in opts.color_by:
        if col in recipes and recipes[col].notna().any():
            files += figures.pareto_scatter(recipes, obj, out / f"pareto_{slug(col)}", col, opts.feasible_only)
    done(_Entry("Pareto scatter", files, "Recipes (mean over seeds; bars: ±1 std), coloured by "
                f"{', '.join(figures.label(c) for c in opts.color_by)}; ringed: the Pareto front; hollow grey: "
                "infeasible."))  # fmt: skip
    files = []
    groupings = [opts.by] + (["study"] if opts.by != "study" else [])
    for by in groupings:
        if by in recipes and recipes[by].nunique() > 1:
            files += figures.fronts_figure(recipes, obj, out / f"fronts_by_{slug(by)}", by, opts.feasible_only, ref)
    done(_Entry("Fronts compared", files, "Each group's front (mean over seeds), with its hypervolume (same "
                "reference point for all)."))  # fmt: skip
    # hyperparameter effects: per study (studies may differ in everything else), heatmaps also per method
    several = trials["study"].nunique() > 1
    heat, lr_curves = [], []
    for study, st in trials.groupby("study", sort=True):
        tag = f"_{slug(study)}" if several else ""
        if {"lr", "effective_batch_size"} <= set(st) and st[["lr", "effective_batch_size"]].notna().any().all():
            for m, sub in st.groupby("method", sort=True):
                name = f"{study}: {m}" if several else str(m)
                heat += figures.heatmaps(sub, out / f"heatmap{tag}_{slug(m)}", obj[:3], title=name, bins_from=st)
        if "lr" in st and st["lr"].notna().any():
            lr_curves += figures.metric_vs_lr(st, out / f"vs_lr{tag}", obj[:3], by="eta", level=opts.level,
                                           title=str(study) if several else None)  # fmt: skip
    done(_Entry("lr × effective batch size", heat, "Mean over the trials in each cell (seeds, and any other "
                "parameter that varies there); one figure per method."))  # fmt: skip
    done(_Entry("Metrics vs learning rate per EMA η", lr_curves, "Mean over the trials in each lr bin (seeds, and any "
                f"other parameter that varies there); band: {opts.level:.0%} Student-t interval where a bin holds "
                "two or more trials."))  # fmt: skip
    logs = curves.training_logs(trials)
    files = curves.training_curves(logs, out / "training_curves")
    if files:
        logs_csv = out / "training_logs.csv"
        atomic_write_text(logs_csv, logs.to_csv(index=False))
        files.append(logs_csv)
    done(_Entry("Training curves", files, f"Loss and gradient norm per optimiser step (each run dir's train_log.jsonl) "
                f"of {logs.groupby(['study', 'trial']).ngroups if len(logs) else 0} trial(s), one colour per "
                "method."))  # fmt: skip
    done(_early_entry(trials, out, opts))
    steps.close()
    return _write_index(out, entries, trials, obj)


EARLY_FRACTIONS = (0.1, 0.25, 0.5)  # the 10 % / 25 %, and half-way for short runs


def _early_entry(trials: pd.DataFrame, out: Path, opts: ReportOptions) -> _Entry | None:
    """How well each checked metric early in a trial (checks.jsonl) ranks the trials by final ASR."""
    if "asr" not in trials or "steps" not in trials:
        return None
    checks = early.load_checks(trials)
    if checks.empty:
        return None
    table = early.early_signals(trials, checks, fractions=EARLY_FRACTIONS, n_boot=opts.n_boot, level=opts.level,
                                seed=opts.seed)  # fmt: skip
    csv = out / "early_signals.csv"
    atomic_write_text(csv, table.to_csv(index=False))
    # a fraction before every trial's first check has no pairs: left out of the table and the figure, and said so
    ranked = table[table["n"] >= 3]
    unchecked = [f"{f:.0%}" for f in EARLY_FRACTIONS if f not in set(ranked["fraction"])]
    note = f" Fewer than three trials had been checked by {', '.join(unchecked)} of their steps (a smaller " \
           "`trial.check_every` would measure it)." if unchecked else ""  # fmt: skip
    if len(ranked) and (ranked["n_runs"] < ranked["n"]).any():
        note += " Several rows come from one training run (each EMA of an `eval.each_shadow` run is a row): the " \
                "interval resamples runs (n_runs), not rows (n)."  # fmt: skip
    if len(table) and table["no_final"].max() > 0:
        note += f" {int(table['no_final'].max())} checked trial(s) have no final ASR (pruned or diverged) and are " \
                "left out, which can shrink ρ when a pruner removed the worst early values."  # fmt: skip
    files: list[Path] = []
    if len(ranked):
        shown_at = 0.25 if 0.25 in set(ranked["fraction"]) else float(ranked["fraction"].min())
        at = ranked[ranked["fraction"] == shown_at]
        pairs = {m: early.early_pairs(trials, checks, m, shown_at) for m in at["metric"]}
        rho = {r.metric: (r.spearman, r.lo, r.hi) for r in at.itertuples()}
        files = figures.early_signals_figure(pairs, rho, out / "early_signals", shown_at)
    shown = ranked.assign(spearman=[f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in
                                    ranked[["spearman", "lo", "hi"]].itertuples(index=False)])  # fmt: skip
    shown = shown.assign(checked_at=[f"{a:.0%}" if f"{a:.0%}" == f"{b:.0%}" else f"{a:.0%}–{b:.0%}" for a, b in
                                     shown[["at_min", "at_max"]].itertuples(index=False)])  # fmt: skip
    shown = shown.drop(columns=["lo", "hi", "at_min", "at_max", "no_final"])
    fractions = " / ".join(f"{f:.0%}" for f in EARLY_FRACTIONS).replace("%", " %")
    return _Entry("Early signals", [*files, csv], f"Spearman rank correlation (with {opts.level:.0%} bootstrap "
                  f"interval, training runs resampled) between each checked metric at {fractions} of a trial's steps "
                  "(its last check by then; `checked_at`: the fractions actually used) and the trial's final ASR. "
                  "ρ > 0: a higher early value goes with a higher final ASR (expected for the safety loss and the "
                  "distance); |ρ| near 1 with an interval away from 0 means the early value could prune unsafe "
                  f"recipes early.{note}", shown)  # fmt: skip


def _knees(recipes: pd.DataFrame, obj: Sequence[Objective], opts: ReportOptions) -> pd.DataFrame:
    """Per group: the front recipe closest to the ideal point (objectives scaled to [0, 1] over all eligible
    recipes) — one documented pick for a table row; the full fronts are in the figures."""
    rows = []
    if opts.by not in recipes or not len(recipes):
        return pd.DataFrame(columns=[opts.by])
    all_pts = values(recipes, obj)
    lo, hi = np.nanmin(all_pts, axis=0), np.nanmax(all_pts, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    for _, sub in recipes.groupby(opts.by, sort=True):
        f = pareto_front(sub, obj, opts.feasible_only)
        if not len(f):
            continue
        scaled = (values(f, obj) - lo) / span
        ideal = np.array([1.0 if o.maximize else 0.0 for o in obj])
        rows.append(f.iloc[int(np.argmin(np.linalg.norm(scaled - ideal, axis=1)))])
    return pd.DataFrame(rows).reset_index(drop=True) if rows else pd.DataFrame(columns=[opts.by])


def _methods_display(summary: pd.DataFrame, knees: pd.DataFrame, obj: Sequence[Objective], by: str) -> pd.DataFrame:
    out = pd.DataFrame({
        by: summary[by].astype(str), "recipes": summary["n"], "front": summary["front"],
        "hypervolume": [f"{v:.4f}" for v in summary["hypervolume"]],
        "on combined front": summary["on_combined_front"], "dominated": summary["dominated_by_others"],
    })  # fmt: skip
    if len(knees):
        k = tables.recipe_display(knees, obj).drop(columns=["study", "method", "grad. accumulation", "batch size"],
                                                   errors="ignore")  # fmt: skip
        k.columns = [f"knee: {c}" for c in k.columns]
        k[by] = knees[by].astype(str).to_numpy()
        out = out.merge(k, on=by, how="left").fillna("–")
    return out


def _ref_text(ref: np.ndarray, obj: Sequence[Objective]) -> str:
    return "(" + ", ".join(f"{o.column}={figures.fmt_value(r)}" for o, r in zip(obj, ref, strict=True)) + ")"


def _front_caption(obj: Sequence[Objective], opts: ReportOptions) -> str:
    what = ", ".join(f"{figures.label(o.column)} {'↑' if o.maximize else '↓'}" for o in obj)
    feas = " Feasible recipes only." if opts.feasible_only else ""
    return (
        f"Pareto front over {what}: recipes (mean ± std over seeds) that no other recipe dominates.{feas} "
        f"ASR interval: {opts.level:.0%} percentile bootstrap over prompts ({opts.n_boot} resamples)."
    )


def _compare_caption(ref: np.ndarray, obj: Sequence[Objective], opts: ReportOptions) -> str:
    return (
        f"Fronts by {opts.by}: hypervolume against {_ref_text(ref, obj)}; 'on combined front': front points "
        f"no other {opts.by} beats; 'dominated': front points another {opts.by}'s front strictly dominates; "
        "knee: the front recipe closest to the ideal point (objectives scaled to [0, 1])."
    )


def _write_index(out: Path, entries: list[_Entry], trials: pd.DataFrame, obj: Sequence[Objective]) -> Path:
    title = f"Analysis: {', '.join(sorted(map(str, trials['study'].unique())))}"
    md = [f"# {title}", "", f"Objectives: {', '.join(map(str, obj))}.", ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>Objectives: {html.escape(', '.join(map(str, obj)))}.</p>"]
    for e in entries:
        md += [f"## {e.title}", "", e.text, ""]
        body += [f"<h2>{html.escape(e.title)}</h2>"]
        body += [f"<p>{html.escape(line[2:] if line.startswith('- ') else line)}</p>"
                 for line in e.text.splitlines() if line.strip()]  # fmt: skip
        if e.table is not None and len(e.table):
            md += [_md_table(e.table), ""]
            body.append(e.table.to_html(index=False, border=0, classes="t"))
        links = []
        for f in e.files:
            rel = f.relative_to(out).as_posix()
            if f.suffix == ".png":
                pdf = f.with_suffix(".pdf").relative_to(out).as_posix()
                md.append(f"[![{f.stem}]({rel})]({pdf})")
                body.append(f'<a href="{pdf}"><img src="{rel}" alt="{f.stem}" style="max-width:48%"></a>')
            elif f.suffix != ".pdf":
                links.append(rel)
        if links:
            md += ["", "Files: " + ", ".join(f"[{x}]({x})" for x in links), ""]
            body.append("<p>Files: " + ", ".join(f'<a href="{x}">{html.escape(x)}</a>' for x in links) + "</p>")
    css = "body{font-family:serif;max-width:70em;margin:2em auto}table.t{border-collapse:collapse;font-size:90%}" \
          "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd}"  # fmt: skip
    page = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{css}</style>\n"
    atomic_write_text(out / "index.md", "\n".join(md) + "\n")
    atomic_write_text(out / "index.html", page + "\n".join(body) + "\n")
    return out / "index.html"


def _md_table(df: pd.DataFrame) -> str:
    cells = df.astype(str).replace({"\\|": "\\\\|"}, regex=True)
    lines = ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)
