"""Named studies, one command each: run every row × seed of `conf/study/<name>.yaml`, resume, report its table.

    python -m analysis.study cl_table1 [--seeds 0 1 2] [--quick] [--out DIR] [--world toy | --model smollm2]
        [--set optim.lr=1e-3 ...]
    python -m analysis.study --list

A study config is declarative (see conf/study/cl_table1.yaml): shared `overrides` for `sweeps.train`, `seeds`, a
list of `rows` (name, Hydra overrides, optional label / group / x, the paper's numbers), the table spec (`metrics`,
`figure`: pareto | sweep | distance) and per-scale overrides (`scales.smollm2`). A row with `from: <study>/<row>`
is that study's row: its runs are reused (run first where missing), never repeated.

1. check  every row composes (Hydra) and validates (sweeps.validate) before anything runs; a bad row is one line
          naming the study file and the row.
2. run    each row's missing seeds as one `python -m sweeps.train -m ... seed=0,1,2 hydra/launcher=basic` subprocess
          into `<out>/<row>/seed_<k>/` (its log in `<out>/<row>/driver.log`); a seed whose metrics.json has a final
          status (completed, diverged, pruned) is skipped, so rerunning resumes. A finished run whose recorded
          overrides (`.hydra/overrides.yaml`) are not the row's current ones, or whose toy world is not the one the
          row now gets, is one error line, never reused: an edited study config, a `--set` or a new default world
          needs its own `--out`.
3. report `<out>/table.{csv,tex,md}` (mean ± 95 % Student-t CI over seeds, a 95 % bootstrap CI over prompts from
          generations.jsonl, the paper's number beside ours, each row's training seconds per step and their ratio
          to SFT's) and `<out>/figure.{pdf,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.errors import AnalysisError

CONF = Path(__file__).resolve().parents[1] / "conf"
STUDIES = CONF / "study"
FINAL = {"completed", "diverged", "pruned"}  # outcomes a rerun would only repeat (runs are deterministic)
RATES = {"asr", "utility_acc", "over_refusal", "over_refusal/or_bench"}  # shown in %, like the paper
# metric → (generations.jsonl set, verdict field): the per-prompt verdicts behind a rate
VERDICTS = {"asr": ("harmful", "attack_success"), "over_refusal": ("overrefusal", "refused"),
            "utility_acc": ("utility", "correct"),
            "over_refusal/or_bench": ("overrefusal/or_bench", "refused")}  # fmt: skip
NAMES = {"asr": "ASR", "utility_acc": "utility", "over_refusal": "over-refusal", "utility_loss": "utility loss",
         "safety_loss": "safety loss", "distance_rel": "distance (rel.)", "distance_l2": "distance",
         "over_refusal/or_bench": "over-refusal (OR-Bench)"}  # fmt: skip
LOWER_IS_BETTER = {"asr", "over_refusal", "over_refusal/or_bench", "utility_loss", "safety_loss"}
NEUTRAL = {"distance_rel", "distance_l2"}  # no better direction: shown without an arrow
FIGURES = ("pareto", "sweep", "distance")
STEP_COLUMN = "train s / step"  # "(× SFT)" added where the table has an SFT row to divide by
STEP_NOTE = ("Train s / step: the training loop's wall time over its optimiser steps (method setup excluded, "
             "finalize included), mean over seeds; the ratio to SFT compares rows only where their runs shared one "
             "machine and nothing else ran.")
ROW_KEYS = {"name", "label", "overrides", "group", "x", "from", "paper", "shadow_paper"}
STUDY_KEYS = {"title", "paper_source", "overrides", "seeds", "rows", "table", "quick", "scales"}


@dataclass
class Row:
    name: str
    overrides: list[str]
    label: str | None = None  # shown instead of the method label derived from metrics.json; "{x}" is the row's x
    group: str | None = None  # the figure's series (a method, a family)
    # the swept value of a `sweep` figure: a number, or a metrics.json key whose recorded value it is (`der/memory`:
    # the memory the run really had, not the one the config author assumed)
    x: float | str | None = None
    source: tuple[str, str] | None = None  # (study, row) whose runs these are
    paper: dict[str, float] = field(default_factory=dict)
    # eval.each_shadow rows: the paper's numbers per shadow method (its point is "<row>_<method name>")
    shadow_paper: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    path: Path
    title: str
    paper_source: str
    overrides: list[str]
    seeds: list[int]
    rows: list[Row]
    metrics: list[str]
    figure: str
    x_label: str
    quick: dict[str, Any]


@dataclass
class Job:
    row: Row
    root: Path  # <study out>/<row>: its seeds' run dirs are root/seed_<k>
    overrides: list[str]  # everything sweeps.train gets except seed and hydra.*


# ---------------------------------------------------------------------------------------------------------------
# configs


def study_names(folder: Path = STUDIES) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_study(name: str, scale: str = "toy", folder: Path = STUDIES) -> Study:
    """<folder>/<name>.yaml (or a path to a .yaml file) at a scale (toy, or a key of its `scales`): shared overrides
    + scale overrides + rows."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        raise AnalysisError(f"unknown study '{name}' (no {_rel(path)}); known: {', '.join(study_names(folder))}")
    name = path.stem
    where = _rel(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise AnalysisError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    _known(raw, STUDY_KEYS, where)
    scales = raw.get("scales") or {}
    if scale != "toy" and scale not in scales:
        raise AnalysisError(f"{where}: no scale '{scale}' (scales: toy{''.join(', ' + s for s in scales)})")
    extra = (scales.get(scale) or {}) if scale != "toy" else {}
    _known(extra, {"overrides", "rows", "seeds", "metrics"}, f"{where}: scales.{scale}")
    table = raw.get("table") or {}
    _known(table, {"metrics", "figure", "x_label"}, f"{where}: table")
    rows = [_row(r, i, where) for i, r in enumerate(raw.get("rows") or [])]
    if not rows:
        raise AnalysisError(f"{where}: rows: the study has no rows")
    names = [r.name for r in rows]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise AnalysisError(f"{where}: row '{dup[0]}' appears twice")
    own = {r.name: r for r in rows if r.source is None}
    for row_name, more in (extra.get("rows") or {}).items():
        if row_name not in own:  # a `from` row takes the other study's scale overrides
            raise AnalysisError(f"{where}: scales.{scale}.rows: no row '{row_name}' with overrides of its own")
        own[row_name].overrides += _strings(more, f"{where}: scales.{scale}.rows.{row_name}")
    _known(raw.get("quick") or {}, {"rows"}, f"{where}: quick")
    figure = table.get("figure", "pareto")
    if figure not in FIGURES:
        raise AnalysisError(f"{where}: table.figure: '{figure}' is not one of {', '.join(FIGURES)}")
    metrics = _strings(extra.get("metrics", table.get("metrics", ["asr", "utility_acc"])), f"{where}: table.metrics")
    if figure in ("pareto", "distance") and not ("asr" in metrics and any(m.startswith("utility") for m in metrics)):
        raise AnalysisError(f"{where}: table.metrics: a {figure} figure needs asr and a utility metric, got {metrics}")
    seeds = extra.get("seeds", raw.get("seeds", [0]))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise AnalysisError(f"{where}: seeds: a non-empty list of integers, got {seeds!r}")
    return Study(name=name, path=path, title=str(raw.get("title", name)), paper_source=str(raw.get("paper_source", "")),
                 overrides=_strings(raw.get("overrides", []), f"{where}: overrides")
                 + _strings(extra.get("overrides", []), f"{where}: scales.{scale}.overrides"),
                 seeds=seeds, rows=rows, metrics=metrics,
                 figure=figure, x_label=str(table.get("x_label", "x")), quick=raw.get("quick") or {})  # fmt: skip


def _row(raw: Any, i: int, where: str) -> Row:
    if not isinstance(raw, dict) or "name" not in raw:
        raise AnalysisError(f"{where}: rows[{i}]: a mapping with at least `name` (and `overrides` or `from`)")
    name = str(raw["name"])
    here = f"{where}: row '{name}'"
    _known(raw, ROW_KEYS, here)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise AnalysisError(f"{here}: the name is a folder name: letters, digits, '_' and '-' only")
    source = None
    if "from" in raw:
        study, _, other = str(raw["from"]).partition("/")
        if not study or not other or raw.get("overrides"):
            raise AnalysisError(f"{here}: from: '<study>/<row>', and no overrides of its own, got {raw['from']!r}")
        source = (study, other)
    paper = raw.get("paper") or {}
    if not isinstance(paper, dict) or not all(isinstance(v, int | float) for v in paper.values()):
        raise AnalysisError(f"{here}: paper: a mapping metric → number, got {paper!r}")
    shadow_paper = raw.get("shadow_paper") or {}
    if not isinstance(shadow_paper, dict) or not all(
            isinstance(v, dict) and all(isinstance(n, int | float) for n in v.values()) for v in shadow_paper.values()):
        raise AnalysisError(f"{here}: shadow_paper: a mapping method name → {{metric: number}}, got {shadow_paper!r}")
    x = raw.get("x")
    if x is not None and not isinstance(x, int | float | str):
        raise AnalysisError(f"{here}: x: a number or a metrics.json key, got {x!r}")
    return Row(name=name, overrides=_strings(raw.get("overrides", []), f"{here}: overrides"),
               label=raw.get("label"), group=raw.get("group"), x=x, source=source,
               paper={k: float(v) for k, v in paper.items()},
               shadow_paper={n: {k: float(v) for k, v in p.items()} for n, p in shadow_paper.items()})  # fmt: skip


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise AnalysisError(f"{where}: a list of strings, got {value!r}")
    return [str(v) for v in value]


def _known(raw: Any, keys: set[str], where: str) -> None:
    if not isinstance(raw, dict):
        raise AnalysisError(f"{where}: a mapping, got {raw!r}")
    if unknown := sorted(set(raw) - keys):
        raise AnalysisError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(keys))})")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(CONF.parent))
    except ValueError:
        return str(path)


