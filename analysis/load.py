"""Studies (any Optuna storage) and run dirs → one tidy DataFrame, one row per trial.

A source is one of
- an SQLAlchemy URL (`sqlite:///sweeps.db`, `postgresql://host/db`): every study in it, or those named;
- a journal file (`multirun/<study>/optuna.journal`), or an sqlite file (`*.db`, `*.sqlite`, `*.sqlite3`);
- a folder: each `optuna.journal` under it is a study storage whose trial N has its run dir in `<folder>/N/`, and
  every other run dir under it (`metrics.json`, or a Hydra job that never wrote one) is a trial of a plain Hydra
  multirun (`multirun/<time>/<job>/`), one study per parent folder.

Columns: source, study, trial, state, method, seed, lr, batch_size, grad_accum, effective_batch_size, eta (these
derived with fallbacks: sweep parameter → metrics.json → config.yaml), then every parameter under its Hydra key
(`optim.lr`), every metric (`asr`, `ema/eta`, ...), `constraint/<name>` (≤ 0 is satisfied), feasible, run_dir.
`df.attrs` holds "params" (the parameter columns) and "directions" ({objective: "minimize" | "maximize"}).
A run dir with `eval.each_shadow` (several shadow EMAs on one run) gives one row per EMA besides its own, with the
same trial number and its name in `shadow` (`run_views`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.storages import BaseStorage, RDBStorage
from tqdm.auto import tqdm

from analysis.errors import AnalysisError

RECIPE = ["lr", "batch_size", "grad_accum", "effective_batch_size", "eta"]
FIRST = ["source", "study", "trial", "state", "method", "seed", *RECIPE]
LAST = ["feasible", "run_dir"]
INTERNAL_ATTRS = {"worker", "lease_until", "run_dir"}  # sweep bookkeeping, not results
SQLITE_SUFFIXES = {".db", ".sqlite", ".sqlite3"}
PARAM_KEYS = {"lr": "optim.lr", "batch_size": "optim.batch_size", "grad_accum": "optim.grad_accum",
              "eta": "method.ema.eta"}  # fmt: skip


def load(
    sources: Sequence[str | Path],
    studies: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    constraints: Sequence[str] = (),
    progress: bool = False,
) -> pd.DataFrame:
    """Every trial of every source as one DataFrame (see the module docstring for sources and columns).

    studies: keep only these study names (each must exist in some source). labels: {study: method label} replaces
    the derived label ("SFT", "EMA η=0.25") for every trial of that study. constraints: extra budgets such as
    "asr<=0.05", applied after loading (e.g. to run dirs, which carry none).
    """
    if not sources:
        raise AnalysisError("no source given: pass a storage URL, a journal file or a sweep folder")
    rows: list[dict[str, Any]] = []
    directions: dict[str, str] = {}
    found: set[str] = set()
    for spec in sources:
        for kind, where, run_root in _expand(spec):
            if kind == "storage":
                got, dirs, names = _storage_rows(where, studies, run_root, progress)
                directions = {**dirs, **directions}
                found |= names
            else:
                got = _run_rows(where, Path(spec), progress)
                found |= {r["study"] for r in got}
            rows += got
    missing = [s for s in (studies or []) if s not in found]
    if missing:
        raise AnalysisError(f"study {', '.join(map(repr, missing))} not found; the sources hold: "
                            f"{', '.join(sorted(found)) or 'no studies'}")  # fmt: skip
    if studies:
        rows = [r for r in rows if r["study"] in studies]
    df = _frame(rows, labels or {})
    df.attrs["directions"] = directions
    if constraints:
        df = add_constraints(df, constraints)
    return df


def method_label(eta: float | None) -> str:
    """ "EMA η=0.25" when parameter-space EMA is on (η < 1), else "SFT" (η = 1 is plain fine-tuning).

    The fallback for run dirs written before metrics.json recorded `methods`; see methods_label."""
    if eta is not None and not _isnan(eta) and float(eta) < 1:
        return f"EMA η={float(eta):g}"
    return "SFT"


# registry key -> (display name, [(argument, symbol, default)], the arguments that switch it off (conf/method/*.yaml)
# (a symbol with "{}" is a template: "{} updates"); the off arguments may depend on the others (EMA's convention)
_EMA_SHOWN = [("eta", "η=", 0.25), ("convention", "{}-convention", "new"), ("every", "every ", 1),
              ("updates", "{} updates", None), ("init", "init {}", "start")]  # fmt: skip
_LABELS: dict[str, tuple[str, list[tuple[str, str, Any]], dict[str, Any] | Callable[[dict], dict[str, Any]]]] = {
    "ema": ("EMA", _EMA_SHOWN, lambda a: {"eta": 1.0} if a.get("convention", "new") == "new" else {"eta": 0.0}),
    "ewc": ("EWC", [("lam", "λ=", 100.0), ("fisher", "", "weighted"), ("size", "m=", None)], {"lam": 0.0}),
    "agem": ("A-GEM", [("size", "m=", None)], {"project": False}),
    "der": ("DER", [("lam", "λ=", 0.5), ("size", "m=", None)], {"lam": 0.0}),
    "derpp": ("DER++", [("lam", "λ=", 0.5), ("beta", "β=", 0.5), ("size", "m=", None)], {"lam": 0.0, "beta": 0.0}),
    "lwf": ("LwF", [("beta", "β=", 1.0)], {"beta": 0.0}),
    "refresh": ("Refresh", [("gamma", "γ=", 1e-5), ("lam", "λ=", 0.5), ("size", "m=", None)],
                {"gamma": 0.0, "lam": 0.0, "beta": 0.0}),
    "magmax": ("MagMax", [("scale", "λ=", 0.5)], {"enabled": False}),
    "lisa": ("Lisa", [("rho", "ρ=", 1.0), ("align_steps", "K_align=", 10), ("finetune_steps", "K_ft=", 90),
                      ("size", "m=", None)], {"rho": 0.0, "align_steps": 0}),
    "safelora": ("SafeLoRA", [("mode", "", "threshold"), ("threshold", "τ=", 0.5), ("layers", "k=", 10)],
                 {"enabled": False}),
}
_ALWAYS = {"eta", "lam", "beta", "gamma", "scale", "rho", "threshold"}  # strengths are shown even at their default


def methods_label(methods: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any] | None = None) -> str:
    """The label of a trial from metrics.json's `methods` ([{name, target, args}]): "SFT" when none acted,
    else e.g. "DER λ=0.5 m=250", "EMA η=0.25 every 10", "EWC λ=100 identity + EMA η=0.5". A method whose
    arguments switch it off (λ = 0, η = 1, ...) does not count. SafeInstr is data, not a method: with `metrics`
    (metrics.json) its mix is named too ("SafeInstr m=50", "DER λ=0.5 + SafeInstr m=50")."""
    parts = []
    for m in methods:
        key = str(m.get("target", "")).rpartition(".")[2].lower()
        name, shown, off = _LABELS.get(key, (str(m.get("name", key)), [], {}))
        args = dict(m.get("args") or {})
        off = off(args) if callable(off) else off
        if off and all(args.get(k) == v for k, v in off.items()):
            continue
        words = [name]
        for arg, symbol, default in shown:
            value = args.get(arg, default)
            if value is None or (arg not in _ALWAYS and value == default):
                continue
            text = f"{value:g}" if isinstance(value, float) else str(value)
            words.append(symbol.format(text) if "{}" in symbol else f"{symbol}{text}")
        parts.append(" ".join(words))
    safeinstr = (metrics or {}).get("data/mix/safeinstr")
    if isinstance(safeinstr, (int, float)) and safeinstr > 0:
        parts.append(f"SafeInstr m={safeinstr:g}")
    return " + ".join(parts) or "SFT"


def add_constraints(df: pd.DataFrame, specs: Iterable[str]) -> pd.DataFrame:
    """Add `constraint/<spec>` columns (value − bound for ≤, bound − value for ≥) and recompute `feasible`."""
    from sweeps.study.runner import SweepError, parse_constraint

    out = df.copy()
    for spec in specs:
        try:
            metric, op, bound = parse_constraint(spec)
        except SweepError as e:
            raise AnalysisError(str(e).replace("hydra.sweeper.constraints", "--constraint")) from None
        if metric not in out.columns:
            raise AnalysisError(f"--constraint {spec}: no column '{metric}'; numeric columns: "
                                f"{', '.join(numeric_columns(out))}")  # fmt: skip
        value = pd.to_numeric(out[metric], errors="coerce")
        out[f"constraint/{metric}{op}{bound}"] = value - bound if op == "<=" else bound - value
    out["feasible"] = _feasible(out)
    return out


def numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def param_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.attrs.get("params", []) if c in df.columns]


def list_studies(url: str) -> list[str]:
    storage = open_readonly(url)
    return [s.study_name for s in _guard(url, storage.get_all_studies)]


def resolve_url(spec: str | Path) -> str:
    """A storage address from what a user types: a URL as is, a sweep folder → its journal, *.db → sqlite URL."""
    text = str(spec)
    if "://" in text:
        return text
    path = Path(text)
    if path.is_dir() and (path / "optuna.journal").is_file():
        return str(path / "optuna.journal")
    if path.suffix in SQLITE_SUFFIXES:
        return f"sqlite:///{path.resolve()}"
    return text


def open_readonly(url: str) -> BaseStorage:
    """Open a storage for reading, creating nothing: no journal file, no sqlite file, no tables in a database."""
    from sweeps.study.storage import is_journal, open_storage

    if is_journal(url):
        if not Path(url).is_file():
            raise AnalysisError(f"no journal file at '{url}'")
        return _guard(url, lambda: open_storage(url))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise AnalysisError(f"no sqlite file at '{url[len('sqlite:///') :]}' (from storage URL '{url}')")
    kwargs = {} if url.startswith("sqlite") else {"engine_kwargs": {"pool_pre_ping": True}}
    return _guard(url, lambda: RDBStorage(url, skip_table_creation=True, **kwargs))


# ---------------------------------------------------------------------------------------------------------------
# sources


def _expand(spec: str | Path) -> list[tuple[str, str, Path | None]]:
    """(kind, where, run_root) triples: ("storage", url, folder of trial run dirs) or ("runs", folder, None)."""
    text = str(spec)
    if "://" in text:
        return [("storage", text, None)]
    path = Path(text)
    if not path.exists():
        raise AnalysisError(f"no such file or folder: '{text}'")
    if path.is_file():
        if path.suffix in SQLITE_SUFFIXES:
            return [("storage", f"sqlite:///{path.resolve()}", path.parent)]
        return [("storage", str(path), path.parent)]
    journals = sorted(path.rglob("optuna.journal"))
    out: list[tuple[str, str, Path | None]] = [("storage", str(j), j.parent) for j in journals]
    if _run_dirs(path, {j.parent for j in journals}):
        out.append(("runs", str(path), None))
    if not out:
        raise AnalysisError(f"'{text}' holds no optuna.journal and no run dir (metrics.json)")
    return out


def _run_dirs(folder: Path, skip: set[Path]) -> list[Path]:
    """Run dirs under folder that are not trials of a study storage found there: finished ones (metrics.json) and
    Hydra jobs that never finished (config.yaml beside .hydra/, no metrics.json)."""
    dirs = {p.parent for p in folder.rglob("metrics.json")}
    dirs |= {p.parent for p in folder.rglob("config.yaml") if (p.parent / ".hydra").is_dir()}
    return sorted(d for d in dirs if not any(s == d or s in d.parents for s in skip))


# ---------------------------------------------------------------------------------------------------------------
# study storages


def _storage_rows(url: str, wanted: Sequence[str] | None, run_root: Path | None,
                  progress: bool) -> tuple[list[dict[str, Any]], dict[str, str], set[str]]:  # fmt: skip
    storage = open_readonly(url)
    names = [s.study_name for s in _guard(url, storage.get_all_studies)]
    rows: list[dict[str, Any]] = []
    directions: dict[str, str] = {}
    for name in names:
        if wanted and name not in wanted:
            continue
        study = _guard(url, lambda n=name: optuna.load_study(study_name=n, storage=storage))
        metric_names = study.metric_names or [f"values_{i}" for i in range(len(study.directions))]
        for m, d in zip(metric_names, study.directions, strict=True):
            directions.setdefault(m, d.name.lower())
        trials = _guard(url, lambda s=study: s.get_trials(deepcopy=False))
        for t in tqdm(trials, desc=f"{name}", disable=not progress or len(trials) < 500, leave=False):
            rows.append(_trial_row(t, name, metric_names, url, run_root))
    return rows, directions, set(names)


def _trial_row(t: optuna.trial.FrozenTrial, study: str, metric_names: list[str], source: str,
               run_root: Path | None) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"source": source, "study": study, "trial": t.number, "state": t.state.name}
    row.update(t.params)
    row.update({k: v for k, v in t.user_attrs.items() if k not in INTERNAL_ATTRS and _scalar(v)})
    if t.values is not None:
        row.update(zip(metric_names, t.values, strict=True))
    row.update({f"constraint/{k}": v for k, v in t.constraints.items()})
    row["run_dir"] = _trial_dir(t, run_root)
    row["_params"] = list(t.params)
    return row


def _trial_dir(t: optuna.trial.FrozenTrial, run_root: Path | None) -> str | None:
    # The sweeper runs trial N in <sweep dir>/N/; the `run_dir` user attribute may name another folder (it has
    # recorded the launcher's working dir), so a candidate counts only if it holds this trial's files.
    candidates = [run_root / str(t.number)] if run_root is not None else []
    if t.user_attrs.get("run_dir"):
        candidates.append(Path(t.user_attrs["run_dir"]))
    for d in candidates:
        if (d / "metrics.json").is_file() or (d / "config.yaml").is_file():
            return str(d)
    return None


# ---------------------------------------------------------------------------------------------------------------
# run dirs without a storage


def _run_rows(folder: str, given: Path, progress: bool) -> list[dict[str, Any]]:
    root = Path(folder)
    dirs = _run_dirs(root, {j.parent for j in root.rglob("optuna.journal")})
    by_parent: dict[Path, list[Path]] = {}
    for d in dirs:
        by_parent.setdefault(d.parent, []).append(d)
    rows = []
    for parent, group in by_parent.items():
        study = parent.name if parent != root.parent else root.name
        numbered = sorted(group, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
        for i, d in enumerate(tqdm(numbered, desc=study, disable=not progress or len(numbered) < 500, leave=False)):
            rows += _run_rows_of(d, study, int(d.name) if d.name.isdigit() else i, str(given))
    return rows


def _run_rows_of(run_dir: Path, study: str, number: int, source: str) -> list[dict[str, Any]]:
    """The run's row; with eval.each_shadow one more per shadow method (same trial number, `shadow` = its name)."""
    params = _overrides(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    rows = []
    for _, view in run_views(metrics) if metrics is not None else [(None, None)]:
        row: dict[str, Any] = {"source": source, "study": study, "trial": number, **params, "_params": list(params)}
        if view is None:
            row.update(state="FAIL", fail_reason="no metrics.json (the job crashed, or it is still running)")
        else:
            row.update({k: v for k, v in view.items() if _scalar(v)})  # `_shadowed` too: a bool
            if isinstance(view.get("methods"), list):
                row["_methods"] = view["methods"]
            status = view.get("status")
            row["state"] = {"completed": "COMPLETE", "pruned": "PRUNED"}.get(status, "FAIL")
            if row["state"] == "FAIL":
                row.setdefault("fail_reason", f"trial status '{status}'")
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return rows


def run_views(metrics: Mapping[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """A run's metrics.json as (shadow, metrics) rows: the run itself (shadow None), and for a run with
    eval.each_shadow one more per shadow-mode method — its `shadow/<name>/...` scores unprefixed, its own method entry
    and `<name>/...` metrics, the training bookkeeping shared, `eval_weights` = "shadow/<name>" (generations.jsonl's
    tag). The run's own row then lists only the methods that acted on the live weights (a grid of shadows: "SFT")."""
    names = [n for n in metrics.get("shadows") or [] if isinstance(n, str)]
    if not names:
        return [(None, dict(metrics))]
    methods = [m for m in metrics.get("methods") or [] if isinstance(m, Mapping)]

    def owned(key: str) -> bool:
        return key.startswith("shadow/") or any(key.startswith(f"{n}/") for n in names)

    run = {k: v for k, v in metrics.items() if not owned(k)}
    acted = [m for m in methods if m.get("name") not in names]  # the methods that shaped the trajectory (EWC, ...)
    views: list[tuple[str | None, dict[str, Any]]] = [(None, {**run, "methods": acted, "_shadowed": True})]
    # run-wide keys only: the live weights' own scores (interp/, check/, live/, start/, eval_nan) are not a shadow's
    shared = {k: v for k, v in run.items() if not k.startswith(("interp/", "check/", "live/", "start/"))
              and k != "eval_nan"}  # fmt: skip
    for name in names:
        prefix = f"shadow/{name}/"
        view = {**shared, **{k: v for k, v in metrics.items() if k.startswith(f"{name}/")}}
        view.update({k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)})
        own = [m for m in methods if m.get("name") == name]
        view.update(methods=[*acted, *own], eval_weights=f"shadow/{name}", shadow=name, _shadowed=True)
        eta = metrics.get(f"{name}/eta", (own[0].get("args") or {}).get("eta") if own else None)
        if isinstance(eta, int | float):
            view["eta"] = eta  # the recipe column, as `ema/eta` gives it for a run with one EMA
        views.append((name, view))
    return views


def live_methods(metrics: Mapping[str, Any]) -> list[Any]:
    """metrics.json's `methods` without the shadow-mode ones of an eval.each_shadow run (they did not act on the
    weights behind the run's own metrics)."""
    return list(run_views(metrics)[0][1].get("methods") or [])


def _overrides(run_dir: Path) -> dict[str, Any]:
    """The job's own overrides (.hydra/overrides.yaml), without hydra.* and trial.* bookkeeping."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key.startswith(("hydra.", "trial.")) or not value:
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out[key] = parsed if _scalar(parsed) else value
    return out


# ---------------------------------------------------------------------------------------------------------------
# the frame


def _frame(rows: list[dict[str, Any]], labels: Mapping[str, str]) -> pd.DataFrame:
    params: list[str] = []
    for r in rows:  # an override of a fixed column (`method=[ema]`, `seed=0`) is that column, not another one
        params += [p for p in r.pop("_params") if p not in params and p not in FIRST + LAST]
        _derive(r)
    df = pd.DataFrame(rows)
    for c in FIRST + LAST:
        if c not in df.columns:
            df[c] = pd.Series(dtype=object if c in ("source", "study", "state", "method", "run_dir") else float)
    if len(df):
        df["method"] = [labels.get(s, m) for s, m in zip(df["study"], df["method"], strict=True)]
        df["feasible"] = _feasible(df)
    rest = sorted(c for c in df.columns if c not in FIRST + LAST + params)
    constraints = [c for c in rest if c.startswith("constraint/")]
    rest = [c for c in rest if c not in constraints]
    df = df[FIRST + sorted(params) + rest + constraints + LAST]
    df = df.sort_values(["study", "trial"], kind="stable").reset_index(drop=True)
    df.attrs["params"] = sorted(params)
    return df


def _derive(row: dict[str, Any]) -> None:
    """Fill the recipe columns from the sweep's parameters, else metrics.json, else the run dir's config.yaml."""
    shadowed = row.pop("_shadowed", False)  # a view of an eval.each_shadow run: its eta is the view's, not the sweep's
    for col, key in PARAM_KEYS.items():
        if key in row and row[key] is not None and not (shadowed and col == "eta"):
            row[col] = row[key]
    if col_missing(row, "eta") and "ema/eta" in row:
        row["eta"] = row["ema/eta"]
    if col_missing(row, "eta") and "status" in row:
        row["eta"] = 1.0  # metrics.json without ema/eta: EMA was not among the methods
    if any(col_missing(row, c) for c in ("lr", "batch_size", "grad_accum", "eta", "seed")) and row.get("run_dir"):
        _from_config(row, Path(row["run_dir"]) / "config.yaml")
    if col_missing(row, "effective_batch_size") and not col_missing(row, "batch_size"):
        row["effective_batch_size"] = row["batch_size"] * (1 if col_missing(row, "grad_accum") else row["grad_accum"])
    methods = row.pop("_methods", None)
    if methods is None and row.get("run_dir"):  # a study storage's trial: its run dir's record, live methods only
        methods = live_methods(_read_json(Path(row["run_dir"]) / "metrics.json") or {}) or None
    row["method"] = methods_label(methods, row) if isinstance(methods, list) else method_label(row.get("eta"))


def _from_config(row: dict[str, Any], path: Path) -> None:
    if not path.is_file():
        return
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    optim, method = cfg.get("optim") or {}, cfg.get("method") or {}
    found = {"lr": optim.get("lr"), "batch_size": optim.get("batch_size"), "grad_accum": optim.get("grad_accum"),
             "eta": (method.get("ema") or {}).get("eta", 1.0), "seed": cfg.get("seed")}  # fmt: skip
    for col, value in found.items():
        if col_missing(row, col) and value is not None:
            row[col] = value


def col_missing(row: Mapping[str, Any], col: str) -> bool:
    return row.get(col) is None or _isnan(row[col])


def _feasible(df: pd.DataFrame) -> pd.Series:
    """All constraints ≤ 0. A study with no constraints at all: every trial counts as feasible; in a study with
    constraints, a trial without values (it failed before being scored) does not."""
    cols = [c for c in df.columns if c.startswith("constraint/")]
    if not cols:
        return pd.Series(True, index=df.index)
    values = df[cols].apply(pd.to_numeric, errors="coerce")
    ok = (values.isna() | (values <= 0)).all(axis=1) & values.notna().any(axis=1)
    constrained = values.notna().any(axis=1).groupby(df["study"]).transform("any")
    return (ok | ~constrained).astype(bool)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float | np.number)


def _isnan(v: Any) -> bool:
    return isinstance(v, float | np.floating) and math.isnan(v)


def _guard(url: str, fn):
    """Run a storage call; a storage-level failure becomes one line naming the URL."""
    try:
        return fn()
    except AnalysisError:
        raise
    except KeyError as e:
        raise AnalysisError(f"storage '{url}': {e}") from None
    except Exception as e:  # SQLAlchemy, journal parsing, schema version, unreachable server: all user-facing
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AnalysisError(f"cannot read storage '{url}': {type(e).__name__}: {first[:300]}") from None
