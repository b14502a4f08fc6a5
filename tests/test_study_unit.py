"""Sweeper logic without Hydra jobs: search-space grammar, settings checks, sampler seeding, lease recovery."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeps.study.lease import DEAD, EXPIRED, LIVE, host_identity, new_lease, process_start, verdict
from sweeps.study.runner import (
    Outcome,
    Sweep,
    SweepError,
    SweepSettings,
    budget_used,
    check_enqueue,
    check_sampling,
    check_settings,
    override_value,
    parse_constraint,
    parse_objectives,
    recover_stale,
)
from sweeps.study.space import SearchSpaceError, fingerprint, grid_values, parse_space, probe_points
from tests.conftest import ROOT


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


ELSEWHERE = {"host": "other-node", "boot": "b", "pidns": "pid:[1]"}


def test_expired_lease_fails_and_requeues_once() -> None:
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    live, dead = study.ask(dist), study.ask(dist)
    live.set_user_attr("lease", {**ELSEWHERE, "pid": 1, "start": "1", "until": time.time() + 60})
    dead.set_user_attr("lease", {**ELSEWHERE, "pid": 1, "start": "1", "until": time.time() - 1})
    assert recover_stale(study) == [dead.number]
    assert "lease expired" in study.trials[dead.number].user_attrs["fail_reason"]
    assert recover_stale(study) == []  # only once
    frozen = study.trials
    assert frozen[dead.number].state == TrialState.FAIL and frozen[dead.number].user_attrs["requeued"]
    assert frozen[live.number].state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == dead.params
    assert budget_used(study) == 1  # the live trial; the dead one and the queued copy do not count


def _dead_pid() -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = process_start(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def test_process_start_tells_live_dead_and_zombie_processes() -> None:
    assert process_start(os.getpid()) == process_start(os.getpid()) != ""
    pid, start = _dead_pid()
    assert start and process_start(pid) is None
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(zombie.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while process_start(zombie.pid) is not None and time.time() < deadline:  # killed, not reaped yet
            time.sleep(0.05)
        assert process_start(zombie.pid) is None
    finally:
        zombie.wait()


def test_liveness_rule_same_host_and_other_hosts() -> None:
    me, now = host_identity(), time.time()
    mine = new_lease(60, now)
    assert mine["pid"] == os.getpid() and all(mine[k] == me[k] for k in ("host", "boot", "pidns"))
    assert verdict(mine, now) == LIVE
    pid, start = _dead_pid()
    # same host, the worker process is gone: dead at once, long before its lease would expire
    assert verdict({**mine, "pid": pid, "start": start}, now) == DEAD
    # same host, the pid now belongs to another process (other start time): dead too
    assert verdict({**mine, "start": str(int(mine["start"]) + 1)}, now) == DEAD
    # another host: only the lease can tell; a fresh lease is waited for, an expired one is re-queued
    other = {**mine, **ELSEWHERE, "pid": pid, "start": start}
    assert verdict(other, now) == LIVE
    assert verdict({**other, "until": now - 1}, now) == EXPIRED
    # same host, but another pid namespace (a container): its pids mean nothing here
    assert verdict({**mine, "pidns": "pid:[42]", "pid": pid}, now) == LIVE
    # a live same-host worker whose lease lapsed (stopped, storage down) counts as lost, as on other hosts
    assert verdict({**mine, "until": now - 1}, now) == EXPIRED


def test_dead_same_host_worker_is_requeued_before_its_lease_expires() -> None:
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    dead, unleased = study.ask(dist), study.ask(dist)
    pid, start = _dead_pid()
    dead.set_user_attr("lease", {**new_lease(3600), "pid": pid, "start": start})
    later = time.time() + 30  # `unleased` was killed between ask and its first lease write
    assert recover_stale(study, unleased_after=10, now=later) == [dead.number, unleased.number]
    study2 = optuna.create_study()
    study2.ask(dist)
    assert recover_stale(study2, unleased_after=10) == []  # just asked: its lease is on the way
    reasons = [study.trials[n].user_attrs["fail_reason"] for n in (dead.number, unleased.number)]
    assert f"pid {pid}" in reasons[0] and "no longer running" in reasons[0] and "no lease" in reasons[1]


def _fake_launch(calls: list[list[str]]):
    def launch(overrides: list[list[str]], numbers: list[int]) -> list[Outcome]:
        calls.extend(overrides)
        return [Outcome(metrics={"status": "completed", "asr": 0.1, "utility_acc": 0.5}) for _ in overrides]

    return launch


def _held_elsewhere(tmp_path, n_trials: int, until: float) -> tuple[Sweep, int]:
    """A study whose trial 0 is RUNNING under another host's lease."""
    settings = SweepSettings(study_name="w", n_trials=n_trials, lease_seconds=3)
    sweep = Sweep(settings, ["x=interval(0.0, 1.0)"], tmp_path)
    t = sweep.study.ask(sweep.space)
    t.set_user_attr("lease", {**ELSEWHERE, "pid": 1, "start": "1", "until": until})
    return sweep, t.number


