"""The evaluated weights' distance from θ_aligned (sweeps.trial.Distance) in metrics.json and checks.jsonl."""

from __future__ import annotations

import math

import pytest
import torch

from sweeps.config import OptimConfig
from sweeps.loop import train
from sweeps.methods import EMA, MethodStack
from sweeps.trial import Distance
from tests.test_ema import TinyLM, _data


def test_the_distance_is_zero_at_the_aligned_weights_and_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    model.emb.weight.requires_grad_(False)  # out of the trainable scope: never counted
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    distance = Distance(model)
    assert distance() == {"distance_l2": 0.0, "distance_rel": 0.0}
    ema = EMA(eta=0.5)
    train(model, _data(), OptimConfig(lr=0.1, batch_size=4, max_steps=4), MethodStack([ema]), pad_id=0,
          progress=False)  # fmt: skip
    with torch.no_grad():
        model.emb.weight.add_(100.0)  # frozen weights moving does not change the distance

    def direct() -> tuple[float, float]:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        d = math.sqrt(sum(((p - start[n]) ** 2).sum().item() for n, p in model.named_parameters() if n in names))
        return d, d / math.sqrt(sum((start[n] ** 2).sum().item() for n in names))

    live = distance()
    assert live["distance_l2"] > 1e-3
    assert (live["distance_l2"], live["distance_rel"]) == tuple(pytest.approx(x) for x in direct())
    with ema.eval_weights():  # the evaluated (averaged) weights: nearer θ_aligned than the live ones
        averaged = distance()
        assert (averaged["distance_l2"], averaged["distance_rel"]) == tuple(pytest.approx(x) for x in direct())
    assert 0 < averaged["distance_l2"] < live["distance_l2"]


