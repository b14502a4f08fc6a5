"""Sweep overhead per trial (a real `hydra/sweeper=safety` subprocess) and model set-up with reuse vs reloading.

    .venv/bin/python bench/bench_sweep.py [--cache-dir .cache] [--trials 6] [--steps 30] [--threads 2]
        [--eval-limit N] [--repeats 15] [--model-dir DIR]

Overhead = the sweep's wall time minus the sum of its trials' own `wall_time_s`, split exactly (from metrics.json
mtimes) into one-off costs (start-up until run dir 0, trial 0's lazy imports, exit) and the gaps every further trial
pays; a rerun of the same command (study full: zero trials) times the bare start-up. Also: `POOL.acquire` on a warm
pool vs `load_model` from disk. Prints a table, then one line `JSON {...}`. Goal: ≤ 1 s or ≤ 2 % overhead per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `sweeps` importable

from sweeps.config import ModelConfig
from sweeps.models import POOL, load_model
from sweeps.toyworld import WorldConfig, ensure_world

ROOT = Path(__file__).resolve().parents[1]


def sweep_cmd(sweep_dir: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "sweeps.train", "-m", "hydra/sweeper=safety", f"hydra.sweep.dir={sweep_dir}",
           "hydra.sweeper.study_name=bench", f"hydra.sweeper.n_trials={args.trials}", f"optim.max_steps={args.steps}",
           "optim.lr=tag(log, interval(1e-4, 1e-3))"]  # fmt: skip
    if args.eval_limit:
        cmd += [f"{k}={args.eval_limit}" for k in ("eval.asr.limit", "data.utility.limit", "data.overrefusal.limit")]
    return cmd


def run_sweep(cmd: list[str], env: dict[str, str], first_dir: Path) -> tuple[float, float, float | None, str]:
    """(start epoch s, wall s, s until `first_dir` appeared or None, stdout); polls for the first trial's run dir."""
    t0, start = time.time(), time.perf_counter()
    first = None
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        while p.poll() is None and first is None:
            if first_dir.exists():
                first = time.perf_counter() - start
            time.sleep(0.01)
        out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"sweep failed (rc={p.returncode}):\n{err[-3000:]}")
    return t0, time.perf_counter() - start, first, out


def bench_sweep(args: argparse.Namespace) -> dict[str, float | bool]:
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(Path(args.cache_dir).resolve()), "OMP_NUM_THREADS": str(args.threads),
           "HYDRA_FULL_ERROR": "0"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        sweep_dir = Path(tmp)
        t0, wall, dir0, _ = run_sweep(sweep_cmd(sweep_dir, args), env, sweep_dir / "0")
        _, rerun, _, out = run_sweep(sweep_cmd(sweep_dir, args), env, sweep_dir / "never")
        assert "0 trial(s) run now" in out, out[-2000:]
        files = [sweep_dir / str(n) / "metrics.json" for n in range(args.trials)]
        metrics = [json.loads(f.read_text()) for f in files]
        assert all(m["status"] == "completed" for m in metrics), [m["status"] for m in metrics]
        trial_s = [m["wall_time_s"] for m in metrics]
        done = [f.stat().st_mtime for f in files]  # metrics.json is written last, right after wall_time_s is taken
    assert dir0 is not None, "run dir 0 never appeared"
    # overhead = start-up (to run dir 0) + trial 0's preamble + the gaps between trials + the exit, exactly
    pre0 = done[0] - trial_s[0] - t0 - dir0  # the task's lazy imports (torch, transformers) before run_trial
    tail = t0 + wall - done[-1]  # tell, summary callback, interpreter exit
    gaps = [b - a - t for a, b, t in zip(done, done[1:], trial_s[1:], strict=False)]  # tell, ask, launch, compose
    n, overhead = args.trials, wall - sum(trial_s)
    per_excl = sum(gaps) / len(gaps)  # = (overhead - one-off costs) / (n - 1): what every further trial pays
    med = statistics.median(trial_s)
    return {"trials": n, "sweep_wall_s": wall, "trials_sum_s": sum(trial_s), "trial_median_s": med,
            "trial_first_s": trial_s[0], "overhead_s": overhead, "overhead_per_trial_s": overhead / n,
            "overhead_pct": 100 * overhead / n / med, "startup_rerun_s": rerun, "startup_first_dir_s": dir0,
            "first_trial_preamble_s": pre0, "exit_s": tail, "one_off_s": dir0 + pre0 + tail,
            "overhead_per_trial_excl_startup_s": per_excl, "overhead_pct_excl_startup": 100 * per_excl / med,
            "goal_met": per_excl <= 1.0 or per_excl <= 0.02 * med,
            "trials_per_hour": 3600 * n / wall, "trials_per_hour_steady": 3600 / (med + per_excl)}  # fmt: skip


