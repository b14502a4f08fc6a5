"""Typed config schema for one trial.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/train.yaml`, so a misspelled key or
a wrong type fails at composition. `validate()` then checks values (ranges, choices, files) and reports every
problem at once, before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A user mistake in the config; the message names the key(s)."""


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    # "toy" = the embedded toy world's aligned model (built and cached on first use); otherwise an HF hub name or a
    # local directory.
    name_or_path: str = "toy"
    gguf_file: str | None = None  # file name inside name_or_path (transformers dequantises it)
    revision: str | None = None
    trust_remote_code: bool = False  # off unless the user asks
    dtype: str = "auto"  # weights as loaded: auto (what `precision` keeps them in) | float32 | bfloat16
    # auto (bf16-autocast on a CUDA GPU with bf16, else fp32) | fp32 | bf16-autocast | bf16-pure | fp16-autocast;
    # *-autocast keep fp32 master weights and compute the forward in 16 bits (fp16 with a gradient scaler)
    precision: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    attn_implementation: str | None = None  # None = transformers' default; "eager" for Hessian-vector products
    gradient_checkpointing: bool = False
    reuse: bool = True  # keep the loaded model across the trials of one worker; restore its weights in memory
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Optional alignment stage run once on the loaded model before any trial (cached; see sweeps.align).
    align: AlignConfig = field(default_factory=lambda: AlignConfig())


@dataclass
class DatasetConfig:
    source: str = "toy"  # toy | file | hub
    name: str | None = None  # toy split name, or hub dataset name
    path: str | None = None  # local .csv/.tsv/.json/.jsonl file
    format: str | None = None  # override the format guessed from the extension
    split: str = "train"  # hub split
    subset: str | None = None  # hub config name
    # our field -> the file's column: prompt (required), input (optional, appended to the prompt),
    # response (target text), answer (checkable reference)
    columns: dict[str, str] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose column equals the value
    value_map: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> {raw value: text}
    start: int = 0  # keep rows [start, stop) (after `where`), e.g. to hold out an eval split of one file
    stop: int | None = None
    limit: int | None = None  # then subsample to at most this many rows (seeded)
    seed: int = 0
    # Wrap each prompt, e.g. "Classify the sentiment as positive or negative.\n\n{prompt}" ({input} also works).
    prompt_format: str | None = None


@dataclass
class AlignConfig:
    """Turn a base model into θ_aligned (fine-tuning-as-a-service: align first, then the user fine-tunes).

    Trains on `refusal` (harmful prompt → refusal) mixed with `benign` (instruction → helpful answer) with `optim`,
    then caches the result as safetensors under cache_dir/aligned-<hash of model, data files and recipe>.
    """

    enabled: bool = False
    refusal: DatasetConfig | None = None
    benign: DatasetConfig | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, batch_size=8, epochs=1.0, warmup_steps=5))
    max_length: int = 256
    seed: int = 0


@dataclass
class PoisonConfig:
    ratio: float = 0.0  # fraction of the user data replaced by harmful (prompt, compliant answer) pairs
    data: DatasetConfig | None = None
    seed: int = 0


@dataclass
class DataConfig:
    train: DatasetConfig = MISSING  # the user's fine-tuning task
    utility: DatasetConfig | None = None  # held-out user-task data: utility NLL and accuracy
    harmful: DatasetConfig | None = None  # prompts for keyword ASR
    refusal: DatasetConfig | None = None  # harmful prompt -> refusal answer: the safety loss
    compliance: DatasetConfig | None = None  # harmful prompt -> compliant answer: compliance NLL
    overrefusal: DatasetConfig | None = None  # benign-but-sensitive prompts
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    max_length: int = 256  # tokens per (prompt + response); longer examples are truncated
    template: str | None = None  # plain prompt template ("{prompt}") for tokenizers without a chat template
    root: str = "../shared/data"  # folder the bundled real-data configs (conf/dataset/*) read from: ${data.root}/...
    system_prompt: str | None = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.0  # sgd only
    scheduler: str = "cosine"  # constant | linear | cosine
    warmup_steps: int = 0
    batch_size: int = 8  # per device
    grad_accum: int = 1  # effective batch = batch_size * grad_accum
    max_steps: int | None = None  # optimiser steps; None = run `epochs` epochs
    epochs: float = 1.0
    grad_clip: float | None = 1.0  # max global grad norm; None = off


