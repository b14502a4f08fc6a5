"""From Hydra's config to a checked `TrainConfig`: the one validator every CLI reading conf/train.yaml runs
(`sweeps.train`, `sweeps.align`, the sweeper's trials) before anything is loaded, trained or written.

`to_train_config` turns Hydra's DictConfig into the typed dataclasses (type errors name the key); `validate`
checks values (ranges, choices, files, registries) and reports every problem at once as one ConfigError.
"""

from __future__ import annotations

import dataclasses
import os

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeps.config import ConfigError, DatasetConfig, OptimConfig, TrainConfig
from sweeps.precision import precision_errors
from sweeps.scoring.judges import JUDGES
from sweeps.scoring.keywords import KEYWORD_LISTS

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


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys a `+key=value` override added to a schema node: OmegaConf.to_object would drop them without a word."""
    out = []
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node:
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            out.append(f"{full}: unknown key (known: {sorted(known)})")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            out.extend(unknown_keys(child, f"{full}."))
    return out


_OPTIMS = {"adamw", "sgd"}
_SCHEDULERS = {"constant", "linear", "cosine"}
_SOURCES = {"toy", "file", "hub"}
_CHECKERS = {"exact", "gsm8k", "label", None}


def _check_dataset(errors: list[str], key: str, spec: DatasetConfig | None) -> None:
    if spec is None:
        return
    if spec.source not in _SOURCES:
        errors.append(f"{key}.source: '{spec.source}' is not one of {sorted(_SOURCES)}")
    elif spec.source == "file":
        if not spec.path:
            errors.append(f"{key}.path: required when source=file")
        elif not os.path.isfile(spec.path):
            errors.append(f"{key}.path: file not found: {spec.path}")
    elif not spec.name:
        errors.append(f"{key}.name: required when source={spec.source}")
    if spec.start < 0 or (spec.stop is not None and spec.stop <= spec.start):
        errors.append(f"{key}.start/stop: need 0 <= start < stop, got start={spec.start} stop={spec.stop}")
    if spec.limit is not None and spec.limit <= 0:
        errors.append(f"{key}.limit: must be > 0, got {spec.limit}")
    if spec.prompt_format is not None:
        try:
            spec.prompt_format.format(prompt="", input="")
        except (KeyError, IndexError, ValueError) as e:
            errors.append(f"{key}.prompt_format: only {{prompt}} and {{input}} may appear (literal braces doubled): "
                          f"{type(e).__name__} {e}")


def _check_optim(errors: list[str], key: str, o: OptimConfig) -> None:
    if not o.lr > 0:
        errors.append(f"{key}.lr: must be > 0, got {o.lr}")
    if o.name not in _OPTIMS:
        errors.append(f"{key}.name: '{o.name}' is not one of {sorted(_OPTIMS)}")
    if o.scheduler not in _SCHEDULERS:
        errors.append(f"{key}.scheduler: '{o.scheduler}' is not one of {sorted(_SCHEDULERS)}")
    if o.batch_size <= 0:
        errors.append(f"{key}.batch_size: must be > 0, got {o.batch_size}")
    if o.grad_accum <= 0:
        errors.append(f"{key}.grad_accum: must be > 0, got {o.grad_accum}")
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
    from sweeps.methods import known_method_errors
    from sweeps.scoring.scorer import METRICS

    errors: list[str] = []
    _check_optim(errors, "optim", cfg.optim)

    m = cfg.model
    errors.extend(precision_errors(m))
    if m.lora.enabled and (m.lora.r <= 0 or m.lora.alpha <= 0):
        errors.append("model.lora: r and alpha must be > 0")
    if m.lora.enabled and not 0 <= m.lora.dropout < 1:
        errors.append(f"model.lora.dropout: must be in [0, 1), got {m.lora.dropout}")
    if m.name_or_path != "toy" and not m.name_or_path.startswith("pkg:") and not os.path.isdir(m.name_or_path) \
            and _looks_like_path(m.name_or_path):
        errors.append(f"model.name_or_path: directory not found: {m.name_or_path}")
    if m.align.enabled:
        if m.align.refusal is None:
            errors.append("model.align.refusal: required when model.align.enabled")
        _check_dataset(errors, "model.align.refusal", m.align.refusal)
        _check_dataset(errors, "model.align.benign", m.align.benign)
        _check_optim(errors, "model.align.optim", m.align.optim)
        if m.align.max_length <= 0:
            errors.append(f"model.align.max_length: must be > 0, got {m.align.max_length}")

    d = cfg.data
    for key in ("train", "utility", "harmful", "refusal", "compliance", "overrefusal"):
        _check_dataset(errors, f"data.{key}", getattr(d, key))
    if not 0 <= d.poison.ratio <= 1:
        errors.append(f"data.poison.ratio: must be in [0, 1], got {d.poison.ratio}")
    if d.poison.ratio > 0 and d.poison.data is None:
        errors.append("data.poison.data: required when data.poison.ratio > 0")
    _check_dataset(errors, "data.poison.data", d.poison.data)
    if d.max_length <= 0:
        errors.append(f"data.max_length: must be > 0, got {d.max_length}")

    e = cfg.eval
    if e.asr.keywords not in KEYWORD_LISTS:
        errors.append(f"eval.asr.keywords: '{e.asr.keywords}' is not one of {sorted(KEYWORD_LISTS)}")
    if e.asr.max_new_tokens <= 0:
        errors.append(f"eval.asr.max_new_tokens: must be > 0, got {e.asr.max_new_tokens}")
    if e.asr.batch_size <= 0 or e.nll_batch_size <= 0:
        errors.append("eval.asr.batch_size / eval.nll_batch_size: must be > 0")
    if e.accuracy not in _CHECKERS:
        errors.append(f"eval.accuracy: '{e.accuracy}' is not one of {sorted(c for c in _CHECKERS if c)} or null")
    t = cfg.trial
    if t.check_every < 0 or t.check_limit <= 0:
        errors.append("trial.check_every / trial.check_limit: must be >= 0 / > 0")
    for key in [t.check_metric, *t.stop_if]:
        if t.check_every and key not in METRICS:
            errors.append(f"trial: check metric '{key}' is not one of {list(METRICS)}")
    if e.judge not in JUDGES:
        errors.append(f"eval.judge: '{e.judge}' is not a known judge (available: {', '.join(JUDGES)})")

    errors.extend(known_method_errors(cfg.method))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _looks_like_path(name: str) -> bool:
    # HF hub ids are "org/name"; anything starting like a filesystem path is meant to be local.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
