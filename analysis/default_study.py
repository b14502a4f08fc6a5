"""The whole default study on the toy world, end to end (the README's main command):

    python -m analysis.default_study [--out reports/toy_default]

1. sweep   `python -m sweeps.train -m search_space=toy_study` (8 trials; resumes if interrupted)
2. landscapes around θ_aligned: a 2-D random plane, and the plane through θ_aligned, the best feasible trial and the
   plain-SFT baseline with every other trial projected onto it
3. report  `python -m analysis report` over the study: figures, tables, index page

Each stage is its own command (printed before it runs), so any of them can be rerun alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

STUDY = "toy_default"


def _run(args: list[str]) -> None:
    print("\n$ " + shlex.join(["python", *args[1:]]), flush=True)
    proc = subprocess.run(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.exit(f"error: stage failed (exit {proc.returncode}): {shlex.join(args[1:])}")


def _best_and_baseline(sweep_dir: Path) -> tuple[int, int, list[int]]:
    """(best feasible trial by utility on the front, the enqueued fast-lr SFT baseline, every other complete trial)."""
    from optuna.trial import TrialState

    from sweeps.study.storage import load_study

    study = load_study(STUDY, str(sweep_dir / "optuna.journal"))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and (sweep_dir / str(t.number) /
            "weights" / "eval.safetensors").exists()]  # fmt: skip
    front = study.best_trials
    feasible = [t for t in front if t.user_attrs.get("feasible")] or front
    best = max(feasible, key=lambda t: t.values[1])
    baseline = next((t for t in done if t.user_attrs.get("baseline") and t.number != best.number), None)
    if baseline is None:
        baseline = max((t for t in done if t.number != best.number), key=lambda t: t.values[0])
    others = [t.number for t in done if t.number not in (best.number, baseline.number)]
    return best.number, baseline.number, others


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the whole default toy-world study.")
    parser.add_argument("--out", default=f"reports/{STUDY}", help="report folder")
    args = parser.parse_args(argv)
    py = sys.executable
    sweep_dir = Path("multirun") / STUDY
    out = Path(args.out)

    _run([py, "-m", "sweeps.train", "-m", "search_space=toy_study"])
    best, baseline, others = _best_and_baseline(sweep_dir)
    weights = lambda n: str(sweep_dir / str(n) / "weights" / "eval.safetensors")  # noqa: E731
    _run([py, "-m", "landscape", f"hydra.run.dir={out / 'landscape_random'}", "landscape.points=9"])
    _run([py, "-m", "landscape", f"hydra.run.dir={out / 'landscape_plane'}", "landscape.mode=plane",
          "landscape.points=9", f"landscape.targets=[{weights(best)},{weights(baseline)}]",
          f"landscape.overlay=[{','.join(weights(n) for n in others)}]"])  # fmt: skip
    _run([py, "-m", "analysis", "report", str(sweep_dir), "-o", str(out), "--quiet"])
    print(f"\nstudy done. report: {out}/index.md   landscapes: {out}/landscape_random, {out}/landscape_plane"
          f"\n(plane: θ_aligned at (0,0), best feasible trial {best} at (1,0), plain-SFT baseline {baseline} at (0,1))"
          f"\nwatch the study: optuna-dashboard {sweep_dir / 'optuna.journal'} --host 127.0.0.1")  # fmt: skip


if __name__ == "__main__":
    main()
