"""analysis.study: named study configs → resumable row × seed multiruns → tables (CSV / LaTeX / Markdown) + figures."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import study
from analysis.errors import AnalysisError
from sweeps.config import WorldConfig
from sweeps.toyworld import world_key
from tests.conftest import CACHE_DIR, shared_file

# a few prompts and steps: the driver is under test, not the science
TINY = ["experiment=toy_aggressive", "optim.max_steps=3", "eval.asr.limit=6", "eval.asr.max_new_tokens=6",
        "eval.accuracy_limit=4", "eval.accuracy_max_new_tokens=6", "data.overrefusal.limit=4", "data.refusal.limit=4",
        "data.compliance.limit=4"]  # fmt: skip


def _write_study(folder: Path, name: str, body: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _stamps(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("metrics.json")}


def test_driver_end_to_end_on_the_toy_world_then_resumes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SWEEPS_CACHE_DIR", str(CACHE_DIR))
    confs = tmp_path / "conf"
    path = _write_study(confs, "tiny", {
        "title": "tiny", "seeds": [0], "overrides": TINY,
        "rows": [{"name": "sft", "label": "SFT", "overrides": ["method=[]", "eval.interpolate=[0.5]"],
                  "paper": {"asr": 66.0}},
                 {"name": "ewc", "overrides": ["method=[ewc]"]}],
        "table": {"metrics": ["asr", "utility_acc", "distance_rel"], "figure": "distance"}})  # fmt: skip
    out = tmp_path / "studies" / "tiny"
    first_study = path.read_text()
    assert study.main([str(path), "--out", str(out)]) == 0
    for row in ("sft", "ewc"):
        metrics = json.loads((out / row / "seed_0" / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["steps"] == 3 and metrics["seed"] == 0
    table = pd.read_csv(out / "table.csv")
    # the rows, and the interpolation point at α = 0.5 that eval.interpolate added to the SFT row
    assert table["row"].tolist() == ["sft", "sft_alpha0.5", "ewc"]
    assert table["method"].tolist() == ["SFT", "SFT", "EWC λ=100"]  # labels from metrics.json `methods`
    sft = json.loads((out / "sft" / "seed_0" / "metrics.json").read_text())
    assert table.loc[0, "asr"] == pytest.approx(sft["asr"]) and table.loc[0, "asr_paper"] == 66.0
    assert table.loc[1, "asr"] == pytest.approx(sft["interp/0.5/asr"])
    assert table.loc[1, "distance_rel"] == pytest.approx(sft["distance_rel"] / 2, rel=1e-3)
    assert not math.isnan(table.loc[1, "asr_boot_lo"])  # per-prompt verdicts of the interpolated weights
    for f in ("table.tex", "table.md", "figure.pdf", "figure.png", "figure_fronts.png"):
        assert (out / f).stat().st_size > 0, f
    first_table = (out / "table.csv").read_text()
    stamps = _stamps(out)

    # resumed: nothing runs again, the same table comes out
    capsys.readouterr()
    assert study.main([str(path), "--out", str(out)]) == 0
    assert _stamps(out) == stamps
    assert (out / "table.csv").read_text() == first_table
    assert (out / "sft" / "driver.log").read_text().count("\n$ ") == 0  # one command line only, from the first run
    # --rows runs only those rows; the table keeps the other finished rows of the folder
    assert study.main([str(path), "--out", str(out), "--rows", "ewc"]) == 0
    assert _stamps(out) == stamps and (out / "table.csv").read_text() == first_table

    # runs made with other overrides are never reused: an edited row, or --set into the same folder, is one line
    for args, changed in [([], "optim.lr=1e-3"), (["--set", "optim.lr=1e-3"], None)]:
        edited = json.loads(json.dumps(yaml.safe_load(path.read_text())))
        if changed:
            edited["rows"][1]["overrides"].append(changed)
        _write_study(confs, "tiny", edited)
        capsys.readouterr()
        assert study.main([str(path), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was run with other overrides (now optim.lr=1e-3" in err, err
        assert _stamps(out) == stamps  # nothing ran
    _write_study(confs, "tiny", yaml.safe_load(first_study))

    # ... nor runs made on another toy world (the default world changed under the same overrides)
    config_file = out / "ewc" / "seed_0" / ".hydra" / "config.yaml"
    first_config = config_file.read_text()
    config = yaml.safe_load(first_config)
    assert str(config["model"]["name_or_path"]).startswith("toy")
    config["world"]["train_templates"] = 12
    config_file.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert study.main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    then = world_key(WorldConfig(**config["world"]))
    now = world_key(WorldConfig(**yaml.safe_load(first_config)["world"]))
    assert len(err.splitlines()) == 1 and "row 'ewc'" in err, err
    assert f"was run on toy world {then}, the row now runs on toy world {now}" in err and then != now, err
    assert _stamps(out) == stamps
    config_file.write_text(first_config)

    # a `from` row of another study reads these runs and runs nothing
    other = _write_study(confs, "reuse", {"title": "reuse", "seeds": [0],
                                          "rows": [{"name": "plain", "from": "tiny/sft", "paper": {"asr": 1.0}}],
                                          "table": {"metrics": ["asr", "utility_acc"]}})  # fmt: skip
    assert study.main([str(other), "--out", str(tmp_path / "studies" / "reuse")]) == 0
    assert _stamps(out) == stamps and not (tmp_path / "studies" / "reuse" / "plain").exists()
    reused = pd.read_csv(tmp_path / "studies" / "reuse" / "table.csv")
    assert reused.loc[0, "asr"] == pytest.approx(sft["asr"])


def _synthetic_run(folder: Path, seed: int, verdicts: list[int], interp: list[int] | None = None) -> None:
    """A run dir as sweeps.train writes it: metrics.json (DER, λ = 0.5) and per-prompt verdicts."""
    folder.mkdir(parents=True)
    metrics = {"status": "completed", "seed": seed, "asr": sum(verdicts) / len(verdicts),
               "utility_acc": 0.5 + seed / 10, "eval_weights": "live",
               "methods": [{"name": "der", "target": "sweeps.methods.DER", "args": {"lam": 0.5, "size": None}}]}
    rows = [{"set": "harmful", "attack_success": bool(v), "weights": "live"} for v in verdicts]
    rows += [{"set": "harmful", "attack_success": True, "weights": "start"}]  # another weights' rows: not counted
    if interp is not None:
        metrics["interp/0.5/asr"] = sum(interp) / len(interp)
        rows += [{"set": "harmful", "attack_success": bool(v), "weights": "interp/0.5"} for v in interp]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_on_synthetic_run_dirs_mean_ci_bootstrap_and_formats(tmp_path) -> None:
    path = _write_study(tmp_path / "conf", "syn", {
        "title": "Synthetic", "paper_source": "Paper: Table 9.", "seeds": [0, 1, 2],
        "rows": [{"name": "der", "overrides": ["method=[der]"], "paper": {"asr": 2.3, "utility_acc": 20.8}},
                 {"name": "none", "label": "Missing", "overrides": []}],
        "table": {"metrics": ["asr", "utility_acc"], "figure": "pareto"}})  # fmt: skip
    s = study.load_study(str(path))
    out = tmp_path / "out"
    # ASR 0.2, 0.4, 0.6 over the seeds (5 prompts each); the α = 0.5 point: 0/5, 1/5, 2/5
    for seed, k in enumerate((1, 2, 3)):
        _synthetic_run(out / "der" / f"seed_{seed}", seed, [1] * k + [0] * (5 - k), [1] * (k - 1) + [0] * (6 - k))
    jobs = study.plan(s, s.rows, out, "toy")
    table = study.summarise(study.collect(jobs, s.seeds), s.metrics)
    files = study.write_report(s, table, out)

    der = table.iloc[0]
    assert der["label"] == "DER λ=0.5" and der["n_seeds"] == 3 and der["seeds"] == "0,1,2"
    # Student t, 2 degrees of freedom: t(0.975, 2) = 4.302653; std of (0.2, 0.4, 0.6) = 0.2
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert der["asr"] == pytest.approx(0.4) and der["asr_std"] == pytest.approx(0.2)
    assert (der["asr_ci_lo"], der["asr_ci_hi"]) == pytest.approx((0.4 - half, 0.4 + half), abs=1e-5)
    assert der["utility_acc"] == pytest.approx(0.6) and der["asr_paper"] == 2.3
    # bootstrap over prompts (stratified by seed): the mean of the resampled means brackets the mean, within [0, 1]
    assert 0 <= der["asr_boot_lo"] < 0.4 < der["asr_boot_hi"] <= 1 and der["asr_boot_hi"] - der["asr_boot_lo"] < 0.6
    interp = table[table["row"] == "der_alpha0.5"].iloc[0]
    assert interp["asr"] == pytest.approx(0.2) and interp["group"] == "interpolation" and interp["x"] == 0.5
    assert interp["asr_boot_lo"] < 0.2 < interp["asr_boot_hi"]
    assert table[table["row"] == "none"].iloc[0]["n_seeds"] == 0  # no runs: an empty row, not an error

    assert [f.name for f in files] == ["table.csv", "table.tex", "table.md", "figure.pdf", "figure.png"]
    csv = pd.read_csv(out / "table.csv")
    assert csv.loc[0, "asr_ci_hi"] == pytest.approx(0.4 + half, abs=1e-5)
    md = (out / "table.md").read_text()
    assert f"| DER λ=0.5 | 40.0 ± {half * 100:.1f} |" in md  # rates in %, ± the CI's half-width
    assert "| 2.3 |" in md and "paper ASR %" in md and "Paper: Table 9." in md
    assert "| Missing | – |" in md
    tex = (out / "table.tex").read_text()
    assert r"\toprule" in tex and r"40.0 $\pm$ " in tex and r"ASR \%" in tex and r"\label{tab:syn}" in tex
    assert r"DER $\lambda$=0.5" in tex and not re.search("[^\x00-\x7f]", tex), "non-ASCII left for pdflatex"


def test_table_shows_each_rows_seconds_per_step_and_its_ratio_to_sft(tmp_path) -> None:
    """The cost column: train_time_s / steps from metrics.json, mean over seeds, and its ratio to the SFT row; a row
    whose runs did not record it shows "–" (runs of older versions)."""
    path = _write_study(tmp_path / "conf", "cost", {
        "seeds": [0, 1],
        "rows": [{"name": "sft", "overrides": ["method=[]"]}, {"name": "der", "overrides": ["method=[der]"]},
                 {"name": "old", "label": "old", "overrides": ["method=[der]"]}],
        "table": {"metrics": ["asr", "utility_loss"]}})  # fmt: skip
    s = study.load_study(str(path))
    out = tmp_path / "out"
    der = [{"name": "der", "target": "sweeps.methods.DER", "args": {"lam": 0.5}}]
    for row, methods, seconds in (("sft", [], (100.0, 140.0)), ("der", der, (180.0, 300.0)), ("old", der, None)):
        for seed in (0, 1):
            (out / row / f"seed_{seed}").mkdir(parents=True)
            metrics = {"status": "completed", "seed": seed, "asr": 0.5, "utility_loss": 1.0, "methods": methods,
                       "steps": 50}
            if seconds is not None:
                metrics["train_time_s"] = seconds[seed]
            (out / row / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))
    table = study.summarise(study.collect(study.plan(s, s.rows, out, "toy"), s.seeds), s.metrics).set_index("row")
    assert table.loc["sft", "step_s"] == pytest.approx(2.4) and table.loc["der", "step_s"] == pytest.approx(4.8)
    assert np.isnan(table.loc["old", "step_s"])
    study.write_report(s, table.reset_index(), out)
    md = (out / "table.md").read_text()
    assert "train s / step (× SFT)" in md and "| 2.40 (1.00×) |" in md and "| 4.80 (2.00×) |" in md
    assert "| old | DER λ=0.5 | 50.0 ± 0.0 | 1.000 ± 0.000 | – | 2 |" in md and "method setup excluded" in md
    no_sft = study.display(table.drop(index="sft").reset_index(), s.metrics)  # nothing to divide by: seconds alone
    assert list(no_sft["train s / step"]) == ["4.80", "–"]


def test_x_read_from_metrics_labels_the_row_as_it_ran(tmp_path) -> None:
    """A row's x may name a metrics.json key (Table 5's m is the memory the run had: 13 of SmolLM2's 250 examples,
    not the 50 the toy world's default gives); "{x}" in its label is that value; no runs or an unrecorded key: "?"."""
    path = _write_study(tmp_path / "conf", "syn", {
        "seeds": [0, 1],
        "rows": [{"name": "der", "label": "DER m={x}", "x": "der/memory", "overrides": ["method=[der]"]},
                 {"name": "old", "label": "DER m={x}", "x": "der/memory", "overrides": ["method=[der]"]},
                 {"name": "none", "label": "DER m={x}", "x": "der/memory", "overrides": ["method=[der]"]},
                 {"name": "fixed", "label": "fixed {x}", "x": 7, "overrides": []}],
        "table": {"metrics": ["asr", "utility_acc"], "figure": "sweep"}})  # fmt: skip
    s = study.load_study(str(path))
    out = tmp_path / "out"
    for seed in (0, 1):
        _synthetic_run(out / "der" / f"seed_{seed}", seed, [1, 0])
        _synthetic_run(out / "old" / f"seed_{seed}", seed, [1, 0])
        for row in ("der", "old"):
            metrics = json.loads((out / row / f"seed_{seed}" / "metrics.json").read_text())
            if row == "der" or seed == 0:  # row `old`: its seed 1 was made before the metric existed
                metrics["der/memory"] = 13.0
            (out / row / f"seed_{seed}" / "metrics.json").write_text(json.dumps(metrics))
    points = {p.name: p for p in study.collect(study.plan(s, s.rows, out, "toy"), s.seeds)}
    assert (points["der"].x, points["der"].label) == (13.0, "DER m=13")
    assert (points["old"].x, points["old"].label) == (None, "DER m=?")
    assert (points["none"].x, points["none"].label) == (None, "DER m=?")
    assert (points["fixed"].x, points["fixed"].label) == (7, "fixed 7")
    with pytest.raises(AnalysisError, match=r"row 'bad': x: a number or a metrics.json key"):
        study.load_study(str(_write_study(tmp_path / "conf", "bad", {"rows": [{"name": "bad", "x": [1]}]})))