def bench_setup(cfg: ModelConfig, path: str, repeats: int) -> dict[str, float | bool]:
    """Median seconds for `POOL.acquire` on a warm pool vs `load_model` from disk, interleaved; restore check."""
    POOL.acquire(cfg, path)  # warm: the pool's one load, and the page cache for load_model
    load_model(cfg, path)
    times: dict[str, list[float]] = {"acquire": [], "load": []}
    for _ in range(repeats):
        start = time.perf_counter()
        model, _ = POOL.acquire(cfg, path)
        times["acquire"].append(time.perf_counter() - start)
        POOL.release(model)
        start = time.perf_counter()
        fresh, _ = load_model(cfg, path)
        times["load"].append(time.perf_counter() - start)
    with torch.no_grad():  # a trial trains the pooled model; the next acquire must undo that exactly
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    restored = POOL.acquire(cfg, path)[0].state_dict()
    identical = all(torch.equal(v, restored[k]) for k, v in fresh.state_dict().items())
    acq, load = statistics.median(times["acquire"]), statistics.median(times["load"])
    return {"params_m": sum(p.numel() for p in fresh.parameters()) / 1e6, "acquire_ms": 1000 * acq,
            "load_ms": 1000 * load, "speedup": load / acq, "restored_identical": identical}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--steps", type=int, default=30, help="optim.max_steps per trial")
    ap.add_argument("--eval-limit", type=int, default=None, help="limit ASR/utility/over-refusal sets (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in-process; OMP_NUM_THREADS for the sweep")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved acquire/load repeats")
    ap.add_argument("--model-dir", default=None, help="also time a local HF model dir")
    args = ap.parse_args()
    if args.trials < 2:
        ap.error("--trials: at least 2 (the per-trial gap is measured between trials)")
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    load_before = os.getloadavg()[0]  # a busy machine (other jobs on these cores) skews every number here
    sw = bench_sweep(args)  # first, alone: nothing in-process competes for the cores
    models = {"toy aligned": str(ensure_world(WorldConfig(), args.cache_dir) / "aligned")}
    if args.model_dir:
        models[Path(args.model_dir).name] = args.model_dir
    setup = {name: bench_setup(ModelConfig(device="cpu"), path, args.repeats) for name, path in models.items()}

    load = (load_before, os.getloadavg()[0])
    print(f"sweep: {sw['trials']} trials × {args.steps} steps, eval limit {args.eval_limit}, threads={args.threads}, "
          f"{os.cpu_count()} CPUs, load avg (1 min) before/after {load[0]:.2f}/{load[1]:.2f}")  # fmt: skip
    rows = [("sweep wall s", "sweep_wall_s"), ("sum of trials' wall_time_s", "trials_sum_s"),
            ("trial median s", "trial_median_s"), ("  first trial s (pool loads model)", "trial_first_s"),
            ("overhead s (wall - trials)", "overhead_s"), ("overhead s / trial, all-in", "overhead_per_trial_s"),
            ("  % of a median trial", "overhead_pct"), ("one-off s: start-up to run dir 0", "startup_first_dir_s"),
            ("  + trial 0 preamble (imports)", "first_trial_preamble_s"), ("  + after last trial (exit)", "exit_s"),
            ("  (rerun with 0 trials left)", "startup_rerun_s"),
            ("overhead s / trial, excl one-off", "overhead_per_trial_excl_startup_s"),
            ("  % of a median trial", "overhead_pct_excl_startup"), ("goal met (<=1 s or <=2 %)", "goal_met"),
            ("trials/hour (this sweep)", "trials_per_hour"),
            ("trials/hour (steady state)", "trials_per_hour_steady")]  # fmt: skip
    for label, key in rows:
        print(f"  {label:<36}{sw[key]!s:>10}" if key == "goal_met" else f"  {label:<36}{sw[key]:>10.3f}")
    print(f"{'model set-up (median of ' + str(args.repeats) + ')':<26}{'params M':>9}{'acquire ms':>12}"
          f"{'load ms':>10}{'speedup':>9}{'identical':>11}")  # fmt: skip
    for name, r in setup.items():
        print(f"  {name:<24}{r['params_m']:>9.2f}{r['acquire_ms']:>12.2f}{r['load_ms']:>10.1f}"
              f"{r['speedup']:>8.1f}x{r['restored_identical']!s:>11}")  # fmt: skip
    print("JSON " + json.dumps({"args": vars(args), "load_avg": load, "sweep": sw, "setup": setup}))


if __name__ == "__main__":
    main()