def select_rows(study: Study, quick: bool, only: Sequence[str] = ()) -> list[Row]:
    """All rows, or with quick the config's `quick.rows` (default: all); `only` (--rows) narrows either."""
    rows = study.rows
    known = {r.name for r in study.rows}
    if quick and study.quick.get("rows"):
        wanted = list(study.quick["rows"])
        if missing := [w for w in wanted if w not in known]:
            raise AnalysisError(f"{_rel(study.path)}: quick.rows: no row '{missing[0]}'")
        rows = [r for r in rows if r.name in wanted]
    if only:
        if missing := [w for w in only if w not in {r.name for r in rows}]:
            raise AnalysisError(f"--rows: no row '{missing[0]}' in {_rel(study.path)}"
                                f"{' quick.rows' if quick else ''} (rows: {', '.join(r.name for r in rows)})")
        rows = [r for r in rows if r.name in only]
    return rows


def plan(study: Study, rows: Sequence[Row], out: Path, scale: str, sets: Sequence[str] = ()) -> list[Job]:
    """One job per row: where its runs live and its full overrides (a `from` row: the other study's row, under
    <out>/../<study>/<row>); `sets` (the `--set` overrides) come last in every job, `from` rows included."""
    jobs = []
    for row in rows:
        if row.source is None:
            jobs.append(Job(row, out / row.name, [*study.overrides, *row.overrides, *sets]))
            continue
        other_name, other_row = row.source
        here = f"{_rel(study.path)}: row '{row.name}': from"
        try:
            other = load_study(other_name, scale, folder=study.path.parent)
        except AnalysisError as e:
            raise AnalysisError(f"{here}: {e}") from None
        match = next((r for r in other.rows if r.name == other_row), None)
        if match is None or match.source is not None:
            raise AnalysisError(f"{here}: {_rel(other.path)} has no row '{other_row}' of its own")
        jobs.append(Job(row, out.parent / other_name / other_row, [*other.overrides, *match.overrides, *sets]))
    return jobs