def test_every_shipped_study_loads_at_both_scales_and_the_benign_ones_validate() -> None:
    names = study.study_names()
    assert {"cl_table1", "cl_table2", "cl_table3", "cl_table4", "cl_table5", "ema"} <= set(names)
    for name in names:
        for scale in ("toy", "smollm2"):
            s = study.load_study(name, scale)
            assert s.name == name  # not a row name of scales.<scale>.rows (its out folder is studies/<scale>/<name>)
            jobs = study.plan(s, s.rows, Path("studies") / scale / name, scale)
            assert len(jobs) == len(s.rows) and study.select_rows(s, quick=True)
    s = study.load_study("cl_table1", "smollm2")
    assert {"model.lora.r=8", "model.lora.alpha=4", "model.lora.dropout=0.1", "optim.lr=5e-5", "optim.batch_size=5",
            "optim.scheduler=cosine", "optim.weight_decay=0.1"} <= set(s.overrides)  # the paper's LoRA recipe
    for name in ("cl_table1", "ema"):  # two benign studies (the poisoned ones are checked by `--check`, README)
        s = study.load_study(name)
        study.check(s, study.plan(s, s.rows, Path("studies/toy") / name, "toy"))
    # a real-model scale: every method's data stream is a real data set (a toy split there is a config error)
    shared_file("safety_tuned_llamas", "safety_only_data_Instructions.json")  # skips where ../shared is absent
    s = study.load_study("ema", "smollm2")
    study.check(s, study.plan(s, study.select_rows(s, quick=True), Path("studies/smollm2/ema"), "smollm2"))
    # Table 4 only reads other tables' runs
    t4 = study.load_study("cl_table4")
    roots = {j.root.as_posix() for j in study.plan(t4, t4.rows, Path("studies/toy/cl_table4"), "toy")}
    assert roots == {"studies/toy/cl_table1/sft", "studies/toy/cl_table1/der", "studies/toy/cl_table1/lwf",
                     "studies/toy/cl_table3/lisa_p0"}  # fmt: skip


