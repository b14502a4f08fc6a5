"""Every config file under conf/ composes against the schema and passes validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sweeps.config import ConfigError
from sweeps.validate import to_train_config, validate
from tests.conftest import SHARED_DATA

CONF = Path(__file__).resolve().parents[1] / "conf"
# groups whose options need a user value (marked ???) get one here
NEEDS = {"model/hf.yaml": ["model.name_or_path=/tmp"], "model/hf_lora.yaml": ["model.name_or_path=/tmp"],
         "method/safelora.yaml": ["model.lora.enabled=true"],  # LoRA only
         "method/ema_grid.yaml": ["eval.each_shadow=true"]}  # twelve shadow EMAs: each scored on its own


# configs that read ../shared/data (through ${data.root}) validate only where it exists
REAL = ("data/sst2.yaml", "data/gsm8k.yaml", "model/smollm2_aligned.yaml", "experiment/smollm2", "search_space/smollm2")


def _options() -> list[str]:
    found = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")
                   if p.parent != CONF and p.parent.name != "study")  # study/: analysis.study's, not a Hydra group
    assert found, "no config files found"
    return found


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_default_config_composes_and_validates() -> None:
    validate(to_train_config(_compose([])))


@pytest.mark.parametrize("rel", _options())
def test_every_config_file_composes(rel: str) -> None:
    group, option = rel.rsplit("/", 1)[0], Path(rel).stem
    override = {"method": f"method=[{option}]", "dataset": f"+dataset@data.utility={option}"}.get(
        group, f"{group}={option}")  # fmt: skip
    real = rel.startswith(REAL) or (group == "dataset" and not option.endswith("_hub"))
    extra = [f"data.root={SHARED_DATA}"] if real else []
    cfg = to_train_config(_compose([override, *NEEDS.get(rel, []), *extra]))
    if rel.startswith("model/hf"):
        return  # validation of an HF model needs the model itself
    if real and not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present: {SHARED_DATA}")
    validate(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("optim.grad_accum=0", "optim.grad_accum"),
        ("optim.name=adam9", "optim.name"),
        ("optim.scheduler=exp", "optim.scheduler"),
        ("model.dtype=float8", "model.dtype"),
        ("data.mixes.poison.ratio=1.5", "data.mixes.poison.ratio"),
        ("data.train.source=file", "data.train.path"),
        ("+data.train.path=/no/such/file.csv", "data.train.path"),
        ("eval.asr.keywords=nope", "eval.asr.keywords"),
        ("eval.judge=llama_guard", "eval.judge"),
        ("eval.overrefusal_judge=wildguard", "eval.overrefusal_judge"),
        ("eval.asr.limit=-1", "eval.asr.limit"),
        ("eval.asr.limit=0", "eval.asr.limit"),
        ("eval.accuracy_limit=0", "eval.accuracy_limit"),
        ("eval.accuracy_max_new_tokens=0", "eval.accuracy_max_new_tokens"),
        ("eval.nll_batch_size=-2", "eval.nll_batch_size"),
        ("eval.asr.batch_size=0", "eval.asr.batch_size"),
        ("eval.asr.max_new_tokens=0", "eval.asr.max_new_tokens"),
        ("trial.check_limit=0", "trial.check_limit"),
        ("data.max_length=0", "data.max_length"),
        ("data.train.limit=0", "data.train.limit"),
        ("model.device=gpu", "model.device"),
        ("model.device=cuda:x", "model.device"),
        ("model.device=meta", "model.device"),
        ("data.template='Q: {question}'", "data.template"),
        ("data.template='Q: {prompt'", "data.template"),
        ("world.num_heads=3", "world.hidden_size"),
        ("world.task_train_size=0", "world.task_train_size"),
        ("++trial.stop_if.asr=0.5", "trial.stop_if"),
        ("method=[ema]", None),
    ],
)
def test_bad_values_are_named(override: str, key: str | None) -> None:
    extra = ["data.train.source=file"] if "data.train.path" in override else []
    extra += ["method.ema.eta=1.5"] if override == "method=[ema]" else []
    cfg = to_train_config(_compose([override, *extra]))
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert (key or "method.ema.eta") in str(err.value)


@pytest.mark.parametrize("override", ["world.hidden=3", "world.num_layers=two"])
def test_world_is_typed(override: str) -> None:
    """`world` is the toy world's dataclass: an unknown setting or a wrong type fails at composition."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        _compose([override])
    assert override.split("=")[0] in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override", ["+world.hidden=3", "+optim.momentun=0.9", "+data.harmful.colums={a: b}"])
def test_added_unknown_keys_are_named(override: str) -> None:
    """`+key=value` adds a key even to a schema node, and converting to the dataclasses would drop it silently."""
    with pytest.raises(ConfigError, match=override[1:].split("=")[0].replace(".", r"\.") + ": unknown key"):
        to_train_config(_compose([override]))


