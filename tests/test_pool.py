"""A worker reuses its loaded model across trials, and reuse changes no number."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from sweeps.models import POOL
from sweeps.trial import run_trial
from sweeps.validate import to_train_config
from tests.conftest import CACHE_DIR

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["optim.max_steps=6", "eval.asr.limit=16", "data.utility.limit=8", "data.overrefusal.limit=8",
        "eval.asr.max_new_tokens=8", f"cache_dir={CACHE_DIR}"]  # fmt: skip
KEYS = ("asr", "safety_loss", "compliance_loss", "utility_loss", "utility_acc", "final_train_loss")


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_train_config(compose(config_name="train", overrides=[*TINY, *overrides]))


def test_reused_model_gives_identical_trials(tmp_path, toy_root) -> None:
    first = run_trial(_cfg(), tmp_path / "a", progress=False)
    loads = POOL.loads
    lora = run_trial(_cfg("model.lora.enabled=true", "model.lora.r=4", "optim.lr=1e-2"), tmp_path / "b",
                     progress=False)  # fmt: skip
    again = run_trial(_cfg(), tmp_path / "c", progress=False)
    assert POOL.loads == loads  # no reload from disk for the later trials
    fresh = run_trial(_cfg("model.reuse=false"), tmp_path / "d", progress=False)
    for key in KEYS:
        assert first[key] == again[key] == fresh[key], key
    assert lora["final_train_loss"] != first["final_train_loss"]
