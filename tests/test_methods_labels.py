"""Analysis labels trials from metrics.json's `methods` record."""

from __future__ import annotations

import json

from analysis.load import load, methods_label


def _m(name: str, target: str, **args) -> dict:
    return {"name": name, "target": f"sweeps.methods.{target}", "args": args}


def test_labels_from_recorded_methods() -> None:
    assert methods_label([]) == "SFT"
    assert methods_label([_m("der", "DER", lam=0.5, size=250)]) == "DER λ=0.5 m=250"
    assert methods_label([_m("ema", "EMA", eta=0.25, every=10)]) == "EMA η=0.25 every 10"
    assert methods_label([_m("ema", "EMA", eta=0.25)]) == "EMA η=0.25"
    assert methods_label([_m("ema", "EMA", eta=1.0)]) == "SFT"  # switched off
    assert methods_label([_m("x", "EWC", lam=100.0, fisher="identity"), _m("avg", "EMA", eta=0.5)]) == \
        "EWC λ=100 identity + EMA η=0.5"
    assert methods_label([_m("agem", "AGEM")]) == "A-GEM"
    assert methods_label([_m("agem", "AGEM", project=False)]) == "SFT"
    lisa = _m("lisa", "Lisa", rho=1.0, align_steps=10, finetune_steps=90, warmup=0.1, size=None)
    assert methods_label([lisa]) == "Lisa ρ=1"
    assert methods_label([{**lisa, "args": {**lisa["args"], "align_steps": 20}}]) == "Lisa ρ=1 K_align=20"
    assert methods_label([_m("lisa", "Lisa", rho=0.0, align_steps=0)]) == "SFT"
    safelora = _m("safelora", "SafeLoRA", enabled=True, mode="threshold", threshold=0.5)
    assert methods_label([safelora]) == "SafeLoRA τ=0.5"
    assert methods_label([_m("safelora", "SafeLoRA", enabled=True, mode="layers", threshold=0.5, layers=5)]) == \
        "SafeLoRA layers τ=0.5 k=5"
    assert methods_label([_m("safelora", "SafeLoRA", enabled=False)]) == "SFT"
    # SafeInstr is a data mix: named from metrics.json's mix counts; poison alone is the data, not a method
    mixes = {"data/mix/safeinstr": 50, "data/mix/poison": 100}
    assert methods_label([], mixes) == "SafeInstr m=50"
    assert methods_label([_m("der", "DER", lam=0.5)], mixes) == "DER λ=0.5 + SafeInstr m=50"
    assert methods_label([], {"data/mix/safeinstr": 0, "data/mix/poison": 100}) == "SFT"


def test_run_dirs_are_labelled_by_their_methods(tmp_path) -> None:
    runs = [([], 0), ([_m("derpp", "DERpp", lam=0.5, beta=0.5, size=8)], 0), ([], 50)]
    for i, (methods, safeinstr) in enumerate(runs):
        d = tmp_path / "study" / str(i)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"status": "completed", "asr": 0.1, "methods": methods,
                                                    "data/mix/safeinstr": safeinstr}))  # fmt: skip
    df = load([str(tmp_path / "study")])
    assert list(df["method"]) == ["SFT", "DER++ λ=0.5 β=0.5 m=8", "SafeInstr m=50"]


def test_each_shadow_views_keep_the_methods_that_acted_and_their_own_eta(tmp_path) -> None:
    """A shadow EMA's row names every method that shaped its trajectory plus itself; the run's own row only those
    that acted on the live weights; a sweep's `method.ema.eta` override does not overwrite either row's eta; the
    live weights' eval_nan flag does not leak into a shadow's row."""
    from analysis.load import live_methods, run_views

    ewc, fast = _m("ewc", "EWC", lam=100.0, fisher="identity"), _m("fast", "EMA", eta=0.25, every=10)
    metrics = {"status": "completed", "asr": 0.9, "eval_nan": 1, "methods": [ewc, fast], "shadows": ["fast"],
               "fast/eta": 0.25, "ewc/penalty": 0.1, "shadow/fast/asr": 0.4, "check/asr": 0.8}  # fmt: skip
    (live, run), (name, shadow) = run_views(metrics)
    assert live is None and name == "fast" and live_methods(metrics) == [ewc]
    assert run["methods"] == [ewc] and "fast/eta" not in run and run["asr"] == 0.9
    assert shadow["methods"] == [ewc, fast] and shadow["asr"] == 0.4 and shadow["eta"] == 0.25
    assert "eval_nan" not in shadow and "check/asr" not in shadow and shadow["ewc/penalty"] == 0.1
    assert methods_label(shadow["methods"]) == "EWC λ=100 identity + EMA η=0.25 every 10"
    d = tmp_path / "study" / "0"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("- method.ema.eta=0.5\n")
    (d / "metrics.json").write_text(json.dumps(metrics))
    df = load([str(tmp_path / "study")])
    assert list(df["method"]) == ["EWC λ=100 identity", "EWC λ=100 identity + EMA η=0.25 every 10"]
    assert list(df["eta"]) == [1.0, 0.25]
