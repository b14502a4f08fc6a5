"""Over-long (prompt, response) pairs keep their response (prompt cut from the left); counts reach metrics.json."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from hydra import compose, initialize_config_dir

from sweeps.config import EvalConfig, OptimConfig
from sweeps.data import Example
from sweeps.formatting import IGNORE_INDEX, Encoded, PromptFormatter
from sweeps.loop import train
from sweeps.methods import MethodStack
from sweeps.scoring.nll import per_example_nll
from sweeps.scoring.scorer import EvalSets, Scorer
from sweeps.toyworld import toy_examples
from tests.conftest import CACHE_DIR

FILLER = "tell me more about it please " * 12  # ~70 toy tokens: longer than max_length on its own


def _scored(enc: Encoded) -> list[int]:
    return [t for t in enc.labels if t != IGNORE_INDEX]


def test_overlong_prompt_keeps_its_response_and_leading_specials(aligned, toy_world) -> None:
    _, tok = aligned
    fmt = PromptFormatter(tok)
    e = toy_examples("refusal", toy_world)[0]
    prompt = FILLER + e.prompt
    full_prompt = fmt.encode_prompt(prompt)
    response = [*tok(e.response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert len(full_prompt) > 40
    enc = fmt.encode_pair(prompt, e.response, 40)
    assert len(enc.input_ids) == len(enc.labels) == 40
    assert _scored(enc) == response  # the whole response, not zero tokens
    assert enc.input_ids[-len(response):] == response
    lead = 2  # the toy chat template opens with <s> <|user|>
    assert all(t in tok.all_special_ids for t in full_prompt[:lead]) and full_prompt[lead] not in tok.all_special_ids
    assert enc.input_ids[:lead] == full_prompt[:lead]
    kept_tail = 40 - len(response) - lead
    assert enc.input_ids[lead : 40 - len(response)] == full_prompt[-kept_tail:]  # ends with the generation prompt
    assert enc.prompt_cut == len(full_prompt) - lead - kept_tail and enc.response_cut == 0 and enc.truncated


def test_overlong_response_keeps_its_head_and_part_of_the_prompt(aligned) -> None:
    _, tok = aligned
    fmt = PromptFormatter(tok)
    enc = fmt.encode_pair("hello there", FILLER, 32)
    response = tok(FILLER, add_special_tokens=False)["input_ids"]
    prompt = fmt.encode_prompt("hello there")
    n_prompt = min(len(prompt), 32 // 4)
    assert len(enc.input_ids) == 32
    assert _scored(enc) == response[: 32 - n_prompt]
    assert enc.response_cut == len(response) + 1 - (32 - n_prompt)  # + 1: the EOS


def test_pairs_with_nothing_to_score_are_dropped_counted_and_warned_once(aligned, caplog) -> None:
    _, tok = aligned
    fmt = PromptFormatter(tok)
    assert fmt.encode_pair("hello", "world", 1) is None
    pairs = [("hello", "world"), (FILLER, "world"), ("hi", "yes")]
    with caplog.at_level(logging.WARNING, logger="sweeps.formatting"):
        kept, stats = fmt.encode_pairs(pairs, 16, "data.refusal")
        fmt.encode_pairs(pairs, 16, "data.refusal")
        _, none_left = fmt.encode_pairs(pairs, 1, "data.utility")
    assert len(kept) == 3 and (stats.total, stats.truncated, stats.dropped) == (3, 1, 0)
    assert stats.metrics("refusal") == {"truncated/refusal": 1, "dropped/refusal": 0}
    assert (none_left.dropped, none_left.truncated) == (3, 0)
    warned = [r.getMessage() for r in caplog.records]
    assert len([m for m in warned if m.startswith("data.refusal:")]) == 1
    assert len([m for m in warned if m.startswith("data.utility:")]) == 1


def test_nll_of_an_example_without_scored_tokens_is_nan_not_zero(aligned) -> None:
    model, tok = aligned
    fmt = PromptFormatter(tok)
    good = fmt.encode_pair("hello", "world", 32)
    empty = Encoded(good.input_ids, [IGNORE_INDEX] * len(good.input_ids))
    got = per_example_nll(model, [good, empty], pad_id=tok.pad_token_id, batch_size=2)
    assert math.isfinite(got[0]) and got[0] > 0
    assert math.isnan(got[1])


def test_batch_of_overlong_prompts_trains_without_diverging(aligned, toy_world) -> None:
    model, tok = aligned
    fmt = PromptFormatter(tok)
    pairs = [(FILLER + e.prompt, e.response) for e in toy_examples("user_train", toy_world)[:8]]
    data, stats = fmt.encode_pairs(pairs, 32, "data.train")
    assert stats.truncated == 8 and all(_scored(e) for e in data)
    optim = OptimConfig(lr=1e-3, batch_size=4, max_steps=3)
    result = train(model, data, optim, MethodStack([]), pad_id=tok.pad_token_id, progress=False)
    assert result.status == "completed" and all(math.isfinite(x) and x > 0 for x in result.losses)


def test_safety_loss_of_overlong_prompts_is_not_biased_towards_zero(aligned, toy_world) -> None:
    model, tok = aligned
    fmt = PromptFormatter(tok)
    refusals = toy_examples("refusal", toy_world)[:16]
    long = [Example(prompt=FILLER + e.prompt, response=e.response) for e in refusals]
    cfg = EvalConfig(nll_batch_size=8)

    def safety_loss(examples: list[Example]) -> tuple[float, Scorer]:
        scorer = Scorer(tok, fmt, EvalSets(refusal=examples), cfg, max_length=64)
        return scorer.score(model, ["safety_loss"]).metrics["safety_loss"], scorer

    plain, _ = safety_loss(refusals)
    cut, scorer = safety_loss(long)
    mixed, _ = safety_loss(refusals + long)
    assert scorer.truncation_metrics() == {"truncated/refusal": 16, "dropped/refusal": 0}
    # every over-long example is scored on its whole refusal (the old code scored it 0: a perfect "refusal")
    per_example = per_example_nll(model, scorer._refusal, pad_id=tok.pad_token_id, batch_size=8)
    assert all(math.isfinite(x) and x > 0 for x in per_example) and cut > plain > 0
    assert math.isclose(mixed, (plain + cut) / 2, rel_tol=1e-5)


CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["optim.max_steps=2", "eval.asr.limit=4", "data.utility.limit=8", "data.overrefusal.limit=4",
        "eval.asr.max_new_tokens=4", "eval.accuracy=null", f"cache_dir={CACHE_DIR}"]  # fmt: skip


def test_truncation_counts_reach_metrics_json(tmp_path, toy_root, caplog) -> None:
    from sweeps.trial import run_trial
    from sweeps.validate import to_train_config

    refusals = tmp_path / "refusals.jsonl"  # an alignment stage on the toy θ_aligned, with over-long prompts
    refusals.write_text("".join(json.dumps({"prompt": FILLER + str(i), "response": "i cannot help"}) + "\n"
                                for i in range(4)))  # fmt: skip
    align = ["model.align.enabled=true", "+dataset@model.align.refusal=advbench",
             f"model.align.refusal.path={refusals}", "model.align.refusal.columns={prompt:prompt,response:response}",
             "model.align.optim.max_steps=1",
             "model.align.optim.batch_size=2", "model.align.max_length=16"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_train_config(compose(config_name="train", overrides=[*TINY, *align, "data.max_length=16"]))
    with caplog.at_level(logging.WARNING, logger="sweeps.formatting"):
        run_trial(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and math.isfinite(metrics["safety_loss"])
    assert metrics["precision"] == "fp32" and "precision_warning" not in metrics  # the default policy on a CPU
    for role in ("train", "refusal", "compliance", "utility"):
        assert metrics[f"truncated/{role}"] > 0 and metrics[f"dropped/{role}"] == 0, role
        assert sum(r.getMessage().startswith(f"data.{role}:") for r in caplog.records) == 1, role
    # the alignment stage's counts, from its cached align.json (built by this test, or by an earlier run of it)
    assert (metrics["truncated/align.refusal"], metrics["dropped/align.refusal"]) == (4, 0)
    assert (metrics["truncated/align.benign"], metrics["dropped/align.benign"]) == (0, 0)