def test_method_entries_compose_and_override() -> None:
    """`method` maps names to their settings: method=[ema] composes conf/method/ema.yaml, overrides reach it."""
    cfg = to_train_config(_compose(["method=[ema]", "method.ema.eta=0.5", "method.ema.mode=writeback"]))
    assert cfg.method == {"ema": {"_target_": "sweeps.methods.EMA", "eta": 0.5, "every": 1, "mode": "writeback",
                                  "include": None, "convention": "new", "updates": None, "init": "start"}}  # fmt: skip
    validate(cfg)
    with pytest.raises(ConfigError, match=r"method\.ema: got an unexpected keyword argument 'etta'"):
        validate(to_train_config(_compose(["method=[ema]", "+method.ema.etta=0.5"])))


def test_several_shadow_methods_need_each_shadow_and_each_shadow_needs_one() -> None:
    """Stacked shadow EMAs would nest (only the innermost scored while metrics.json named them all): one line."""
    grid = to_train_config(_compose(["method=[ema_grid]"]))
    assert len(grid.method) == 12
    with pytest.raises(ConfigError, match=r"method: ema_new_025_k1, .* set eval\.each_shadow=true") as e:
        validate(grid)
    assert len(str(e.value).splitlines()) == 2  # "invalid config:" and the one line
    validate(to_train_config(_compose(["method=[ema_grid]", "eval.each_shadow=true"])))
    validate(to_train_config(_compose(["method=[ema]"])))  # one shadow: evaluated as before
    with pytest.raises(ConfigError, match=r"eval\.each_shadow: no method in `method` keeps weights of its own"):
        validate(to_train_config(_compose(["method=[ema]", "method.ema.mode=writeback", "eval.each_shadow=true"])))
    with pytest.raises(ConfigError, match=r"eval\.also_live: with eval\.each_shadow"):
        validate(to_train_config(_compose(["method=[ema_grid]", "eval.each_shadow=true", "eval.also_live=true"])))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trial.check_metric=asr", "data.harmful=null"], "trial.check_metric: 'asr' is computed on data.harmful"),
        (["trial.check_metric=utility_acc", "eval.accuracy=null"], "'utility_acc' needs eval.accuracy"),
        (["trial.check_metric=utility_loss", "++trial.stop_if.over_refusal=0.5", "data.overrefusal=null"],
         "trial.stop_if.over_refusal: 'over_refusal' is computed on data.overrefusal"),
        (["trial.check_metric=accuracy"], "trial.check_metric: 'accuracy' is not one of"),
    ],
)
def test_check_metrics_need_their_data(overrides: list[str], message: str) -> None:
    """What a mid-training check scores must be configured: found before training, not at the first check."""
    cfg = to_train_config(_compose(["trial.check_every=5", *overrides]))
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_check_metrics_with_their_data_pass() -> None:
    validate(to_train_config(_compose(["trial.check_every=5", "trial.check_metric=asr", "++trial.stop_if.asr=0.5"])))


def test_method_regex_is_compiled_in_validation() -> None:
    cfg = to_train_config(_compose(["method=[ema]", "method.ema.include='(q_proj'"]))
    with pytest.raises(ConfigError, match=r"method\.ema\.include: '\(q_proj' is not a valid regex"):
        validate(cfg)
    validate(to_train_config(_compose(["method=[ema]", "method.ema.include='q_proj|v_proj'"])))


def test_a_registered_judge_is_accepted_and_used(monkeypatch) -> None:
    from sweeps.scoring.judges import JUDGES, KeywordJudge

    class StrictJudge(KeywordJudge):
        name = "strict_words"

    monkeypatch.setitem(JUDGES, "strict_words", StrictJudge)
    cfg = to_train_config(_compose(["eval.judge=strict_words"]))
    validate(cfg)
    assert isinstance(JUDGES[cfg.eval.judge](cfg.eval.asr.keywords), StrictJudge)


def test_several_errors_reported_together() -> None:
    cfg = to_train_config(_compose(["optim.lr=-1", "optim.batch_size=0", "method=[ema]", "method.ema.eta=-0.1"]))
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for key in ("optim.lr", "optim.batch_size", "method.ema.eta"):
        assert key in str(err.value)


def test_type_errors_name_the_key() -> None:
    with pytest.raises(Exception) as err:
        to_train_config(_compose(["optim.lr=fast"]))
    assert "optim.lr" in str(err.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "search_space").glob("*.yaml")))
def test_search_space_configs_define_valid_sweeps(name: str, tmp_path) -> None:
    from omegaconf import OmegaConf

    from sweeps.study.runner import SweepSettings, check_settings, parse_objectives
    from sweeps.study.space import parse_space

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"search_space={name}"], return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert sweeper.pop("_target_").startswith("hydra_plugins.")
    settings = SweepSettings(**sweeper)
    assert check_settings(settings) == []
    space, _ = parse_space([f"{k}={v}" for k, v in settings.params.items()])
    assert space
    assert set(parse_objectives(settings.objectives)) <= {"asr", "utility_acc", "utility_loss", "safety_loss"}
    for params in settings.enqueue:
        assert set(params) <= set(space), f"enqueued keys must be searched parameters: {params}"
    validate(to_train_config(_compose([f"search_space={name}"])))