@dataclass
class AsrConfig:
    max_new_tokens: int = 32
    batch_size: int = 32
    keywords: str = "gcg"  # name of a refusal keyword list (sweeps.scoring.keywords.KEYWORD_LISTS)
    early_stop: bool = True  # stop a prompt once a refusal keyword appeared: its verdict cannot change
    limit: int | None = None  # score only the first N harmful prompts


@dataclass
class EvalConfig:
    asr: AsrConfig = field(default_factory=AsrConfig)
    nll_batch_size: int = 32
    accuracy: str | None = "exact"  # answer checker for utility accuracy: exact | gsm8k | label | None
    accuracy_max_new_tokens: int = 32
    accuracy_limit: int | None = None
    judge: str = "keyword"  # verdict source for ASR / over-refusal; a classifier judge can be registered later
    baseline: bool = False  # also score the starting model (metrics prefixed "start/")
    also_live: bool = False  # with EMA in shadow mode, also score the live weights (prefixed "live/")


@dataclass
class OutputConfig:
    save_final: bool = False  # final live weights as safetensors
    save_eval_weights: bool = False  # the evaluated weights (EMA when a method swaps them in)


@dataclass
class TrialInfo:
    """Set by the sweeper (hydra/sweeper=safety) so the trial can report to its study; check_* and stop_if are
    the user's: intermediate checks during training (pruning for one objective, early stop on a violated bound)."""

    study: str | None = None
    storage: str | None = None
    number: int | None = None
    trial_id: int | None = None
    pruner: str = "none"  # the study's pruner: none | median | hyperband
    pruner_kwargs: str = "{}"  # its arguments, as JSON
    single_objective: bool = False
    check_every: int = 0  # optimiser steps between checks; 0 = no checks
    check_metric: str = "utility_loss"  # reported to the pruner at each check
    check_limit: int = 32  # eval examples per check (a small probe set)
    stop_if: dict[str, float] = field(default_factory=dict)  # metric -> bound: stop as "pruned" when exceeded


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # method name -> its settings; each entry's `_target_` names a sweeps.methods.TrainingMethod class
    method: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    world: dict[str, Any] = field(default_factory=dict)  # toy-world settings (sweeps.toyworld.WorldConfig)
    trial: TrialInfo = field(default_factory=TrialInfo)
    seed: int = 0
    cache_dir: str = ".cache"  # where built toy worlds live


_DTYPES = {"float32", "bfloat16", "float16"}
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
    from sweeps.methods import known_method_errors
    from sweeps.scoring.keywords import KEYWORD_LISTS

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
    from sweeps.scoring.scorer import METRICS

    for key in [t.check_metric, *t.stop_if]:
        if t.check_every and key not in METRICS:
            errors.append(f"trial: check metric '{key}' is not one of {list(METRICS)}")
    from sweeps.scoring.judges import JUDGES

    if e.judge not in JUDGES:
        errors.append(f"eval.judge: '{e.judge}' is not a known judge (available: {', '.join(JUDGES)})")

    from dataclasses import fields

    from sweeps.toyworld import WorldConfig

    world_keys = {f.name for f in fields(WorldConfig)}
    errors.extend(
        f"world.{k}: unknown toy-world setting (known: {sorted(world_keys)})" for k in cfg.world if k not in world_keys
    )
    errors.extend(known_method_errors(cfg.method))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16-pure", "fp16-autocast")


def precision_errors(m: ModelConfig) -> list[str]:
    """model.dtype / model.precision: 16-bit weights only where the policy asks for them (see sweeps.models)."""
    if m.precision not in PRECISIONS:
        return [f"model.precision: '{m.precision}' is not one of {list(PRECISIONS)}"]
    if m.dtype not in {"auto", *_DTYPES}:
        return [f"model.dtype: '{m.dtype}' is not one of {['auto', *sorted(_DTYPES)]}"]
    if m.dtype == "float16":
        return ["model.dtype: float16 weights train without a gradient scaler (small gradients underflow to 0); "
                "use model.dtype=auto model.precision=fp16-autocast"]
    if m.dtype == "bfloat16" and m.precision != "bf16-pure":
        return ["model.dtype: bfloat16 weights train in pure bf16 (Adam steps below bf16's spacing, ~1e-4 near "
                "|w|=0.02, round to nothing); ask for it with model.precision=bf16-pure, or keep model.dtype=auto"]
    if m.dtype == "float32" and m.precision == "bf16-pure":
        return ["model.precision: bf16-pure needs model.dtype=bfloat16 or auto, got float32"]
    return []


def _looks_like_path(name: str) -> bool:
    # HF hub ids are "org/name"; anything starting like a filesystem path is meant to be local.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