def _trial(tmp_path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from sweeps.validate import to_train_config
    from tests.conftest import CACHE_DIR, ROOT
    from tests.test_sweeps import TINY

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose("train", [*TINY, f"cache_dir={CACHE_DIR}", *overrides])
    return to_train_config(dcfg)


@pytest.mark.slow
def test_a_trial_records_distances_checks_and_interpolation_at_zero_and_one_exactly(tmp_path, toy_root) -> None:
    import json

    from sweeps.study.metrics import available_metrics
    from sweeps.trial import run_trial

    cfg = _trial(tmp_path, ["method=[ema]", "method.ema.eta=0.5", "eval.baseline=true", "eval.also_live=true",
                            "eval.interpolate=[0,0.5,1]", "trial.check_every=2", "trial.check_metric=utility_loss"])
    m = run_trial(cfg, tmp_path, progress=False)
    assert m["status"] == "completed"
    scored = [k for k in ("asr", "safety_loss", "compliance_loss", "over_refusal", "utility_loss", "utility_acc")
              if k in m]  # fmt: skip
    assert len(scored) >= 4
    for k in scored:  # α = 0 is θ_aligned, α = 1 the evaluated (EMA) weights: the same numbers exactly
        assert m[f"interp/0/{k}"] == m[f"start/{k}"], k
        assert m[f"interp/1/{k}"] == m[k], k
    assert m["interp/0/distance_l2"] == 0.0 and m["interp/1/distance_l2"] == m["distance_l2"] > 0
    assert m["interp/0.5/distance_l2"] == pytest.approx(m["distance_l2"] / 2, rel=1e-4)
    assert 0 < m["distance_l2"] < m["live/distance_l2"]  # the average lies nearer θ_aligned than the live weights
    rows = [json.loads(line) for line in (tmp_path / "checks.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["distance_l2"] > 0 and "safety_loss" in r and "utility_loss" in r for r in rows)  # safety: always
    assert m["check/distance_l2"] == rows[-1]["distance_l2"]
    numbers = {k for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert available_metrics(cfg) == numbers


def test_bad_interpolation_grid_is_one_line(tmp_path) -> None:
    from sweeps.config import ConfigError
    from sweeps.validate import validate

    with pytest.raises(ConfigError, match=r"eval\.interpolate: .*distinct"):
        validate(_trial(tmp_path, ["eval.interpolate=[0.5,0.5]"]))


@pytest.mark.slow
def test_each_shadow_scores_every_ema_exactly_as_its_own_run_and_the_live_weights_as_sft(tmp_path, toy_root) -> None:
    """eval.each_shadow: one trajectory, several shadow EMAs — each one's metrics and checks are those of the run
    with that EMA alone, and the run's result is plain fine-tuning's. EMAs not updated yet (every 1000) are θ_aligned:
    a check scores that once and reuses it (the reuse takes no time)."""
    import json

    from sweeps.study.metrics import available_metrics
    from sweeps.trial import run_trial

    second = "+method.ema_b={_target_:sweeps.methods.EMA,eta:0.5,every:2,convention:old}"
    check = ["trial.check_every=2", "trial.check_metric=utility_loss"]
    idle = ["+method.ema_c={_target_:sweeps.methods.EMA,eta:0.5,every:1000}",
            "+method.ema_d={_target_:sweeps.methods.EMA,eta:0.25,every:1000,convention:old}"]  # fmt: skip
    cfg = _trial(tmp_path, ["method=[ema]", second, *idle, "eval.each_shadow=true", *check])
    grid = run_trial(cfg, tmp_path / "grid", progress=False)
    solo_c = run_trial(_trial(tmp_path, ["method=[]", idle[0], *check]), tmp_path / "c", progress=False)
    sft = run_trial(_trial(tmp_path, ["method=[]", *check]), tmp_path / "sft", progress=False)
    solo_b = run_trial(_trial(tmp_path, ["method=[]", second, *check]), tmp_path / "b", progress=False)
    assert grid["status"] == sft["status"] == solo_b["status"] == solo_c["status"] == "completed"
    assert grid["shadows"] == ["ema", "ema_b", "ema_c", "ema_d"] and grid["eval_weights"] == "live"
    scored = [k for k in ("asr", "safety_loss", "over_refusal", "utility_loss", "distance_l2") if k in sft]
    assert len(scored) >= 4
    for k in scored:
        assert grid[k] == sft[k], k
        assert grid[f"shadow/ema_b/{k}"] == solo_b[k], k
    assert 0 < grid["shadow/ema_b/distance_l2"] < grid["distance_l2"]
    assert grid["shadow/ema/distance_l2"] != grid["shadow/ema_b/distance_l2"]

    def checks(d):
        return [json.loads(line) for line in (tmp_path / d / "checks.jsonl").read_text().splitlines()]

    for row, alone, idle_alone in zip(checks("grid"), checks("b"), checks("c"), strict=True):
        same = [k for k in alone if k not in ("step", "loss") and not k.endswith("_time_s")]
        assert len(same) >= 3 and {k: row[f"shadow/ema_b/{k}"] for k in same} == {k: alone[k] for k in same}
        for name in ("ema_c", "ema_d"):  # θ_aligned's check, scored once in the whole run
            assert {k: row[f"shadow/{name}/{k}"] for k in same} == {k: idle_alone[k] for k in same}
        assert row["shadow/ema_d/eval_time_s"] == 0.0 and row["shadow/ema_d/distance_l2"] == 0.0
    assert [r["shadow/ema_c/eval_time_s"] > 0 for r in checks("grid")] == [True] + [False] * (len(checks("c")) - 1)
    for row, alone in zip(checks("grid"), checks("sft"), strict=True):  # the run's own checks: the live weights
        assert all(row[k] == alone[k] for k in alone if k != "loss" and not k.endswith("_time_s"))
    tags = {json.loads(line)["weights"] for line in (tmp_path / "grid" / "generations.jsonl").read_text().splitlines()}
    assert tags == {"live", "shadow/ema", "shadow/ema_b", "shadow/ema_c", "shadow/ema_d"}
    numbers = {k for k, v in grid.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert available_metrics(cfg) == numbers
