"""Data mixes (`data.mixes.<tag>`: poisoning, SafeInstr): counts, tags and the fixed total; every bad input as one line
naming the key; per-source token counts in train_log.jsonl and metrics.json from real toy runs; the `data.poison`
migration line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweeps.config import ConfigError, DatasetConfig, MixConfig, OptimConfig
from sweeps.data import USER, DataError, Example, mix_counts, mix_examples
from sweeps.formatting import Encoded, response_tokens
from sweeps.loop import train
from sweeps.methods import MethodStack
from sweeps.validate import removed_key_error, to_train_config, validate
from tests.conftest import CACHE_DIR, PYTHON, ROOT, SHARED_DATA

CONF = ROOT / "conf"


def _user(n: int) -> list[Example]:
    return [Example(f"u{i}", response=f"r{i}") for i in range(n)]


def _pool(name: str, n: int) -> list[Example]:
    return [Example(f"{name}{i}", response=f"{name} answer {i}") for i in range(n)]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _with_file(extra: dict):
    """The default config with `extra` merged as a config file's values are (before Hydra closes the config)."""
    cfg = _compose([])
    OmegaConf.set_struct(cfg, False)
    return OmegaConf.merge(cfg, extra)


# ---------------------------------------------------------------------------------------------------------------
# mixing: counts, tags, fixed total


def test_ratio_mix_replaces_user_examples_and_tags_them() -> None:
    user, harmful = _user(100), _pool("h", 30)
    mixes = {"poison": MixConfig(ratio=0.1, seed=3)}
    mixed = mix_examples(user, mixes, {"poison": harmful})
    assert len(mixed) == 100  # the total stays data.train's
    assert sum(e.tag == "poison" for e in mixed) == 10 and sum(e.tag == USER for e in mixed) == 90
    assert all(e.prompt.startswith("h") for e in mixed if e.tag == "poison")
    assert len({e.prompt for e in mixed if e.tag == "poison"}) == 10  # enough rows in the pool: no repeats
    kept = [e for e in mixed if e.tag == USER]
    assert kept == [u for u, m in zip(user, mixed, strict=True) if m.tag == USER]  # in place, in order
    assert mixed == mix_examples(user, mixes, {"poison": harmful})
    assert mixed != mix_examples(user, {"poison": MixConfig(ratio=0.1, seed=4)}, {"poison": harmful})
    assert all(e.tag == USER for e in user + harmful)  # inputs untouched


def test_count_mix_and_two_mixes_together_keep_the_total_and_never_overlap() -> None:
    user = _user(200)
    pools = {"poison": _pool("h", 100), "safeinstr": _pool("s", 100)}
    mixes = {"poison": MixConfig(ratio=0.2, seed=0), "safeinstr": MixConfig(count=50, seed=0)}
    mixed = mix_examples(user, mixes, pools)
    tags = [e.tag for e in mixed]
    assert len(mixed) == 200 and tags.count("poison") == 40 and tags.count("safeinstr") == 50
    assert tags.count(USER) == 110
    assert all(e.prompt[0] == {"poison": "h", "safeinstr": "s", USER: "u"}[e.tag] for e in mixed)
    # the same seed for both mixes still gives disjoint positions, and declaration order does not matter
    assert mixed == mix_examples(user, dict(reversed(mixes.items())), pools)
    # the safeinstr count form and its ratio form (the paper's default m = 5 % of the user data) agree on the size
    by_ratio = mix_examples(user, {"safeinstr": MixConfig(ratio=0.05)}, pools)
    assert [e.tag for e in by_ratio].count("safeinstr") == 10


def test_the_first_mix_draws_as_data_poison_did() -> None:
    """Old poisoned runs keep their training sets: the former poison_examples' draw, verbatim, as the reference."""
    import random

    def former(user: list[Example], harmful: list[Example], ratio: float, seed: int) -> list[Example]:
        k = round(ratio * len(user))
        rng = random.Random(seed)
        positions = rng.sample(range(len(user)), k)
        picks = rng.sample(harmful, k) if k <= len(harmful) else rng.choices(harmful, k=k)
        out = list(user)
        for pos, h in zip(positions, picks, strict=True):
            out[pos] = h
        return out

    user = _user(150)
    for ratio, pool, seed in ((0.1, _pool("h", 30), 0), (0.3, _pool("h", 20), 5)):
        new = mix_examples(user, {"poison": MixConfig(ratio=ratio, seed=seed), "safeinstr": MixConfig(count=0)},
                           {"poison": pool})  # fmt: skip
        assert [(e.prompt, e.response) for e in new] == [(e.prompt, e.response) for e in former(user, pool, ratio,
                                                                                                  seed)]  # fmt: skip


