"""From Hydra's config to a checked `TrainConfig`: the one validator every CLI reading conf/train.yaml runs
(`sweeps.train`, `sweeps.align`, the sweeper's trials) before anything is loaded, trained or written.

`to_train_config` turns Hydra's DictConfig into the typed dataclasses (type errors name the key); `validate`
checks values (ranges, choices, files, registries) and reports every problem at once as one ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeps.config import ConfigError, MixConfig, OptimConfig, TrainConfig, WorldConfig
from sweeps.data.spec import check_dataset
from sweeps.precision import precision_errors
from sweeps.resolve import uses_toy
from sweeps.scoring.judges import JUDGES, OVERREFUSAL_JUDGES, guard_path_error, is_classifier
from sweeps.scoring.keywords import KEYWORD_LISTS
from sweeps.toyworld._world import TRAIN_TEMPLATES

ConfigStore.instance().store(name="train_schema", node=TrainConfig)  # `defaults: [train_schema]` in conf/train.yaml


def to_train_config(dcfg: DictConfig) -> TrainConfig:
    """Typed config from Hydra's; resolves interpolations and rejects wrong types and unknown keys by name."""
    unknown = unknown_keys(dcfg)
    if unknown:
        raise ConfigError("\n  ".join(["invalid config:", *unknown]))
    try:
        cfg = OmegaConf.to_object(dcfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    assert isinstance(cfg, TrainConfig)
    return cfg


# keys that were removed -> where their settings live now: an override of one gets this hint, not just "unknown key"
REMOVED_KEYS = {"data.poison": ("data.mixes.poison", "poisoning is one of the data mixes now")}


def removed_key_error(key: str) -> str | None:
    """The one-line migration hint for an override key (`+a.b`, `group@a.b` forms too) under a removed key."""
    key = key.lstrip("+~").split("@")[-1]
    for old, (new, why) in REMOVED_KEYS.items():
        if key == old or key.startswith(f"{old}."):
            return f"{key}: removed; use {new}{key[len(old):]} ({why}; see README)"
    return None


def removed_override_errors(args: list[str]) -> list[str]:
    """Hints for command-line overrides of removed keys, checked before Hydra (whose own error for a key not in the
    schema spans several lines and suggests adding it with '+')."""
    keys = [a.split("=", 1)[0] for a in args if "=" in a and not a.startswith("-")]
    return [err for k in keys if (err := removed_key_error(k))]


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys a `+key=value` override added to a schema node: OmegaConf.to_object would drop them without a word."""
    out = []
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node:
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            out.append(removed_key_error(full) or f"{full}: unknown key (known: {sorted(known)})")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            out.extend(unknown_keys(child, f"{full}."))
    return out


_OPTIMS = {"adamw", "sgd"}
_SCHEDULERS = {"constant", "linear", "cosine"}
_CHECKERS = {"exact", "gsm8k", "label", None}
_TAG = re.compile(r"[A-Za-z0-9_-]+")


# which data set each metric is computed on (sweeps.scoring.scorer.Scorer.available)
METRIC_DATA = {"asr": "harmful", "safety_loss": "refusal", "compliance_loss": "compliance",
               "over_refusal": "overrefusal", "utility_loss": "utility", "utility_acc": "utility"}  # fmt: skip


def _positive(errors: list[str], key: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value <= 0:
        errors.append(f"{key}: must be > 0{' or null' if optional else ''}, got {value}")


def _device_error(name: str) -> str | None:
    """Why `model.device` cannot be used on this machine (checked here, not when the model is moved to it)."""
    import torch

    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except RuntimeError:
        return f"'{name}' is not a device; use auto, cpu, cuda, cuda:N or mps"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"'{name}' but CUDA is not available on this machine (use auto or cpu)"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"'{name}' but this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            return f"'{name}' but MPS is not available on this machine (use auto or cpu)"
    elif dev.type != "cpu":
        return f"'{name}': only auto, cpu, cuda, cuda:N and mps are supported"
    return None


def _check_world(errors: list[str], w: WorldConfig) -> None:
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "pretrain_steps", "align_steps",
                 "batch_size", "task_train_size", "task_eval_size", "task_min_len", "task_max_len",
                 "train_templates"):  # fmt: skip
        _positive(errors, f"world.{name}", getattr(w, name))
    for name in ("pretrain_lr", "align_lr"):
        if not getattr(w, name) > 0:
            errors.append(f"world.{name}: must be > 0, got {getattr(w, name)}")
    if w.num_heads > 0 and w.hidden_size % w.num_heads:
        errors.append(f"world.hidden_size: {w.hidden_size} is not divisible by world.num_heads={w.num_heads}")
    if w.sound_lists < 0:
        errors.append(f"world.sound_lists: must be >= 0, got {w.sound_lists}")
    if w.train_templates > len(TRAIN_TEMPLATES):
        errors.append(f"world.train_templates: the toy world has {len(TRAIN_TEMPLATES)} training phrasings, got "
                      f"{w.train_templates}")  # fmt: skip
    if w.task_min_len > w.task_max_len:
        errors.append(f"world.task_min_len: {w.task_min_len} > world.task_max_len={w.task_max_len}")


def _check_trial(errors: list[str], cfg: TrainConfig, metrics: tuple[str, ...]) -> None:
    """Intermediate checks score data the config must provide: caught here, not at the first check mid-training."""
    t = cfg.trial
    if t.check_every < 0:
        errors.append(f"trial.check_every: must be >= 0, got {t.check_every}")
    _positive(errors, "trial.check_limit", t.check_limit)
    if t.stop_if and not t.check_every:
        errors.append(f"trial.stop_if: {sorted(t.stop_if)} is never checked without trial.check_every > 0")
    if not t.check_every:
        return
    for key, metric in [("trial.check_metric", t.check_metric), *((f"trial.stop_if.{m}", m) for m in t.stop_if)]:
        if metric not in metrics:
            errors.append(f"{key}: '{metric}' is not one of {list(metrics)}")
            continue
        role = METRIC_DATA[metric]
        if getattr(cfg.data, role) is None:
            errors.append(f"{key}: '{metric}' is computed on data.{role}, which is not configured")
        elif metric == "utility_acc" and cfg.eval.accuracy is None:
            errors.append(f"{key}: 'utility_acc' needs eval.accuracy (an answer checker), which is null")


def _check_mixes(errors: list[str], mixes: dict[str, MixConfig]) -> None:
    """Each mix has one size (a ratio or a count, >= 0) and, when it mixes anything in, a data set. Counts against
    the loaded data.train are sweeps.data.mix_counts' (the file's row count is not known here)."""
    for tag, mix in mixes.items():
        key = f"data.mixes.{tag}"
        if not _TAG.fullmatch(tag) or tag in ("user", "train"):
            errors.append(f"{key}: a tag is letters, digits, '_' or '-', and not 'user' or 'train' (it names the "
                          "data source in train_log.jsonl and metrics.json)")  # fmt: skip
        if mix.ratio is not None and not 0 <= mix.ratio <= 1:
            errors.append(f"{key}.ratio: must be in [0, 1] (a fraction of data.train) or null, got {mix.ratio}")
        if mix.count is not None and mix.count < 0:
            errors.append(f"{key}.count: must be >= 0 or null, got {mix.count}")
        if mix.ratio and mix.count:
            errors.append(f"{key}: set ratio ({mix.ratio}) or count ({mix.count}), not both; "
                          f"set the other to 0 or null")  # fmt: skip
        if (mix.ratio or mix.count) and mix.data is None:
            errors.append(f"{key}.data: required when {key}.{'ratio' if mix.ratio else 'count'} > 0")
        check_dataset(errors, f"{key}.data", mix.data)
    total = sum(m.ratio for m in mixes.values() if m.ratio and 0 < m.ratio <= 1)
    if total > 1 + 1e-9:  # float sums: 0.1 + 0.2 + 0.7 is 1.0000000000000002
        parts = " + ".join(f"{m.ratio} ({tag})" for tag, m in mixes.items() if m.ratio)
        errors.append(f"data.mixes: ratios {parts} sum to {total:g} > 1 (mixed examples replace user examples)")


def _check_optim(errors: list[str], key: str, o: OptimConfig) -> None:
    if not o.lr > 0:
        errors.append(f"{key}.lr: must be > 0, got {o.lr}")
    if o.name not in _OPTIMS:
        errors.append(f"{key}.name: '{o.name}' is not one of {sorted(_OPTIMS)}")
    if o.scheduler not in _SCHEDULERS:
        errors.append(f"{key}.scheduler: '{o.scheduler}' is not one of {sorted(_SCHEDULERS)}")
    _positive(errors, f"{key}.batch_size", o.batch_size)
    _positive(errors, f"{key}.grad_accum", o.grad_accum)
    if o.max_steps is not None and o.max_steps < 0:
        errors.append(f"{key}.max_steps: must be >= 0, got {o.max_steps}")
    if o.max_steps is None and not o.epochs > 0:
        errors.append(f"{key}.epochs: must be > 0 when {key}.max_steps is unset, got {o.epochs}")
    if o.weight_decay < 0:
        errors.append(f"{key}.weight_decay: must be >= 0, got {o.weight_decay}")
    if o.warmup_steps < 0:
        errors.append(f"{key}.warmup_steps: must be >= 0, got {o.warmup_steps}")
    if o.grad_clip is not None and not o.grad_clip > 0:
        errors.append(f"{key}.grad_clip: must be > 0 or null, got {o.grad_clip}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        errors.append(f"{key}.betas: must be two numbers in [0, 1), got {list(o.betas)}")


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError listing every invalid value (one per line)."""
    # torch-heavy registries imported here, so a composition error or --help stays fast
    from sweeps.distributed import distributed_errors
    from sweeps.methods import known_method_errors, shadow_errors
    from sweeps.scoring.scorer import METRICS

    errors: list[str] = []
    _check_optim(errors, "optim", cfg.optim)

    m = cfg.model
    errors.extend(precision_errors(m))
    if m.lora.enabled:
        _positive(errors, "model.lora.r", m.lora.r)
        _positive(errors, "model.lora.alpha", m.lora.alpha)
    device_error = _device_error(m.device)
    if device_error:
        errors.append(f"model.device: {device_error}")
    if m.lora.enabled and not 0 <= m.lora.dropout < 1:
        errors.append(f"model.lora.dropout: must be in [0, 1), got {m.lora.dropout}")
    if m.name_or_path != "toy" and not m.name_or_path.startswith("pkg:") and not os.path.isdir(m.name_or_path) \
            and _looks_like_path(m.name_or_path):
        errors.append(f"model.name_or_path: directory not found: {m.name_or_path}")
    if m.align.enabled:
        if m.align.refusal is None:
            errors.append("model.align.refusal: required when model.align.enabled")
        check_dataset(errors, "model.align.refusal", m.align.refusal)
        check_dataset(errors, "model.align.benign", m.align.benign)
        check_dataset(errors, "model.align.borderline", m.align.borderline)
        check_dataset(errors, "model.align.contrast", m.align.contrast)
        _positive(errors, "model.align.borderline_tokens", m.align.borderline_tokens)
        _check_optim(errors, "model.align.optim", m.align.optim)
        _positive(errors, "model.align.max_length", m.align.max_length)

    d = cfg.data
    for key in ("train", "utility", "harmful", "refusal", "compliance", "overrefusal"):
        check_dataset(errors, f"data.{key}", getattr(d, key))
    for name, spec in d.overrefusal_extra.items():
        if not _TAG.fullmatch(name):  # it becomes the metric name over_refusal/<name>
            errors.append(f"data.overrefusal_extra.{name}: the name may hold only letters, digits, _ and -")
        check_dataset(errors, f"data.overrefusal_extra.{name}", spec)
    _check_mixes(errors, d.mixes)
    _positive(errors, "data.max_length", d.max_length)
    if d.template is not None:
        try:
            d.template.format(prompt="")
        except (KeyError, IndexError, ValueError) as err:
            errors.append(f"data.template: only {{prompt}} may appear (literal braces doubled): "
                          f"{type(err).__name__} {err}")  # fmt: skip

    e = cfg.eval
    if e.asr.keywords not in KEYWORD_LISTS:
        errors.append(f"eval.asr.keywords: '{e.asr.keywords}' is not one of {sorted(KEYWORD_LISTS)}")
    # a count of 0 or less would slice silently ([:-1] drops one, [:0] scores nothing), so every count is checked
    _positive(errors, "eval.asr.max_new_tokens", e.asr.max_new_tokens)
    _positive(errors, "eval.asr.batch_size", e.asr.batch_size)
    _positive(errors, "eval.asr.limit", e.asr.limit, optional=True)
    _positive(errors, "eval.nll_batch_size", e.nll_batch_size)
    _positive(errors, "eval.accuracy_max_new_tokens", e.accuracy_max_new_tokens)
    _positive(errors, "eval.accuracy_limit", e.accuracy_limit, optional=True)
    bad = [a for a in e.interpolate if not math.isfinite(a)]
    if bad or len({f"{a:g}" for a in e.interpolate}) != len(e.interpolate):
        errors.append(f"eval.interpolate: α values must be finite and distinct, got {list(e.interpolate)}")
    if e.accuracy not in _CHECKERS:
        errors.append(f"eval.accuracy: '{e.accuracy}' is not one of {sorted(c for c in _CHECKERS if c)} or null")
    _check_trial(errors, cfg, METRICS)
    _check_world(errors, cfg.world)
    if e.overrefusal_judge not in OVERREFUSAL_JUDGES:
        errors.append(f"eval.overrefusal_judge: '{e.overrefusal_judge}' is not one of {list(OVERREFUSAL_JUDGES)}")
    if e.judge not in JUDGES:
        errors.append(f"eval.judge: '{e.judge}' is not a known judge (available: {', '.join(JUDGES)})")
    elif is_classifier(e.judge) and (judge_error := guard_path_error(e.judge_model)):
        errors.append(f"eval.judge_model: {judge_error}")

    errors.extend(known_method_errors(cfg.method, lora=m.lora.enabled, toy_world=uses_toy(m.name_or_path, cfg.data)))
    errors.extend(shadow_errors(cfg.method, e.each_shadow))
    if e.each_shadow and e.also_live:
        errors.append("eval.also_live: with eval.each_shadow the live weights are already the run's result")
    errors.extend(distributed_errors(cfg))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _looks_like_path(name: str) -> bool:
    # HF hub ids are "org/name"; anything starting like a filesystem path is meant to be local.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
