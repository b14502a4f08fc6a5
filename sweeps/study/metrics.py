"""Which numeric metrics a trial config can put into metrics.json, known before anything is loaded or trained.

Lets the sweeper reject objectives and constraints that no trial could report. Mirrors how sweeps.trial assembles
metrics.json (tests/test_study_unit.py compares it with a real trial's file, so the two cannot drift apart silently).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# scorer metric -> the data.* set it needs (see Scorer.available). sweeps.scoring.scorer.METRICS, in its order, is
# not imported: it pulls in transformers, and a bad sweep should fail fast (a test keeps the two equal)
ROLE = {"asr": "harmful", "safety_loss": "refusal", "compliance_loss": "compliance", "over_refusal": "overrefusal",
        "utility_loss": "utility", "utility_acc": "utility"}  # fmt: skip
# numeric on every trial that reaches training (strings, None-when-completed and pruning-only keys left out)
TRAIN_METRICS = ("steps", "effective_batch_size", "world_size", "train_tokens", "train_time_s", "tokens_per_s",
                 "final_train_loss", "n_train", "seed", "lr", "batch_size", "grad_accum",
                 "wall_time_s")  # fmt: skip
# the evaluated weights' distance from θ_aligned (sweeps.trial.Distance); also under live/ and check/
DISTANCE = ("distance_l2", "distance_rel")


def _get(cfg: Any, dotted: str) -> Any:
    # works on the typed TrainConfig and on a composed DictConfig alike
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, Mapping) else getattr(cfg, part, None)
        if cfg is None:
            return None
    return cfg


def scorer_metrics(cfg: Any) -> list[str]:
    """The scorer's metrics whose data set is configured (utility_acc also needs an answer checker)."""
    out = []
    for metric in ROLE:
        if _get(cfg, f"data.{ROLE[metric]}") is None:
            continue
        if metric == "asr" and _get(cfg, "eval.asr.limit") == 0:
            continue
        if metric == "utility_acc" and (not _get(cfg, "eval.accuracy") or _get(cfg, "eval.accuracy_limit") == 0):
            continue
        out.append(metric)
        # a classifier judge (it needs eval.judge_model) reports both verdicts
        if metric == "asr" and _get(cfg, "eval.judge") not in (None, "keyword") and _get(cfg, "eval.judge_model"):
            out += ["asr_keyword", "asr_judge"]
    # every extra over-refusal set, scored beside data.overrefusal (sweeps.scoring.scorer.extra_over_metric)
    out += [f"over_refusal/{name}" for name, spec in (_get(cfg, "data.overrefusal_extra") or {}).items()
            if spec is not None]  # fmt: skip
    return out


def _methods(method_cfg: Any) -> tuple[list[str], list[str]]:
    """(metric names the configured methods report, the names of the methods that swap in weights of their own for
    evaluation — shadow EMAs)."""
    from sweeps.methods import build_methods

    entries = {k: dict(v or {}) for k, v in dict(method_cfg or {}).items()}
    try:
        stack = build_methods(entries)
    except Exception:  # bad method arguments are sweeps.config.validate's to report
        return [], []
    return list(stack.metrics()), [m.name for m in stack.shadows]


def _evaluation(scored: list[str]) -> list[str]:
    return [*scored, "eval_time_s", *(["asr_n"] if "asr" in scored else [])]


def truncation_metrics(cfg: Any) -> list[str]:
    """`truncated/<role>` and `dropped/<role>`: the training set, every NLL set, the alignment stage's sets."""
    roles = ["train", *(r for r in ("refusal", "compliance", "utility") if _get(cfg, f"data.{r}") is not None)]
    if _get(cfg, "model.align.enabled"):
        roles += ["align.refusal", "align.benign"]
        if _get(cfg, "model.align.borderline") is not None:
            roles += ["align.borderline"]
    return [f"{kind}/{role}" for role in roles for kind in ("truncated", "dropped")]


def mix_metrics(cfg: Any) -> list[str]:
    """`data/mix/<tag>`: the examples trained on per data source, the user's and every configured data mix's."""
    return [f"data/mix/{tag}" for tag in ["user", *(_get(cfg, "data.mixes") or {})]]


def available_metrics(cfg: Any) -> set[str]:
    """Every numeric metrics.json key a completed trial of `cfg` (TrainConfig or composed DictConfig) writes."""
    evaluation = _evaluation(scorer_metrics(cfg))
    method_metrics, shadows = _methods(_get(cfg, "method"))
    out = {*TRAIN_METRICS, *evaluation, *DISTANCE, *method_metrics, *truncation_metrics(cfg), *mix_metrics(cfg)}
    if _get(cfg, "eval.baseline"):
        out |= {f"start/{m}" for m in evaluation}
    if _get(cfg, "eval.also_live") and shadows:
        out |= {f"live/{m}" for m in [*evaluation, *DISTANCE]}
    if _get(cfg, "eval.each_shadow"):
        out |= {f"shadow/{name}/{m}" for name in shadows for m in [*evaluation, *DISTANCE]}
    for alpha in _get(cfg, "eval.interpolate") or []:
        out |= {f"interp/{float(alpha):g}/{m}" for m in [*evaluation, *DISTANCE]}
    if _get(cfg, "trial.check_every"):
        checked = list(dict.fromkeys([_get(cfg, "trial.check_metric"), *(_get(cfg, "trial.stop_if") or {})]))
        if "safety_loss" in scorer_metrics(cfg):  # sweeps.trial.TrialChecks always adds the safety curve
            checked = list(dict.fromkeys([*checked, "safety_loss"]))
        out |= {f"check/{m}" for m in [*_evaluation(checked), *DISTANCE]}
    return out


def check_problems(cfg: Any, pruner: str = "none") -> list[str]:
    """Intermediate checks that could only fail mid-trial: a probe metric without eval data, a pruner never fed."""
    if not _get(cfg, "trial.check_every"):
        if pruner != "none":
            return [f"hydra.sweeper.pruner: {pruner} prunes on intermediate checks, but trial.check_every=0 "
                    "(set trial.check_every=N)"]  # fmt: skip
        return []
    scored = scorer_metrics(cfg)
    keys = [("trial.check_metric", _get(cfg, "trial.check_metric"))]
    keys += [(f"trial.stop_if.{k}", k) for k in _get(cfg, "trial.stop_if") or {}]
    return [f"{key}: '{metric}' cannot be scored by this config (it scores: {', '.join(scored)})"
            for key, metric in keys if metric not in scored]  # fmt: skip
