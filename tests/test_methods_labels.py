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


def test_run_dirs_are_labelled_by_their_methods(tmp_path) -> None:
    for i, methods in enumerate([[], [_m("derpp", "DERpp", lam=0.5, beta=0.5, size=8)]]):
        d = tmp_path / "study" / str(i)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"status": "completed", "asr": 0.1, "methods": methods}))
    df = load([str(tmp_path / "study")])
    assert list(df["method"]) == ["SFT", "DER++ λ=0.5 β=0.5 m=8"]