def test_set_overrides_every_row_and_reused_rows_in_their_own_folder(capsys) -> None:
    sets = ["optim.lr=1e-3", "data.dir=/a/b"]
    out = study.default_out("cl_table3", "smollm2", sets)
    assert out.as_posix() == "studies/smollm2+optim.lr=1e-3+data.dir=_a_b/cl_table3"
    s = study.load_study("cl_table3", "smollm2")
    jobs = study.plan(s, s.rows, out, "smollm2", sets)
    assert all(j.overrides[-2:] == sets for j in jobs)  # last, so they win over the study's own
    reused = next(j for j in jobs if j.row.source == ("cl_table1", "sft"))
    assert reused.root.as_posix() == "studies/smollm2+optim.lr=1e-3+data.dir=_a_b/cl_table1/sft"
    t1 = study.load_study("cl_table1")
    assert [r.name for r in study.select_rows(t1, quick=True, only=["der", "sft"])] == ["sft", "der"]  # study order
    with pytest.raises(AnalysisError, match=re.escape("--rows: no row 'ewc' in conf/study/cl_table1.yaml quick.rows")):
        study.select_rows(t1, quick=True, only=["ewc"])  # a row, but not in the quick subset
    # the shipped quick subsets run 6 runs at --model smollm2 (README: within an hour): rows of their own, once each
    own = {(s.name, r.name) if r.source is None else r.source for s in map(study.load_study, study.study_names())
           if s.name.startswith("cl_table") for r in study.select_rows(s, quick=True)}  # fmt: skip
    assert sorted(own) == [("cl_table1", "der"), ("cl_table1", "sft"), ("cl_table2", "der"), ("cl_table2", "lisa"),
                           ("cl_table2", "sft"), ("cl_table5", "der_m250")]  # fmt: skip
    # what Hydra records of a run (.hydra/overrides.yaml: a key once, its last value, values re-written) matches
    recorded = ["experiment=smollm2_gsm8k", "model.lora.enabled=True", "optim.lr=0.002", "method=[]", "seed=0"]
    given = ["experiment=toy_aggressive", "experiment=smollm2_gsm8k", "model.lora.enabled=true", "optim.lr=5e-5",
             "method=[]", "optim.lr=2e-3", "hydra/launcher=basic", "seed=0"]  # fmt: skip
    def values(overrides: list[str]) -> dict:
        return {k: v for k, (v, _) in study._task_overrides(overrides).items()}

    assert values(recorded) == values(given)
    assert values(recorded) != values([*given, "optim.lr=1e-3"])
    # the run command parses (Hydra's grammar) with '=' , '+', a space and a quote in the folder
    from hydra.core.override_parser.overrides_parser import OverridesParser

    odd = study.Job(jobs[0].row, Path("studies/a b+optim.lr=1e-3/it's") / "sft", jobs[0].overrides)
    parsed = OverridesParser.create().parse_overrides(study.command(odd, [0, 1])[4:])
    assert {o.key_or_group: o.value() for o in parsed}["hydra.sweep.dir"] == str(odd.root)
    for bad in ("optim.lr", "hydra.sweep.dir=x"):
        assert study.main(["cl_table1", "--set", bad, "--check"]) == 2
        assert capsys.readouterr().err.strip() == f"error: --set {bad}: a sweeps.train override KEY=VALUE " \
                                                  "(hydra.* is the driver's)"  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [("optim.lr=abc", "could not be converted to Float"),
     ("optim.nope=1", "Could not override 'optim.nope'"),
     ("optim.lr=-1", "optim.lr: must be > 0"),
     ("method=[nope]", "Could not load 'method/nope'")],
)  # fmt: skip
def test_a_bad_row_is_one_line_naming_the_file_and_row_before_anything_runs(tmp_path, capsys, override,
                                                                            message) -> None:  # fmt: skip
    path = _write_study(tmp_path / "conf", "bad", {
        "seeds": [0], "overrides": ["experiment=toy_aggressive"],
        "rows": [{"name": "fine", "overrides": ["method=[]"]}, {"name": "broken", "overrides": [override]}]})
    out = tmp_path / "out"
    assert study.main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}: row 'broken': ") and message in err, err
    assert not out.exists()  # nothing ran, nothing written