def _task_overrides(overrides: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """The run's settings as Hydra records them in .hydra/overrides.yaml: hydra.* / hydra/... and the seed left out,
    a key given twice kept once with its last value, values parsed (its sweeper writes `true` back as `True`, `2e-3`
    as `0.002`): key → (value, the override as written)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept = [o for o in overrides if not o.lstrip("+~").startswith("hydra") and not o.startswith("seed=")]
    parsed = OverridesParser.create().parse_overrides(kept)
    return {o.get_key_element(): (o.value(), text) for o, text in zip(parsed, kept, strict=True)}


def _current_start_key(job: Job) -> str | None:
    """The weights this job would start from today (the default toy world or alignment recipe can change under
    unchanged overrides)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.resolve import run_start_key

    overrides = [o for o in job.overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            config = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=False)
    except Exception:  # a row that does not compose is `check`'s one-line error, not this one's
        return None
    return run_start_key(config)


def check_reuse(jobs: Sequence[Job], seeds: Sequence[int]) -> None:
    """A run dir is reused (skipped, or read into the table) only if it was run with the job's overrides and from the
    same starting weights (toy world, alignment recipe): a changed study config, a `--set`, a new default world or
    alignment mix would otherwise be reported with runs of the old settings, silently."""
    from sweeps.resolve import run_start_key

    for job in {job.root: job for job in jobs}.values():
        want = _task_overrides(job.overrides)
        start_now: list[str | None] = []  # composed once per job, when a finished run needs it
        for seed in seeds:
            recorded = run_dir(job, seed) / ".hydra" / "overrides.yaml"
            if not finished(job, seed) or not recorded.is_file():  # anything else is rerun, not reused
                continue
            config_file = run_dir(job, seed) / ".hydra" / "config.yaml"
            if config_file.is_file() and (start_then := run_start_key(yaml.safe_load(config_file.read_text()) or {})):
                start_now = start_now or [_current_start_key(job)]
                if start_now[0] not in (None, start_then):
                    raise AnalysisError(f"row '{job.row.name}': {run_dir(job, seed)} was run on {start_then}, the "
                                        f"row now runs on {start_now[0]}: give this study its own --out, or remove "
                                        "that folder to rerun it")  # fmt: skip
            got = _task_overrides(yaml.safe_load(recorded.read_text()) or [])
            values = {k: v for k, (v, _) in want.items()}
            if {k: v for k, (v, _) in got.items()} != values:
                added = [text for k, (v, text) in want.items() if got.get(k, (..., ""))[0] != v]
                dropped = [text for k, (v, text) in got.items() if values.get(k, ...) != v]
                raise AnalysisError(f"row '{job.row.name}': {run_dir(job, seed)} was run with other overrides "
                                    f"(now {' '.join(added) or '-'}; then {' '.join(dropped) or '-'}): give this study "
                                    "its own --out, or remove that folder to rerun it")  # fmt: skip


def check(study: Study, jobs: Sequence[Job]) -> None:
    """Compose and validate every job's config, before anything runs: the first problem as one line naming the
    study file and the row."""
    from hydra import compose, initialize_config_dir

    from sweeps.config import ConfigError
    from sweeps.validate import to_train_config, validate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in jobs:
            overrides = [o for o in job.overrides if not o.lstrip("+~").startswith("hydra")]
            try:
                validate(to_train_config(compose(config_name="train", overrides=overrides)))
            except ConfigError as e:
                problems = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip()) or str(e)
                raise AnalysisError(f"{_rel(study.path)}: row '{job.row.name}': {problems}") from None
            except Exception as e:  # Hydra's composition and override-grammar errors: the user's overrides
                raise AnalysisError(f"{_rel(study.path)}: row '{job.row.name}': {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    """Hydra's message, with the first line of its cause ("Error merging override optim.lr=abc: Value 'abc' could
    not be converted to Float") and without its search-path listing."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    cause = e.__cause__
    if cause is not None and (more := (str(cause).strip().splitlines() or [""])[0]):
        first = f"{first.rstrip('.')}: {more}"
    return first


# ---------------------------------------------------------------------------------------------------------------
# running


def run_dir(job: Job, seed: int) -> Path:
    return job.root / f"seed_{seed}"


def read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished(job: Job, seed: int) -> bool:
    return (read_metrics(run_dir(job, seed)) or {}).get("status") in FINAL


def command(job: Job, seeds: Sequence[int]) -> list[str]:
    # the folder quoted for Hydra's override grammar: `--set` folders hold '=' (studies/smollm2+optim.lr=1e-3/...)
    folder = str(job.root).replace("'", "\\'")
    return [sys.executable, "-m", "sweeps.train", "-m", *job.overrides, f"seed={','.join(map(str, seeds))}",
            "hydra/launcher=basic", f"hydra.sweep.dir='{folder}'", "hydra.sweep.subdir=seed_${seed}"]  # fmt: skip


def _child_env() -> dict[str, str]:
    """The trials run this checkout's code (first on PYTHONPATH), whatever is installed."""
    path = os.pathsep.join(p for p in (str(CONF.parent), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def run_jobs(jobs: Sequence[Job], seeds: Sequence[int], desc: str) -> list[str]:
    """Run each job's missing seeds (one multirun subprocess per job); returns one line per failed job."""
    from tqdm.auto import tqdm

    failures = []
    todo = {job.root: job for job in jobs}.values()  # a row reused twice runs once
    for job in tqdm(list(todo), desc=desc, unit="row"):
        missing = [s for s in seeds if not finished(job, s)]
        if not missing:
            continue
        job.root.mkdir(parents=True, exist_ok=True)
        log = job.root / "driver.log"
        with open(log, "a", encoding="utf-8") as f:
            f.write("$ " + " ".join(command(job, missing)[1:]) + "\n")
            f.flush()
            proc = subprocess.run(command(job, missing), stdout=f, stderr=subprocess.STDOUT,
                                  env=_child_env())  # fmt: skip
        left = [s for s in missing if not finished(job, s)]
        if proc.returncode != 0 or left:
            failures.append(f"row '{job.row.name}': seeds {left or missing} did not finish (exit {proc.returncode}); "
                            f"see {log}")  # fmt: skip
    return failures


# ---------------------------------------------------------------------------------------------------------------
# the table


@dataclass
class Point:
    """One table row's runs: a study row, or one α of a row's post-hoc interpolation (eval.interpolate)."""

    name: str
    label: str
    method: str
    group: str
    x: float | None
    paper: dict[str, float]
    runs: list[tuple[Path, dict[str, Any]]]  # (run dir, the metrics of these weights)
    weights: str | None = None  # generations.jsonl's weights tag (None: the run's evaluated weights)


def collect(jobs: Sequence[Job], seeds: Sequence[int]) -> list[Point]:
    """Every row's finished runs (status completed) as points, plus a point per interpolation α where runs have
    `interp/<α>/...` metrics and one per shadow method of an eval.each_shadow run (`shadow/<name>/...`)."""
    from analysis.load import methods_label, run_views

    points = []
    for job in jobs:
        runs = []
        shadows: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
        for s in seeds:
            m = read_metrics(run_dir(job, s))
            if m is not None and m.get("status") == "completed":
                for shadow, view in run_views(m):
                    if shadow is None:
                        runs.append((run_dir(job, s), view))
                    else:
                        shadows.setdefault(shadow, []).append((run_dir(job, s), view))
        method = methods_label(runs[0][1].get("methods") or [], runs[0][1]) if runs else "–"
        x = _row_x(job.row, runs)
        label = (job.row.label or method).replace("{x}", "?" if x is None else f"{x:g}")
        points.append(Point(job.row.name, label, method, job.row.group or label, x, job.row.paper, runs))
        alphas = sorted({k.split("/")[1] for _, m in runs for k in m if k.startswith("interp/")}, key=float)
        for a in alphas:
            sub = [(d, {"seed": m.get("seed"), **{k.split("/", 2)[2]: v for k, v in m.items()
                                                 if k.startswith(f"interp/{a}/")}}) for d, m in runs]  # fmt: skip
            points.append(Point(f"{job.row.name}_alpha{a}", f"{label} α={a}", method, "interpolation", float(a), {},
                                [(d, m) for d, m in sub if len(m) > 1], weights=f"interp/{a}"))  # fmt: skip
        unknown = set(job.row.shadow_paper) - set(shadows)
        if runs and unknown:
            raise AnalysisError(f"row '{job.row.name}': shadow_paper names {sorted(unknown)}, not among the run's "
                                f"shadow methods {sorted(shadows)}")  # fmt: skip
        for shadow, sub in shadows.items():  # group: the shadow's own method ("EMA η=0.25 every 10" → "EMA")
            label = methods_label(sub[0][1].get("methods") or [], sub[0][1])
            own = methods_label([m for m in sub[0][1].get("methods") or [] if m.get("name") == shadow])
            points.append(Point(f"{job.row.name}_{shadow}", label, label, own.split()[0], None,
                                job.row.shadow_paper.get(shadow, {}), sub, weights=f"shadow/{shadow}"))  # fmt: skip
    return points


def _row_x(row: Row, runs: Sequence[tuple[Path, dict[str, Any]]]) -> float | None:
    """The row's x: its number, or the mean over its runs of the metrics.json value it names; None (label "m=?")
    before any run or when a run did not record it (made by an older version)."""
    if not isinstance(row.x, str):
        return row.x
    values = [m.get(row.x) for _, m in runs]
    if not values or not all(isinstance(v, int | float) for v in values):
        return None
    return float(np.mean(values))


def summarise(points: Sequence[Point], metrics: Sequence[str], n_boot: int = 2000) -> pd.DataFrame:
    """One row per point: each metric's mean, std, Student-t 95 % CI over seeds (`<m>_ci_lo/hi`), bootstrap 95 % CI
    over prompts (`<m>_boot_lo/hi`, where the runs have per-prompt verdicts) and the paper's number (`<m>_paper`)."""
    from analysis.stats import bootstrap_mean, run_verdicts
    from sweeps.stats import mean_ci

    rows = []
    for p in points:
        row: dict[str, Any] = {"row": p.name, "label": p.label, "method": p.method, "group": p.group, "x": p.x,
                               "n_seeds": len(p.runs), "seeds": ",".join(str(m.get("seed", "")) for _, m in p.runs)}
        verdicts: dict[str, list[np.ndarray]] = {m: [] for m in metrics if m in VERDICTS}
        if verdicts:
            for d, _ in p.runs:
                got = run_verdicts(d, {VERDICTS[m][0]: VERDICTS[m][1] for m in verdicts}, weights=p.weights)
                for m in verdicts:
                    if (v := got[VERDICTS[m][0]]) is not None:
                        verdicts[m].append(v)
        row["step_s"] = _step_seconds(p.runs)
        for m in metrics:
            ci = mean_ci([float(r[m]) if isinstance(r.get(m), int | float) else np.nan for _, r in p.runs])
            row.update({m: ci.mean, f"{m}_std": ci.std, f"{m}_ci_lo": ci.lo, f"{m}_ci_hi": ci.hi})
            _, lo, hi = bootstrap_mean(verdicts[m], n_boot=n_boot) if verdicts.get(m) else (np.nan, np.nan, np.nan)
            row.update({f"{m}_boot_lo": lo, f"{m}_boot_hi": hi, f"{m}_paper": p.paper.get(m, np.nan)})
        rows.append(row)
    return pd.DataFrame(rows)


def _step_seconds(runs: Sequence[tuple[Path, dict[str, Any]]]) -> float:
    """Mean over runs of the training loop's wall time per optimiser step (metrics.json `train_time_s` / `steps`:
    method setup such as EWC's Fisher or DER's stored logits excluded, `finalize` such as MagMax's merge included);
    NaN where no run recorded both."""
    per_step = [m["train_time_s"] / m["steps"] for _, m in runs if isinstance(m.get("train_time_s"), int | float)
                and isinstance(m.get("steps"), int) and m["steps"] > 0]  # fmt: skip
    return float(np.mean(per_step)) if per_step else np.nan


def _num(v: float, metric: str, digits: int) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v * (100 if metric in RATES else 1):.{digits}f}"


def display(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The paper's layout: row | method | per metric "mean ± CI half-width", the prompt bootstrap CI and the paper's
    number (rates in %) | train s / step with its ratio to SFT (where runs recorded it) | seeds."""
    out = pd.DataFrame({"row": table["label"], "method": table["method"]})
    for m in metrics:
        digits = 1 if m in RATES else 3
        unit = _axis(m, percent=True)
        half = (table[f"{m}_ci_hi"] - table[f"{m}_ci_lo"]) / 2
        out[unit] = [_num(a, m, digits) + ("" if not np.isfinite(h) else f" ± {_num(h, m, digits)}")
                     if np.isfinite(a) else "–" for a, h in zip(table[m], half, strict=True)]  # fmt: skip
        if table[f"{m}_boot_lo"].notna().any():
            out[f"{NAMES.get(m, m)} prompts 95% CI"] = [
                "–" if not np.isfinite(lo) else f"[{_num(lo, m, digits)}, {_num(hi, m, digits)}]"
                for lo, hi in zip(table[f"{m}_boot_lo"], table[f"{m}_boot_hi"], strict=True)]  # fmt: skip
        if table[f"{m}_paper"].notna().any():
            out[f"paper {NAMES.get(m, m)}{' %' if m in RATES else ''}"] = [
                "–" if not np.isfinite(v) else f"{v:g}" for v in table[f"{m}_paper"]]  # fmt: skip
    if "step_s" in table and table["step_s"].notna().any():
        header, cells = _step_cells(table)
        out[header] = cells
    out["seeds"] = table["n_seeds"].astype(int)
    if (out["row"] == out["method"]).all():
        out = out.drop(columns="method")
    return out


def _step_cells(table: pd.DataFrame) -> tuple[str, list[str]]:
    """The cost column's header and cells: seconds per optimiser step, and the ratio to the first SFT row's (what the
    method adds) where the table has one."""
    sft = table.loc[(table["method"] == "SFT") & table["step_s"].notna(), "step_s"]
    ref = float(sft.iloc[0]) if len(sft) and sft.iloc[0] > 0 else None
    cells = ["–" if not np.isfinite(v) else f"{v:.2f}" + (f" ({v / ref:.2f}×)" if ref else "")
             for v in table["step_s"].to_numpy(float)]  # fmt: skip
    return (f"{STEP_COLUMN} (× SFT)" if ref else STEP_COLUMN), cells


def write_report(study: Study, table: pd.DataFrame, out: Path) -> list[Path]:
    """table.csv (raw numbers), table.tex, table.md and figure.pdf/png in out; every file written atomically."""
    from analysis._io import atomic_write_text
    from analysis.report import _md_table
    from analysis.tables import to_latex

    shown = display(table, study.metrics)
    caption = (f"{study.title}. Mean ± 95 % CI (Student t) over seeds; prompts 95 % CI: bootstrap over prompts, "
               f"stratified by seed. {study.paper_source}").strip()  # fmt: skip
    if any(c.startswith(STEP_COLUMN) for c in shown.columns):
        caption += f" {STEP_NOTE}"
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    atomic_write_text(out / "table.tex", to_latex(shown, caption=caption, label=f"tab:{study.name}"))
    atomic_write_text(out / "table.md", f"# {study.title}\n\n{_md_table(shown)}\n\n{caption}\n")
    files = [out / "table.csv", out / "table.tex", out / "table.md"]
    done = table[table["n_seeds"] > 0]
    if len(done):
        files += FIGURE_KINDS[study.figure](study, done, out / "figure")
    return files


# ---------------------------------------------------------------------------------------------------------------
# figures (analysis.style: one style with the other figures)


def _yerr(df: pd.DataFrame, m: str) -> np.ndarray | None:
    lo, hi = df[f"{m}_ci_lo"].to_numpy(float), df[f"{m}_ci_hi"].to_numpy(float)
    mean = df[m].to_numpy(float)
    if not np.isfinite(lo).any():
        return None
    return np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)


def pareto_figure(study: Study, df: pd.DataFrame, path: Path) -> list[Path]:
    """ASR against utility, one point per row (mean over seeds, 95 % CI bars), the paper's way of showing Table 1."""
    from analysis._io import save_figure_atomic
    from analysis.figures import MARKERS
    from analysis.style import PALETTE, figure, paper_style

    x, y = _utility_metric(study), "asr"
    with paper_style():
        fig, ax = figure("one")
        for k, (_, r) in enumerate(df.iterrows()):
            sub = df.loc[[r.name]]
            ax.errorbar(sub[x], sub[y], xerr=_yerr(sub, x), yerr=_yerr(sub, y), fmt=MARKERS[k % len(MARKERS)],
                        color=PALETTE[k % len(PALETTE)], markersize=4, elinewidth=0.6, capsize=1.5,
                        label=r["label"])  # fmt: skip
        ax.set_xlabel(_axis(x))
        ax.set_ylabel(_axis(y))
        _rate_limits(ax, x, y)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.set_title(study.title, fontsize=7)
        return save_figure_atomic(fig, path)


def sweep_figure(study: Study, df: pd.DataFrame, path: Path) -> list[Path]:
    """Each metric against the rows' x (e.g. the poison ratio p), one line per group, 95 % CI bands over seeds."""
    from analysis._io import save_figure_atomic
    from analysis.style import PALETTE, figure, paper_style

    with paper_style():
        fig, axes = figure("two", ncols=len(study.metrics), squeeze=False)
        for ax, m in zip(axes[0], study.metrics, strict=True):
            for k, (g, sub) in enumerate(df.dropna(subset=["x"]).groupby("group", sort=False)):
                sub = sub.sort_values("x")
                c = PALETTE[k % len(PALETTE)]
                ax.plot(sub["x"], sub[m], marker="o", markersize=3, color=c, label=str(g))
                lo, hi = sub[f"{m}_ci_lo"].to_numpy(float), sub[f"{m}_ci_hi"].to_numpy(float)
                if m in RATES:
                    lo, hi = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
                band = np.isfinite(lo)
                if band.any():
                    ax.fill_between(sub["x"].to_numpy(float)[band], lo[band], hi[band], color=c, alpha=0.2,
                                    linewidth=0)  # fmt: skip
            ax.set_xlabel(study.x_label)
            ax.set_ylabel(_axis(m))
        axes[0][0].legend(frameon=False, loc="best")
        fig.suptitle(study.title, fontsize=7)
        return save_figure_atomic(fig, path)


def distance_figure(study: Study, df: pd.DataFrame, path: Path) -> list[Path]:
    """ASR and utility against the distance from θ_aligned, colour per family (figure.pdf), and the Pareto front of
    each family in (ASR, utility) (figure_fronts.pdf, analysis.figures.fronts_figure)."""
    from analysis._io import save_figure_atomic
    from analysis.figures import MARKERS, fronts_figure
    from analysis.pareto import Objective
    from analysis.style import PALETTE, figure, paper_style

    util = _utility_metric(study)
    dist = "distance_rel"
    with paper_style():
        fig, axes = figure("two", ncols=2, squeeze=False)
        for ax, m in zip(axes[0], ("asr", util), strict=True):
            for k, (g, sub) in enumerate(df.groupby("group", sort=False)):
                ax.errorbar(sub[dist], sub[m], xerr=_yerr(sub, dist), yerr=_yerr(sub, m), fmt=MARKERS[k % 8],
                            linestyle="none", color=PALETTE[k % len(PALETTE)], markersize=3, elinewidth=0.5,
                            label=str(g))  # fmt: skip
            ax.set_xlabel("‖θ − θ_aligned‖ / ‖θ_aligned‖")
            ax.set_ylabel(_axis(m))
            _rate_limits(ax, None, m)
        axes[0][1].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(study.title, fontsize=7)
        files = save_figure_atomic(fig, path)
    frame = df.assign(state="COMPLETE", method=df["group"])
    objectives = [Objective("asr", "minimize"), Objective(util, "minimize" if util in LOWER_IS_BETTER else "maximize")]
    return files + fronts_figure(frame, objectives, path.with_name(path.name + "_fronts"), by="method")


FIGURE_KINDS = {"pareto": pareto_figure, "sweep": sweep_figure, "distance": distance_figure}


def _rate_limits(ax, x: str | None, y: str | None) -> None:
    """Rates on their whole [0, 1] range: rows that all sit at 0 or 1 stay readable, figures stay comparable."""
    if x in RATES:
        ax.set_xlim(-0.03, 1.03)
    if y in RATES:
        ax.set_ylim(-0.03, 1.03)


def _axis(m: str, percent: bool = False) -> str:
    """ "ASR % ↓": the metric's name, its unit and which way is better."""
    arrow = "" if m in NEUTRAL else " ↓" if m in LOWER_IS_BETTER else " ↑"
    return f"{NAMES.get(m, m)}{' %' if percent and m in RATES else ''}{arrow}"


def _utility_metric(study: Study) -> str:
    return next((m for m in study.metrics if m.startswith("utility")), "utility_acc")


# ---------------------------------------------------------------------------------------------------------------
# the command


def default_out(name: str, scale: str, sets: Sequence[str] = ()) -> Path:
    """studies/<scale>/<name>; with --set overrides studies/<scale>+<set>+…/<name>, so that `from` rows of other
    studies run with the same overrides land beside it."""
    variant = "".join("+" + o.replace("/", "_").replace(" ", "") for o in sets)
    return Path("studies") / f"{scale}{variant}" / name


def _report_jobs(study: Study, quick: bool, jobs: list[Job], out: Path, scale: str, sets: Sequence[str],
                 seeds: Sequence[int]) -> list[Job]:  # fmt: skip
    """The table's rows: the rows run now and, after a `--rows` run, every other row of the selection with a finished
    run in the folder made with its current overrides — a partial run does not drop the rest from the table."""
    ran = {job.row.name: job for job in jobs}
    report = []
    for job in plan(study, select_rows(study, quick), out, scale, sets):
        if job.row.name in ran:
            report.append(ran[job.row.name])
            continue
        try:
            check_reuse([job], seeds)
        except AnalysisError:
            continue  # made with other settings: never reported as this row
        if any(read_metrics(run_dir(job, s)) is not None for s in seeds):
            report.append(job)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help=f"a study in {_rel(STUDIES)}/, or a study file (.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the study's seeds")
    parser.add_argument("--quick", action="store_true", help="one seed and the study's `quick.rows`")
    parser.add_argument("--rows", help="run only these rows, comma-separated (e.g. sft,der); the table also keeps "
                        "the other rows already finished in the folder")
    parser.add_argument("--out", type=Path, help="the study's folder (default studies/<scale>/<name>)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a sweeps.train override added to every row (repeatable), e.g. optim.lr=1e-3; "
                        "default folder studies/<scale>+KEY=VALUE/<name>")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--world", choices=["toy"], help="the toy world (default)")
    scale.add_argument("--model", help="a real-model scale of the study config (scales: e.g. smollm2)")
    parser.add_argument("--check", action="store_true", help="compose and validate every row, run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the table from the runs there, run nothing")
    parser.add_argument("--list", action="store_true", help="list the studies")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        print("\n".join(study_names()))
        return 0 if args.list else 2
    scale_name = args.model or "toy"
    try:
        study = load_study(args.name, scale_name)
        seeds = args.seeds or (study.seeds[:1] if args.quick else study.seeds)
        rows = select_rows(study, args.quick, [r for r in (args.rows or "").split(",") if r])
        if bad := [o for o in args.sets if "=" not in o or o.lstrip("+~").startswith("hydra")]:
            raise AnalysisError(f"--set {bad[0]}: a sweeps.train override KEY=VALUE (hydra.* is the driver's)")
        out = args.out or default_out(study.name, scale_name, args.sets)
        jobs = plan(study, rows, out, scale_name, args.sets)
        check_reuse(jobs, seeds)
        if not args.report_only:
            check(study, jobs)
            if args.check:
                print(f"{_rel(study.path)}: {len(jobs)} rows compose and validate ({scale_name})")
                return 0
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        failures = [] if args.report_only else run_jobs(jobs, seeds, desc=study.name)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept; rerun the same command to resume ({out})", file=sys.stderr)
        return 130
    table = summarise(collect(_report_jobs(study, args.quick, jobs, out, scale_name, args.sets, seeds), seeds),
                      study.metrics)  # fmt: skip
    files = write_report(study, table, out)
    print((out / "table.md").read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