def test_rerun_waits_for_another_hosts_live_trial_then_exits_complete(tmp_path, caplog) -> None:
    sweep, held = _held_elsewhere(tmp_path, 2, time.time() + 60)

    def other_worker_finishes() -> None:
        time.sleep(2)
        sweep.study.tell(held, values=[0.0, 1.0])

    calls: list[list[str]] = []
    threading.Thread(target=other_worker_finishes).start()
    start = time.time()
    with caplog.at_level(logging.INFO, logger="sweeps.study.runner"):
        counts = sweep.run(_fake_launch(calls))
    assert time.time() - start >= 2 and counts["complete"] == 1 and len(calls) == 1  # ran one, waited for the other
    assert "waiting for trial(s) 0 (pid 1 on other-node" in caplog.text
    states = [t.state for t in sweep.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_rerun_requeues_another_hosts_trial_once_its_lease_expires(tmp_path) -> None:
    sweep, held = _held_elsewhere(tmp_path, 2, time.time() + 2)
    calls: list[list[str]] = []
    counts = sweep.run(_fake_launch(calls))
    assert counts["complete"] == 2
    trials = sweep.study.trials
    assert trials[held].state == TrialState.FAIL and trials[held].user_attrs["requeued"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert [t.user_attrs.get("requeued_from") for t in trials if t.state == TrialState.COMPLETE].count(held) == 1


def test_sampler_pruner_and_baseline_checks_name_the_key() -> None:
    space, _ = parse_space(["optim.lr=tag(log, interval(1e-4, 1e-3))", "optim.batch_size=choice(4, 8)"])

    def errors(**kw) -> str:
        return "\n".join(check_sampling(SweepSettings(**kw), space))

    assert errors() == ""
    assert "hydra.sweeper.sampler_kwargs: " in errors(sampler_kwargs={"n_startup": 3})
    assert "unexpected keyword argument 'n_startup'" in errors(sampler_kwargs={"n_startup": 3})
    assert "hydra.sweeper.sampler_kwargs.seed" in errors(sampler_kwargs={"seed": 1})
    assert "hydra.sweeper.sampler_kwargs: " in errors(sampler="nsga2", sampler_kwargs={"population_size": 1})
    assert "hydra.sweeper.pruner_kwargs: " in errors(pruner="median", pruner_kwargs={"n_startup_trials": -1})
    assert "hydra.sweeper.pruner_kwargs: " in errors(pruner="median", pruner_kwargs={"startup": 1})
    assert "but hydra.sweeper.pruner=none" in errors(pruner_kwargs={"n_startup_trials": 1})
    assert "hydra.sweeper.sampler=grid: optim.lr: the grid sampler needs" in errors(sampler="grid")
    grid, _ = parse_space(["a=choice(1, 2)", "b=range(0, 3)"])
    assert check_sampling(SweepSettings(sampler="grid", n_trials=6), grid) == []
    assert "more than the grid's 6 points" in "\n".join(check_sampling(SweepSettings(sampler="grid", n_trials=7), grid))

    bad = check_enqueue([{"optim.lrr": 1e-3}, {"optim.lr": 0.5}, {"optim.batch_size": 16}, {"optim.lr": "x"}, 3],
                        space)  # fmt: skip
    assert bad == [
        "hydra.sweeper.enqueue[0]: 'optim.lrr' is not a searched parameter (searched: optim.lr, optim.batch_size)",
        "hydra.sweeper.enqueue[1]: optim.lr=0.5 lies outside the searched range [0.0001, 0.001] (log)",
        "hydra.sweeper.enqueue[2]: optim.batch_size=16 is not one of the choices [4, 8]",
        "hydra.sweeper.enqueue[3]: optim.lr='x' is not a number",
        "hydra.sweeper.enqueue[4]: expected a mapping from searched parameters to values, got 3",
    ]
    assert check_enqueue([{"optim.lr": 1e-3, "optim.batch_size": 8}], space) == []


@pytest.mark.parametrize("value", [0.5, math.inf, math.nan])
def test_lease_seconds_must_be_finite_and_at_least_a_second(value: float) -> None:
    assert any("hydra.sweeper.lease_seconds" in e for e in check_settings(SweepSettings(lease_seconds=value)))


def test_objective_named_twice_is_refused() -> None:
    with pytest.raises(SweepError, match="'asr' is named twice"):
        parse_objectives(["asr:min", "asr:max"])


def test_probe_points_cover_every_choice_and_both_ends() -> None:
    space, _ = parse_space(["a=choice(1, 2, 3)", "b=interval(1.0, 3.0)", "c=int(interval(2, 9))"])
    points = probe_points(space)
    assert points[0] == {"a": 1, "b": 1.0, "c": 2}
    assert {p["a"] for p in points} == {1, 2, 3} and {p["c"] for p in points} == {2, 9}
    assert 3.0 in {p["b"] for p in points} and any(p["b"] != int(p["b"]) for p in points)
    assert all(sum(p[k] != points[0][k] for k in p) <= 1 for p in points)  # one parameter changed at a time


SEARCH_SPACES = sorted(p.stem for p in (ROOT / "conf" / "search_space").glob("*.yaml"))


@pytest.mark.parametrize("name", SEARCH_SPACES)
def test_shipped_search_spaces_pass_the_sweeper_checks(tmp_path, name: str) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.config import ConfigError
    from sweeps.validate import to_train_config, validate

    def trial_config(overrides: list[str]):
        return to_train_config(compose("train", [f"search_space={name}", *overrides]))

    def errors(cfg) -> list[str]:
        try:
            validate(cfg)
        except ConfigError as e:
            return str(e).splitlines()
        return []

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        sweeper = compose("train", [f"search_space={name}"], return_hydra_config=True).hydra.sweeper
        settings = SweepSettings(**{k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                                    for k, v in sweeper.items() if k != "_target_"})  # fmt: skip
        sweep = Sweep(settings, [], tmp_path, compose=trial_config, validate=errors)
    assert sweep.space and sweep.study.metric_names == list(sweep.objectives)


def test_a_study_whose_trials_ran_on_another_toy_world_is_not_resumed(tmp_path) -> None:
    """The default world can change under the same overrides (2026-12-06): resuming would mix worlds, silently."""
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.config import WorldConfig
    from sweeps.toyworld import world_key
    from sweeps.validate import to_train_config

    def trial_config(overrides: list[str]):
        return to_train_config(compose("train", ["search_space=toy_study", *overrides]))

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        sweeper = compose("train", ["search_space=toy_study"], return_hydra_config=True).hydra.sweeper
        settings = SweepSettings(**{k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                                    for k, v in sweeper.items() if k != "_target_"})  # fmt: skip
        sweep = Sweep(settings, [], tmp_path, compose=trial_config)
        run_dir = tmp_path / "0"
        (run_dir / ".hydra").mkdir(parents=True)
        sweep.study.add_trial(optuna.trial.create_trial(
            params=probe_points(sweep.space)[0], distributions=sweep.space, values=[0.5] * len(sweep.objectives),
            user_attrs={"run_dir": str(run_dir)}))  # fmt: skip
        old = {"seed": 0, "train_templates": 12, "sound_lists": 1000}  # the default world until 2026-12-06
        recorded = run_dir / ".hydra" / "config.yaml"
        recorded.write_text(yaml.safe_dump({"model": {"name_or_path": "toy"}, "world": old}))
        with pytest.raises(SweepError, match="its trials ran on toy world ") as e:
            Sweep(settings, [], tmp_path, compose=trial_config)
        then, now = world_key(WorldConfig(**old)), world_key(WorldConfig())
        message = str(e.value)
        assert f"toy world {then} (trial 0's" in message and f"new ones would run on toy world {now};" in message
        # the same world, or a model that is not the toy world's: resumed
        for model, world in (("toy", {"seed": 0}), ("HuggingFaceTB/SmolLM2-135M-Instruct", old)):
            recorded.write_text(yaml.safe_dump({"model": {"name_or_path": model}, "world": world}))
            assert len(Sweep(settings, [], tmp_path, compose=trial_config).study.trials) == 1


def test_the_start_key_names_the_alignment_recipe_and_data_a_run_starts_from(tmp_path) -> None:
    """A SmolLM2-style run starts from the alignment stage's cache: a changed mix or data file is another start (the
    key of its cache folder), so studies do not mix or reuse runs across it; a plain model has none."""
    import json

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeps.alignment import align_key
    from sweeps.resolve import run_start_key
    from sweeps.validate import to_train_config

    refusal, benign = tmp_path / "refusal.json", tmp_path / "benign.json"
    refusal.write_text(json.dumps([{"instruction": f"harm {i}", "input": "", "output": "No."} for i in range(5)]))
    benign.write_text(json.dumps([{"instruction": f"task {i}", "input": "", "output": "Sure."} for i in range(5)]))
    overrides = ["model.name_or_path=/nowhere/base", "model.align.enabled=true",
                 "+dataset@model.align.refusal=safeinstr_refusal", f"model.align.refusal.path={refusal}",
                 "+dataset@model.align.benign=alpaca_align", f"model.align.benign.path={benign}",
                 "model.align.benign.stop=null", "model.align.refusal.stop=null"]  # fmt: skip

    def key_of(extra: list[str]) -> tuple[str | None, str]:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            config = compose("train", overrides + extra)
        typed = to_train_config(config)
        return run_start_key(OmegaConf.to_container(config, resolve=False)), align_key(typed.model, typed.data)

    start, key = key_of([])
    assert start == f"alignment {key}"
    assert key_of(["model.align.refusal.limit=3"])[0] not in (None, start)  # another mix
    refusal.write_text(refusal.read_text().replace("harm 4", "harm four"))
    assert key_of([])[0] not in (None, start)  # the same config, other data: the content decides
    assert key_of(["model.align.enabled=false"])[0] is None  # weights loaded as they are
    assert run_start_key({"model": {"name_or_path": "x", "align": {"enabled": True, "no_such_key": 1}}}) is None


def test_result_of_a_trial_taken_over_meanwhile_is_not_recorded(tmp_path) -> None:
    sweep = Sweep(SweepSettings(study_name="o", n_trials=1), ["x=interval(0.0, 1.0)"], tmp_path)
    taken: list[int] = []

    def launch(overrides: list[list[str]], numbers: list[int]) -> list[Outcome]:
        if not taken:  # another worker, seeing the lease lapse, fails and re-queues trial 0 while it runs here
            trial = sweep.study.trials[numbers[0]]
            taken.append(numbers[0])
            assert recover_stale(sweep.study, now=trial.user_attrs["lease"]["until"] + 1, me=ELSEWHERE)
        return [Outcome(metrics={"status": "completed", "asr": 0.1, "utility_acc": 0.5}) for _ in overrides]

    assert sweep.run(launch)["complete"] == 1  # the re-queued copy, run next
    states = [t.state for t in sweep.study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE] and sweep.study.trials[1].user_attrs["requeued_from"] == 0


def test_seed_and_worst_values_are_checked() -> None:
    text = "\n".join(check_settings(SweepSettings(seed=-1, worst={"asr": math.nan, "utility_acc": 0.0})))
    assert "hydra.sweeper.seed: must be in [0, 2**32 - n_trials)" in text
    assert "hydra.sweeper.worst.asr: must be a finite number" in text and "worst.utility_acc" not in text


def test_metric_catalogue_knows_every_scorer_metric() -> None:
    from sweeps.scoring.scorer import METRICS
    from sweeps.study.metrics import ROLE

    assert tuple(ROLE) == METRICS


def test_intermediate_checks_need_eval_data_and_a_fed_pruner() -> None:
    from omegaconf import OmegaConf

    from sweeps.study.metrics import check_problems

    cfg = OmegaConf.create({"data": {"harmful": None, "utility": {"name": "u"}}, "eval": {"accuracy": None},
                            "trial": {"check_every": 0, "check_metric": "asr", "stop_if": {}}})  # fmt: skip
    assert check_problems(cfg) == []
    assert check_problems(cfg, "median") == [
        "hydra.sweeper.pruner: median prunes on intermediate checks, but trial.check_every=0 (set trial.check_every=N)"
    ]
    cfg.trial.check_every = 5
    cfg.trial.stop_if = {"utility_loss": 3.0, "utility_acc": 0.1}
    assert check_problems(cfg, "median") == [
        "trial.check_metric: 'asr' cannot be scored by this config (it scores: utility_loss)",
        "trial.stop_if.utility_acc: 'utility_acc' cannot be scored by this config (it scores: utility_loss)",
    ]


def test_baseline_keys_fixed_by_an_override_are_dropped_with_a_warning(tmp_path, caplog) -> None:
    # `search_space=seed_paper optim.batch_size=8`: the baselines name batch_size, which the override pins
    settings = SweepSettings(study_name="f", n_trials=1, enqueue=[{"x": 0.5, "b": 16}, {"b": 4}])
    args = ["x=interval(0.0, 1.0)", "b=choice(4, 16)", "b=8"]
    unfixed = check_enqueue(settings.enqueue, {"x": FloatDistribution(0, 1)})
    assert "'b' is not a searched parameter" in "\n".join(unfixed)
    sweep = Sweep(settings, args, tmp_path)
    assert sweep.baselines() == [{"x": 0.5}]
    calls: list[list[str]] = []
    with caplog.at_level(logging.WARNING, logger="sweeps.study.runner"):
        sweep.run(_fake_launch(calls))
    assert "enqueue[0]: b is fixed to 8 by an override" in caplog.text
    (trial,) = sweep.study.trials
    assert trial.params == {"x": 0.5} and trial.user_attrs["baseline"] and "b=8" in calls[0]


def test_trial_configs_are_checked_unless_the_same_study_is_complete(tmp_path) -> None:
    composed: list[list[str]] = []

    def compose(overrides: list[str]):
        from omegaconf import OmegaConf

        composed.append(overrides)
        return OmegaConf.create({"data": {"harmful": {}, "utility": {}}, "eval": {"accuracy": "exact"}})

    settings = SweepSettings(study_name="c", n_trials=1)
    Sweep(settings, ["x=interval(0.0, 1.0)"], tmp_path, compose=compose).run(_fake_launch([]))
    assert len(composed) == 3  # low, high, an interior value
    Sweep(settings, ["x=interval(0.0, 1.0)"], tmp_path, compose=compose)
    assert len(composed) == 3  # rerun of the finished study: nothing to launch, nothing composed
    Sweep(SweepSettings(study_name="c", n_trials=2), ["x=interval(0.0, 1.0)"], tmp_path, compose=compose)
    assert len(composed) == 6  # more trials to run: checked again
