"""Sweeper logic without Hydra jobs: search-space grammar, settings checks, sampler seeding, lease recovery."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeps.study.runner import (
    SweepSettings,
    budget_used,
    check_settings,
    override_value,
    parse_constraint,
    parse_objectives,
    recover_stale,
)
from sweeps.study.space import SearchSpaceError, fingerprint, grid_values, parse_space


def test_grammar_maps_to_optuna_distributions() -> None:
    space, fixed = parse_space([
        "a=interval(0.1, 0.5)", "b=int(interval(1, 8))", "c=tag(log, interval(1e-5, 1e-2))", "d=range(1, 9, 2)",
        "e=range(0.0, 1.0, 0.25)", "f=choice(1.0, 0.5, 0.25)", "g=3", "h=choice([],[ema])",
    ])  # fmt: skip
    assert space["a"] == FloatDistribution(0.1, 0.5)
    assert space["b"] == IntDistribution(1, 8)
    assert space["c"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space["d"] == IntDistribution(1, 7, step=2)  # stop-exclusive
    assert grid_values("d", space["d"]) == [1, 3, 5, 7]
    assert grid_values("e", space["e"]) == [0.0, 0.25, 0.5, 0.75]
    assert space["f"] == CategoricalDistribution([1.0, 0.5, 0.25])
    assert fixed == {"g": "3"}
    assert parse_space(["a=choice(1,2)", "a=5"]) == ({}, {"a": "5"})  # the later override wins


@pytest.mark.parametrize("arg", ["x=interval(2, 1)", "x=tag(log, interval(0, 1))", "x=range(5, 1)"])
def test_bad_search_space_names_the_key(arg: str) -> None:
    with pytest.raises(SearchSpaceError, match=r"^x: "):
        parse_space([arg])


def test_grid_refuses_continuous_interval() -> None:
    with pytest.raises(SearchSpaceError, match="grid"):
        grid_values("lr", FloatDistribution(1e-5, 1e-3, log=True))


def test_settings_checks_and_parsers() -> None:
    assert check_settings(SweepSettings()) == []
    bad = SweepSettings(n_trials=0, sampler="cma", objectives=["asr:up", "b:min"], constraints=["asr<5%"],
                        pruner="median", on_failure="ignore", max_failure_rate=2)
    errors = check_settings(bad)
    text = "\n".join(errors)
    for key in ("n_trials", "sampler", "objectives", "constraints", "pruner", "on_failure", "max_failure_rate"):
        assert f"hydra.sweeper.{key}" in text
    assert parse_objectives(["asr:min", "utility_acc:maximize"]) == {"asr": "minimize", "utility_acc": "maximize"}
    assert parse_constraint("asr <= 0.05") == ("asr", "<=", 0.05)
    assert parse_constraint("utility_acc>=0.5") == ("utility_acc", ">=", 0.5)
    assert [override_value(v) for v in (None, True, 1e-05, 3, "x")] == ["null", "true", "1e-05", "3", "x"]


def test_fingerprint_changes_with_space_and_objectives_only() -> None:
    space, fixed = parse_space(["lr=tag(log, interval(1e-5, 1e-2))", "optim.max_steps=10"])
    a = fingerprint(space, fixed, {"asr": "minimize"}, ["asr<=0.05"])
    assert a == fingerprint(space, fixed, {"asr": "minimize"}, ["asr <= 0.05"])
    assert a["hash"] != fingerprint(space, fixed, {"asr": "maximize"}, ["asr<=0.05"])["hash"]
    other, _ = parse_space(["lr=tag(log, interval(1e-6, 1e-2))"])
    assert a["hash"] != fingerprint(other, fixed, {"asr": "minimize"}, ["asr<=0.05"])["hash"]


def test_expired_lease_fails_and_requeues_once() -> None:
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    live, dead = study.ask(dist), study.ask(dist)
    live.set_user_attr("lease_until", time.time() + 60)
    dead.set_user_attr("lease_until", time.time() - 1)
    assert recover_stale(study) == [dead.number]
    assert recover_stale(study) == []  # only once
    frozen = study.trials
    assert frozen[dead.number].state == TrialState.FAIL and frozen[dead.number].user_attrs["requeued"]
    assert frozen[live.number].state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == dead.params
    assert budget_used(study) == 1  # the live trial; the dead one and the queued copy do not count