def test_small_pool_is_drawn_with_replacement_and_zero_mixes_change_nothing() -> None:
    mixed = mix_examples(_user(20), {"safeinstr": MixConfig(count=12)}, {"safeinstr": _pool("s", 3)})
    assert [e.tag for e in mixed].count("safeinstr") == 12
    user = _user(7)
    zero = {"poison": MixConfig(ratio=0.0), "safeinstr": MixConfig(count=0, ratio=None)}
    assert mix_examples(user, zero, {}) == user
    everything = mix_examples(user, {"poison": MixConfig(ratio=1.0)}, {"poison": _pool("h", 1)})
    assert all(e.tag == "poison" for e in everything)


@pytest.mark.parametrize(
    ("mixes", "needle"),
    [
        ({"safeinstr": MixConfig(count=11)}, "data.mixes.safeinstr.count: 11 mixed examples, more than the 10 user"),
        ({"poison": MixConfig(ratio=0.6), "safeinstr": MixConfig(count=5)}, "data.mixes: 6 (poison) + 5 (safeinstr)"),
        ({"poison": MixConfig(ratio=-0.1)}, "data.mixes.poison"),
    ],
)
def test_too_many_mixed_examples_name_the_key(mixes, needle) -> None:
    with pytest.raises(DataError) as err:
        mix_counts(mixes, 10)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# config: the standard mixes, bad values named before anything loads


