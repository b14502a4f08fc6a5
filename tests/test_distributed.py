"""Several processes (sweeps.distributed): torchrun with 2 gloo processes × batch 4 is the same trial as 1 process ×
batch 8 on the same examples: loss curve, final weights and (with EMA) the evaluated weights, to float tolerance —
under DDP and under FSDP2 (`model.distributed=fsdp`, full fine-tuning sharded over the 2 CPU processes). And the
sweeper's `hydra.sweeper.launch=torchrun`: each trial one 2-process torchrun job."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from hydra_plugins.safety_sweeper.sweeper import _validate
from sweeps import distributed
from sweeps.config import ConfigError, DatasetConfig, TrainConfig
from sweeps.study.runner import STDERR_TAIL, SweepSettings, check_settings, run_torchrun
from sweeps.validate import validate
from tests.conftest import CACHE_DIR, PYTHON, ROOT
from tests.test_sweeps import SPACE, _study, _sweep

# SGD: AdamW's g/√v turns float-rounding differences of near-zero gradients into lr-sized steps, so its weights
# would agree only to ~lr; SGD's update is linear in the gradient and the weights agree to float tolerance
TINY = ["optim.max_steps=3", "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "eval.asr.limit=2",
        "eval.accuracy_limit=2", "eval.asr.max_new_tokens=4", "eval.accuracy_max_new_tokens=4",
        "output.save_final=true", "output.save_eval_weights=true", f"cache_dir={CACHE_DIR}"]  # fmt: skip


def _train(run_dir: Path, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone"] \
        if nproc > 1 else [PYTHON]  # fmt: skip
    return subprocess.run([*launch, "-m", "sweeps.train", f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip


def _log(run_dir: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> list[float]:
    return _log(run_dir, "loss")


@pytest.mark.parametrize(
    ("single", "per_rank", "extra"),
    [
        (["optim.batch_size=8"], ["optim.batch_size=4"], []),
        # accumulation too: 1 × (4 × 2) vs 2 × (2 × 2), so no_sync and the global token weighting are exercised
        (["optim.batch_size=4"], ["optim.batch_size=2"], ["optim.grad_accum=2", "method=[ema]", "method.ema.eta=0.5"]),
        (["optim.batch_size=8"], ["optim.batch_size=4"], ["model.lora.enabled=true", "model.lora.dropout=0"]),
        # FSDP: each rank trains half of every weight; EMA on the local shards (init=first: its copy path too),
        # gathered for rank 0's evaluation. The default grad_clip 1.0 acts on every step (norms ≈ 20-50), so a
        # per-shard norm instead of the global one would change the weights
        (["optim.batch_size=4"], ["optim.batch_size=2", "model.distributed=fsdp"],
         ["optim.grad_accum=2", "method=[ema]", "method.ema.eta=0.5", "method.ema.init=first"]),
    ],
    ids=["plain", "ema-accum", "lora", "fsdp-ema-accum"],
)
def test_ddp_two_by_four_matches_one_by_eight(tmp_path, toy_root, single, per_rank, extra) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    proc = _train(one, 1, *single, *TINY, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train(two, 2, *per_rank, *TINY, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank leaves the process group together after training (none tears down alone while rank 0 evaluates)
    left = re.findall(r"rank (\d) left the process group after training", proc.stdout + proc.stderr)
    assert sorted(left) == ["0", "1"]
    if "model.distributed=fsdp" in per_rank:  # sharded, not replicated: each rank holds its half of the values
        found = re.findall(r"fsdp: (\d+) decoder layers \+ root sharded over 2 ranks; this rank holds (\d+) of (\d+)",
                           proc.stdout + proc.stderr)  # fmt: skip
        assert len(found) == 2 and all(int(layers) > 0 for layers, _, _ in found)
        assert sum(int(held) for _, held, _ in found) == int(found[0][2]) > max(int(held) for _, held, _ in found)
        # only rank 0 read the weights; rank 1 built the model on the meta device and got its shards from rank 0
        assert (proc.stdout + proc.stderr).count("parameter values (built on the meta device, shards from rank 0)") == 1
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    assert _log(two, "grad_norm") == pytest.approx(_log(one, "grad_norm"), rel=1e-4)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["effective_batch_size"] == m1["effective_batch_size"] == 8 and m2["world_size"] == 2
    assert m2["train_tokens"] == m1["train_tokens"]
    for name in ("final", "eval"):
        w1, w2 = (load_file(d / "weights" / f"{name}.safetensors") for d in (one, two))
        assert w1.keys() == w2.keys()
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    if "method=[ema]" in extra:  # the evaluated weights are the average, not the live ones
        assert m2["eval_weights"] == "method" and m2["ema/updates"] == m1["ema/updates"] == 3
    assert not list(two.glob("*.tmp")) and (two / "generations.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one run dir per trial, whatever the ranks


def test_bad_combination_stops_every_rank_before_training(tmp_path, toy_root) -> None:
    run_dir = tmp_path / "run"
    proc = _train(run_dir, 2, "method=[agem]", *TINY)
    assert proc.returncode != 0
    assert proc.stderr.count("error: invalid config:") == 1  # said once (rank 0), not once per rank
    assert "method.agem: AGEM does not support several processes" in proc.stderr
    assert not (run_dir / "train_log.jsonl").exists() and not (run_dir / "metrics.json").exists()


def test_shards_cover_the_global_batch_without_duplicates() -> None:
    rows = list(range(12))
    parts = [distributed.shard(rows, distributed.World(3, r, r)) for r in range(3)]
    assert [x for p in parts for x in p] == rows


def _cfg(**model) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.train = DatasetConfig(source="toy", name="task")
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def _errors(cfg: TrainConfig, size: int = 2) -> str:
    return "\n".join(distributed.distributed_errors(cfg, distributed.World(size, 0, 0)))


def test_refusals_name_the_key(monkeypatch) -> None:
    assert _errors(_cfg()) == ""
    assert _errors(_cfg(), size=1) == ""
    cfg = _cfg(distributed="fsdp")
    cfg.model.lora.enabled = True
    assert _errors(cfg).splitlines() == ["model.distributed: fsdp shards full fine-tuning only; with "
                                         "model.lora.enabled use ddp (the adapters are small, DDP replicates them)"]
    cfg = _cfg(distributed="fsdp")  # full fine-tuning, alone or with EMA: runs
    assert _errors(cfg) == ""
    cfg.method = {"ema": {"_target_": "sweeps.methods.EMA"}}
    assert _errors(cfg) == ""
    for key, target in [("magmax", "MagMax"), ("agem", "AGEM"), ("lwf", "LwF")]:  # full parameters: one line each
        cfg.method = {key: {"_target_": f"sweeps.methods.{target}"}}
        assert _errors(cfg) == f"method.{key}: {target} does not support model.distributed=fsdp (it needs the full " \
            "parameters on every rank); use model.distributed=ddp"  # fmt: skip
    assert _errors(cfg, size=1) == ""  # one process: nothing is sharded
    assert "model.distributed: 'zero3'" in _errors(_cfg(distributed="zero3"))
    cfg = _cfg()
    cfg.trial.check_every = 5
    assert _errors(cfg).startswith("trial.check_every:")
    cfg = _cfg()
    cfg.method = {"ewc": {"_target_": "sweeps.methods.EWC"}, "ema": {"_target_": "sweeps.methods.EMA"}}
    assert _errors(cfg) == "method.ewc: EWC does not support several processes (its data stream (memory) is not " \
        "sharded); run it without torchrun"  # fmt: skip
    cfg.method = {"lwf": {"_target_": "sweeps.methods.LwF"}}
    assert "method.lwf: LwF does not support several processes (its extra_loss hook" in _errors(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert "nproc_per_node: 2 processes on this node but 1 CUDA device(s)" in _errors(_cfg())
    assert "model.device: 'cuda:1' under torchrun" in _errors(_cfg(device="cuda:1"))


def test_validate_reports_distributed_errors(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _cfg()
    cfg.trial.check_every = 3
    with pytest.raises(ConfigError, match=r"trial\.check_every: intermediate checks"):
        validate(cfg)
    # FSDP's refusals go the same way (the torchrun test above shows validate() stops every rank before training)
    cfg = _cfg(distributed="fsdp")
    cfg.method = {"magmax": {"_target_": "sweeps.methods.MagMax"}}
    with pytest.raises(ConfigError, match=r"method\.magmax: MagMax does not support model\.distributed=fsdp"):
        validate(cfg)
    cfg = _cfg(distributed="fsdp")
    cfg.model.lora.enabled = True
    with pytest.raises(ConfigError, match=r"model\.distributed: fsdp shards full fine-tuning only"):
        validate(cfg)


# each trial a 2-process torchrun job; smaller than test_sweeps' TINY (every trial pays torchrun's start twice)
TORCHRUN = ["hydra.sweeper.launch=torchrun", "hydra.sweeper.nproc_per_node=2", "optim.max_steps=2",
            "eval.asr.limit=4", "data.utility.limit=4", "data.overrefusal.limit=4", "eval.asr.max_new_tokens=4",
            "eval.accuracy_max_new_tokens=4"]  # fmt: skip


def test_sweep_launches_each_trial_as_a_torchrun_job(tmp_path, toy_root) -> None:
    proc = _sweep(tmp_path, "tr", *SPACE, *TORCHRUN, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path, "tr").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:  # one run dir per trial, where Hydra's launcher would have put it, written by rank 0
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == tmp_path / str(t.number)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["status"] == "completed"
        assert t.values == [metrics["asr"], metrics["utility_acc"]]
        assert metrics["effective_batch_size"] == 2 * t.params["optim.batch_size"]
        assert not (run_dir / STDERR_TAIL).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]


def test_failed_torchrun_trial_fails_and_bad_world_stops_before_any_trial(tmp_path, toy_root) -> None:
    # flash_attention_2 passes every config check but cannot load here (no flash-attn, no CUDA): each rank raises
    fail = tmp_path / "fail"
    proc = _sweep(fail, "fail", "optim.lr=tag(log, interval(1e-4, 1e-3))", *TORCHRUN, "hydra.sweeper.n_trials=1",
                  "model.attn_implementation=flash_attention_2", "hydra.sweeper.max_failure_rate=1.0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [trial] = _study(fail, "fail").trials
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith("torchrun exited with 1: ImportError: FlashAttention2 has been toggled on"), reason
    assert not (fail / "0" / "metrics.json").exists()
    assert "ChildFailedError" in (fail / "0" / STDERR_TAIL).read_text()
    # a method the trial's 2 ranks would refuse is refused by the sweeper, before any trial is asked
    bad = tmp_path / "bad"
    proc = _sweep(bad, "bad", "optim.lr=tag(log, interval(1e-4, 1e-3))", *TORCHRUN, "method=[agem]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: search space: method.agem: AGEM does not support several processes" in proc.stderr
    assert not list(bad.glob("*/"))  # no run dir


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "torchrun was killed by signal 9"),
        # rank 0 finished, another rank did not: the job failed, whatever rank 0 wrote
        ("import pathlib, sys; pathlib.Path(sys.argv[1], 'metrics.json').write_text('{}'); "
         "sys.exit('error: rank 1 lost')", "torchrun exited with 1: error: rank 1 lost"),
    ],
    ids=["killed", "rank-failed"],
)
def test_failed_or_killed_job_is_a_failed_outcome(tmp_path, script, reason) -> None:
    out = run_torchrun([PYTHON, "-c", script, str(tmp_path)], tmp_path)
    assert out.metrics is None and out.run_dir == str(tmp_path)
    assert out.error == f"{reason} (stderr tail: {tmp_path / STDERR_TAIL})"
    assert (tmp_path / STDERR_TAIL).exists()


def test_launch_settings_name_the_key(monkeypatch) -> None:
    def errors(**kw) -> list[str]:
        return check_settings(SweepSettings(**kw))

    assert errors(launch="torchrun", nproc_per_node=8) == []  # on CPU (gloo) any N
    assert errors(launch="mpirun") == ["hydra.sweeper.launch: 'mpirun' is not one of ['hydra', 'torchrun']"]
    assert errors(launch="torchrun", nproc_per_node=0) == ["hydra.sweeper.nproc_per_node: must be an integer >= 1, "
                                                           "got 0"]  # fmt: skip
    assert errors(nproc_per_node=2) == ["hydra.sweeper.nproc_per_node: 2 processes per trial need "
                                        "hydra.sweeper.launch=torchrun"]  # fmt: skip
    assert errors(launch="torchrun", n_jobs=2)[0].startswith("hydra.sweeper.n_jobs: launch=torchrun runs one trial")
    # the trial's devices: as many CUDA devices as processes, counted in this worker's CUDA_VISIBLE_DEVICES
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert "hydra.sweeper.nproc_per_node: 2 processes on this node but 1 CUDA device(s) (CUDA_VISIBLE_DEVICES=3)" \
        in _validate(_cfg(device="auto"), nproc=2)  # fmt: skip
    assert _validate(_cfg(device="auto"), nproc=1) == []
    assert _validate(_cfg(device="cpu"), nproc=4) == []