def test_an_unknown_study_or_a_bad_study_file_is_one_line(tmp_path, capsys) -> None:
    assert study.main(["no_such_study"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown study 'no_such_study'" in err and "conf/study" in err
    assert "cl_table1" in err  # the known names
    for body, message in [({"rows": []}, "the study has no rows"),
                          ({"rows": [{"name": "a", "overrides": []}], "table": {"figure": "pie"}}, "table.figure"),
                          ({"rows": [{"name": "a", "overides": []}]}, "row 'a': unknown key 'overides'"),
                          ({"rows": [{"name": "a", "from": "nowhere/x"}]}, "row 'a': from: unknown study 'nowhere'"),
                          ({"rows": [{"name": "a", "overrides": []}, {"name": "a", "overrides": []}]}, "twice"),
                          ({"rows": [{"name": "a", "overrides": []}], "scales": {"big": {"rows": {"b": []}}}},
                           "scales.big.rows: no row 'b'")]:
        path = _write_study(tmp_path, "b", body)
        with pytest.raises(AnalysisError, match=message):
            s = study.load_study(str(path), "big" if "big" in message else "toy")
            study.plan(s, s.rows, tmp_path / "out", "toy")
        scale = ["--model", "big"] if "big" in message else []
        assert study.main([str(path), "--out", str(tmp_path / "out"), *scale]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert study.main(["cl_table1", "--model", "gpt9"]) == 2
    assert "no scale 'gpt9'" in capsys.readouterr().err


def test_cl_study_alias_checks_table_n_as_the_study_cl_table_n(capsys) -> None:
    from analysis import cl_study

    assert cl_study.main(["--table", "4", "--check"]) == 0
    assert "conf/study/cl_table4.yaml: 4 rows compose and validate (toy)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cl_study.main(["--table", "6"])


def test_each_shadow_run_becomes_one_row_per_ema_in_tables_loads_and_early_signals(tmp_path) -> None:
    """An eval.each_shadow run (a grid of shadow EMAs on one trajectory): the study table, analysis.load and the
    early-signal checks see each EMA as its own trial, with its own scores, verdicts, label and checks; the run's row
    is the live weights (SFT)."""
    from analysis.early import load_checks
    from analysis.load import load
    from analysis.pareto import Objective
    from analysis.stats import aggregate_seeds, asr_bootstrap

    path = _write_study(tmp_path / "conf", "syn", {
        "seeds": [0], "rows": [{"name": "sft", "overrides": ["method=[ema_grid]", "eval.each_shadow=true"],
                                "shadow_paper": {"fast": {"asr": 2.7}}}],
        "table": {"metrics": ["asr", "utility_loss", "distance_rel"], "figure": "distance"}})  # fmt: skip
    s = study.load_study(str(path))
    out = tmp_path / "out"
    run = out / "sft" / "seed_0"
    run.mkdir(parents=True)
    ema = [{"name": "fast", "target": "sweeps.methods.EMA", "args": {"eta": 0.25, "every": 10}},
           {"name": "slow", "target": "sweeps.methods.EMA", "args": {"eta": 0.9, "every": 1, "convention": "old"}}]
    metrics = {"status": "completed", "seed": 0, "steps": 20, "asr": 0.75, "utility_loss": 1.0, "distance_rel": 0.03,
               "eval_weights": "live", "methods": ema, "shadows": ["fast", "slow"], "fast/eta": 0.25, "slow/eta": 0.9,
               "shadow/fast/asr": 0.5, "shadow/fast/utility_loss": 1.5, "shadow/fast/distance_rel": 0.01,
               "shadow/slow/asr": 0.25, "shadow/slow/utility_loss": 1.25, "shadow/slow/distance_rel": 0.02}
    verdicts = {w: [1] * k + [0] * (20 - k) for w, k in (("live", 15), ("shadow/fast", 10), ("shadow/slow", 5))}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "generations.jsonl").write_text("".join(json.dumps({"set": "harmful", "attack_success": bool(v),
                                                               "weights": w}) + "\n"
                                                   for w, vs in verdicts.items() for v in vs))  # fmt: skip
    (run / "checks.jsonl").write_text(json.dumps({"step": 2, "safety_loss": 1.0, "shadow/fast/safety_loss": 2.0,
                                                  "shadow/slow/safety_loss": 3.0}) + "\n")  # fmt: skip
    table = study.summarise(study.collect(study.plan(s, s.rows, out, "toy"), s.seeds), s.metrics).set_index("row")
    assert list(table.index) == ["sft", "sft_fast", "sft_slow"]
    assert list(table["label"]) == ["SFT", "EMA η=0.25 every 10", "EMA η=0.9 old-convention"]
    assert list(table["group"]) == ["SFT", "EMA", "EMA"]
    assert list(table["asr"]) == [0.75, 0.5, 0.25] and list(table["distance_rel"]) == [0.03, 0.01, 0.02]
    assert list(table["utility_loss"]) == [1.0, 1.5, 1.25]
    study.write_report(s, table.reset_index(), out)  # the distance figure draws the EMA points as their own family
    assert "| EMA η=0.25 every 10 | 50.0 |" in (out / "table.md").read_text()
    assert table.loc["sft_fast", "asr_paper"] == 2.7 and np.isnan(table.loc["sft_slow", "asr_paper"])
    # each row's bootstrap over prompts is of its own weights' verdicts (5 of 20 and 15 of 20: the intervals part)
    slow = table.loc["sft_slow"]
    assert slow["asr_boot_lo"] < 0.25 < slow["asr_boot_hi"] < table.loc["sft", "asr_boot_lo"]

    bad = _write_study(tmp_path / "conf", "bad", {"seeds": [0], "rows": [
        {"name": "sft", "overrides": ["method=[ema_grid]"], "shadow_paper": {"fsat": {"asr": 2.7}}}]})  # fmt: skip
    with pytest.raises(AnalysisError, match=r"row 'sft': shadow_paper names \['fsat'\], not among"):
        study.collect(study.plan(study.load_study(str(bad)), study.load_study(str(bad)).rows, out, "toy"), [0])

    df = load([str(out / "sft")]).set_index("method")
    assert list(df.index) == ["SFT", "EMA η=0.25 every 10", "EMA η=0.9 old-convention"]
    assert list(df["asr"]) == [0.75, 0.5, 0.25] and list(df["shadow"].fillna("")) == ["", "fast", "slow"]
    assert list(df["eta"]) == [1.0, 0.25, 0.9] and list(df["trial"]) == [0, 0, 0]  # the live row: no EMA acted
    from analysis.curves import training_logs

    (run / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "grad_norm": 1.0, "lr": 1e-3}) + "\n")
    assert len(training_logs(df.reset_index())) == 1  # the run's curve once, not once per EMA
    checks = load_checks(df.reset_index())
    assert list(checks.sort_values("trial")["safety_loss"]) == [1.0, 2.0, 3.0]
    # the report's bootstrap over prompts, per trial and per recipe: each EMA's own verdicts
    trials = asr_bootstrap(df.reset_index())
    assert list(trials["asr_boot"]) == pytest.approx([0.75, 0.5, 0.25], abs=0.03)
    recipes = asr_bootstrap(aggregate_seeds(df.reset_index(), [Objective("asr", "minimize")])).set_index("method")
    assert recipes.loc["EMA η=0.9 old-convention", "run_weights"] == ["shadow/slow"]
    assert recipes.loc["EMA η=0.9 old-convention", "asr_boot"] == pytest.approx(0.25, abs=0.03)