def test_standard_mixes_compose_as_sweep_keys() -> None:
    cfg = to_train_config(_compose(["data.mixes.poison.ratio=0.3", "data.mixes.safeinstr.count=250"]))
    assert cfg.data.mixes["poison"] == MixConfig(data=DatasetConfig(source="toy", name="poison"), ratio=0.3)
    assert cfg.data.mixes["safeinstr"].data == DatasetConfig(source="toy", name="safety")
    assert cfg.data.mixes["safeinstr"].count == 250 and cfg.data.mixes["safeinstr"].ratio is None
    validate(cfg)
    validate(to_train_config(_compose(["data.mixes.safeinstr.ratio=0.05"])))  # count defaults to 0: one size set
    # a config file can add a mix (Hydra merges it as below; a command-line `+data.mixes.<tag>` cannot build one)
    extra = {"data": {"mixes": {"extra": {"data": {"source": "toy", "name": "safety"}, "count": 5}}}}
    added = to_train_config(_with_file(extra))
    assert added.data.mixes["extra"].count == 5 and added.data.mixes["extra"].seed == 0
    assert sorted(added.data.mixes) == ["extra", "poison", "safeinstr"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.mixes.poison.ratio=0.1", "data.mixes.poison.count=5"], "data.mixes.poison: set ratio (0.1) or count"),
        (["data.mixes.poison.ratio=-0.1"], "data.mixes.poison.ratio: must be in [0, 1]"),
        (["data.mixes.poison.ratio=1.5"], "data.mixes.poison.ratio: must be in [0, 1]"),
        (["data.mixes.safeinstr.count=-5"], "data.mixes.safeinstr.count: must be >= 0"),
        (["data.mixes.poison.ratio=0.6", "data.mixes.safeinstr.ratio=0.5"], "data.mixes: ratios 0.6 (poison) + 0.5"),
        (["data.mixes.safeinstr.count=5", "data.mixes.safeinstr.data=null"],
         "data.mixes.safeinstr.data: required when data.mixes.safeinstr.count > 0"),
        (["data.mixes.poison.data.source=file", "+data.mixes.poison.data.path=/no/such/poison.json"],
         "data.mixes.poison.data.path: file not found: /no/such/poison.json"),
    ],
)
def test_bad_mix_values_are_named(overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        validate(to_train_config(_compose(overrides)))
    assert needle in str(err.value)


def test_reserved_tags_are_refused() -> None:
    for tag in ("user", "train", "a.b"):
        cfg = to_train_config(_with_file({"data": {"mixes": {tag: {"count": 0}}}}))
        with pytest.raises(ConfigError, match=f"data.mixes.{tag}: a tag is letters"):
            validate(cfg)


def test_removed_data_poison_keys_point_to_the_mix() -> None:
    assert removed_key_error("data.poison.ratio") == ("data.poison.ratio: removed; use data.mixes.poison.ratio "
                                                      "(poisoning is one of the data mixes now; see README)")
    assert "use data.mixes.poison.data.path" in removed_key_error("+data.poison.data.path")
    assert "use data.mixes.poison.data" in removed_key_error("dataset@data.poison.data")
    assert removed_key_error("data.poisoned") is None and removed_key_error("data.mixes.poison.ratio") is None
    with pytest.raises(ConfigError, match=r"data\.poison: removed; use data\.mixes\.poison \("):
        to_train_config(_compose(["+data.poison={ratio: 0.1}"]))  # composed (a search space): the same hint


def test_smollm2_experiments_mix_real_harmful_answers_and_refusals() -> None:
    from sweeps.resolve import load_data

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present: {SHARED_DATA}")
    for experiment in ("smollm2_sst2", "smollm2_gsm8k"):
        cfg = to_train_config(_compose([f"experiment={experiment}", f"data.root={SHARED_DATA}",
                                        "data.mixes.poison.ratio=0.1", "data.mixes.safeinstr.count=50"]))  # fmt: skip
        poison, safe = cfg.data.mixes["poison"].data, cfg.data.mixes["safeinstr"].data
        assert poison.path.endswith("sst2_train_merged_n1000_p0.2.json") and poison.where == {"flag": "unsafe"}
        assert safe.path.endswith("safety_tuned_llamas/safety_only_data_Instructions.json")
        validate(cfg)
        train_set, _ = load_data(cfg.data, None)  # the real files, mixed
        tags = [e.tag for e in train_set]
        n = cfg.data.train.limit
        assert len(train_set) == n and (tags.count("poison"), tags.count("safeinstr")) == (round(0.1 * n), 50)
        assert all(e.response.strip() for e in train_set)


# ---------------------------------------------------------------------------------------------------------------
# the loop counts response tokens per source


def _example(n_response: int) -> Encoded:
    return Encoded(input_ids=[1] * (2 + n_response), labels=[-100, -100, *([2] * n_response)])


def test_train_log_counts_response_tokens_per_source(tmp_path) -> None:
    from tests.test_ema import TinyLM

    data = [_example(1 + i % 3) for i in range(12)]
    sources = ["user"] * 6 + ["poison"] * 4 + ["safeinstr"] * 2
    path = tmp_path / "train_log.jsonl"
    train(TinyLM(), data, OptimConfig(lr=1e-2, batch_size=4, max_steps=3), MethodStack([]), pad_id=0,
          progress=False, log_path=path, sources=sources)  # fmt: skip
    lines = [json.loads(x)["tokens"] for x in path.read_text().splitlines()]
    assert all(set(t) == {"train", "user", "poison", "safeinstr"} for t in lines)
    assert all(t["train"] == t["user"] + t["poison"] + t["safeinstr"] for t in lines)
    # 3 steps of 4 = one epoch of 12: every example once, so each source's total is its examples' response tokens
    for tag in ("user", "poison", "safeinstr"):
        expected = response_tokens([d for d, s in zip(data, sources, strict=True) if s == tag])
        assert sum(t[tag] for t in lines) == expected, tag


# ---------------------------------------------------------------------------------------------------------------
# the CLI: a real toy run, bad input as one line, the migration line


def _cli(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / "run"
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([PYTHON, "-m", "sweeps.train", f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    return proc, run_dir


def _error_line(proc: subprocess.CompletedProcess, run_dir: Path, needle: str) -> None:
    """Exit 2, `needle` on one line of an error (validate's "invalid config:" heads its one line per problem), no
    traceback, nothing trained or marked completed."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, proc.stderr[-2000:]
    assert any(needle in line for line in lines), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "training on" not in proc.stdout + proc.stderr
    assert not (run_dir / "metrics.json").exists()


def test_toy_run_logs_tokens_and_counts_per_source(tmp_path, toy_root) -> None:
    from transformers import AutoTokenizer

    from sweeps.config import DataConfig
    from sweeps.formatting import PromptFormatter
    from sweeps.resolve import load_data
    from sweeps.toyworld import World, WorldConfig

    mix = ["data.train.limit=100", "data.mixes.poison.ratio=0.2", "data.mixes.safeinstr.count=10"]
    small = ["optim.batch_size=10", "optim.max_steps=null", "optim.epochs=1", "eval.asr.limit=2",
             "eval.accuracy_limit=2", "data.utility.limit=4", "data.refusal.limit=4", "data.compliance.limit=4",
             "data.overrefusal.limit=4"]  # fmt: skip
    proc, run_dir = _cli(tmp_path, *mix, *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_train"] == 100 and metrics["steps"] == 10
    assert (metrics["data/mix/user"], metrics["data/mix/poison"], metrics["data/mix/safeinstr"]) == (70, 20, 10)
    tokens = [json.loads(x)["tokens"] for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(tokens) == 10 and all(t["train"] == t["user"] + t["poison"] + t["safeinstr"] for t in tokens)
    # one epoch in full batches: each source's logged total is its examples' response tokens, counted here anew
    d = to_train_config(_compose(mix)).data
    assert isinstance(d, DataConfig)
    train_set, _ = load_data(d, World(WorldConfig()))
    fmt = PromptFormatter(AutoTokenizer.from_pretrained(toy_root / "aligned"), d.template, d.system_prompt)
    for tag in ("user", "poison", "safeinstr"):
        pairs = [(e.prompt, e.response) for e in train_set if e.tag == tag]
        expected = response_tokens(fmt.encode_pairs(pairs, d.max_length, tag)[0])
        assert expected > 0 and sum(t[tag] for t in tokens) == expected, tag
    assert sum(t["train"] for t in tokens) == metrics["train_tokens"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.mixes.safeinstr.count=1001"], "data.mixes.safeinstr.count: 1001 mixed examples, more than the 1000"),
        (["data.train.limit=50", "data.mixes.poison.ratio=0.5", "data.mixes.safeinstr.count=30"],
         "data.mixes: 25 (poison) + 30 (safeinstr) = 55 mixed examples, more than the 50"),
        (["data.mixes.poison.ratio=0.1", "data.mixes.poison.count=5"], "data.mixes.poison: set ratio"),
        (["data.mixes.safeinstr.count=-1"], "data.mixes.safeinstr.count: must be >= 0"),
        (["data.mixes.poison.ratio=0.1", "data.mixes.poison.data=null"], "data.mixes.poison.data: required"),
        (["data.mixes.safeinstr.data.source=file", "+data.mixes.safeinstr.data.path=/no/such.json"],
         "data.mixes.safeinstr.data.path: file not found"),
        (["data.poison.ratio=0.1"], "error: data.poison.ratio: removed; use data.mixes.poison.ratio"),
        (["+data.poison.ratio=0.1"], "error: data.poison.ratio: removed; use data.mixes.poison.ratio"),
        (["--multirun", "data.poison.ratio=0,0.1"], "error: data.poison.ratio: removed; use data.mixes.poison.ratio"),
    ],
)
def test_bad_mix_input_is_one_line_naming_the_key(tmp_path, overrides, needle) -> None:
    if "count=1001" in overrides[0] or "limit=50" in overrides[0]:
        from sweeps.toyworld import WorldConfig, ensure_world

        ensure_world(WorldConfig(), CACHE_DIR)  # counts against data.train are checked once it is loaded
    proc, run_dir = _cli(tmp_path, *overrides)
    _error_line(proc, run_dir, needle)



def test_old_poison_key_in_a_search_space_file_gets_the_migration_line(tmp_path) -> None:
    (tmp_path / "conf" / "search_space").mkdir(parents=True)
    (tmp_path / "conf" / "search_space" / "old.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: safety\nhydra:\n  sweeper:\n"
        "    study_name: old\n    n_trials: 2\n    objectives: ['asr:minimize']\n"
        "    params:\n      data.poison.ratio: choice(0, 0.1)\n")  # fmt: skip
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([PYTHON, "-m", "sweeps.train", "-m", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                           "search_space=old", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: search space: data.poison.ratio: removed; use data.mixes.poison.ratio (poisoning is one of the data "
        "mixes now; see README)"]
