"""Typed config schema for one trial: dataclasses only, importing nothing of the project (every module may use it).

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/train.yaml` (sweeps.validate), so a
misspelled key or a wrong type fails at composition. `sweeps.validate.validate()` then checks values (ranges,
choices, files) and reports every problem at once, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import MISSING


class ConfigError(ValueError):
    """A user mistake in the config; the message names the key(s)."""


# `method.<name>`: {"_target_": "sweeps.methods.EMA", "eta": 0.25, ...}
MethodEntry = dict[str, Any]


@dataclass
class WorldConfig:
    """The embedded toy world (sweeps/toyworld): the same settings always build the same world, cached under a hash
    of `to_dict()`. Not frozen: Hydra overrides (`world.seed=1`) write into it while composing."""

    seed: int = 0
    # model (a tiny Llama)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    # stage recipes (AdamW, cosine)
    pretrain_steps: int = 1500
    pretrain_lr: float = 3e-3
    align_steps: int = 1200
    align_lr: float = 1e-3
    batch_size: int = 32
    # data sizes
    task_train_size: int = 1000
    task_eval_size: int = 100
    task_min_len: int = 2
    task_max_len: int = 3
    task_prefix: str = ""  # how user-task answers open ("": the bare sound list, a format pretraining knows)
    sound_facts: bool = True  # pretraining teaches each animal's sound, so the user task reuses known facts
    sound_lists: int = 2000  # pretraining examples listing sounds without names (other prompts; a fifth kept in
    # alignment): the user task is then known answers under new prompts (1000 with 12 training phrasings; 24 halve
    # their share of pretraining, and the gentle recipe's utility fell to 0.88 on world seed 1)
    train_templates: int = 24  # training phrasings of a request (alignment generalises from these to 3 held-out ones;
    # with 12, world seeds 0 and 1 built by the response-only loss refused only 84-89 % of held-out requests)
    pretrain_heldout_harmful: bool = False  # True: pretraining also answers the harmful prompts ASR is measured on
    # (conf/world/format2.yaml sets the five fields that differ to the format-2 world, the default until 2026-12-02)

    def to_dict(self) -> dict:
        return asdict(self)


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
    # several processes (torchrun; sweeps.distributed): ddp (LoRA or full FT) | fsdp (FSDP2, full fine-tuning only)
    distributed: str = "ddp"
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
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose column equals the value (or one of a list)
    value_map: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> {raw value: text}
    start: int = 0  # keep rows [start, stop) (after `where`), e.g. to hold out an eval split of one file
    stop: int | None = None
    limit: int | None = None  # then subsample to at most this many rows (seeded)
    seed: int = 0
    # drop rows whose needed field (prompt, or response for training/NLL sets) is empty instead of stopping at the
    # first one (upstream files with a few blank answers, e.g. 2 of alpaca_5000's rows); before start/stop
    drop_empty: bool = False
    # Wrap each prompt, e.g. "Classify the sentiment as positive or negative.\n\n{prompt}" ({input} also works).
    prompt_format: str | None = None


@dataclass
class AlignConfig:
    """Turn a base model into θ_aligned (fine-tuning-as-a-service: align first, then the user fine-tunes).

    Trains on `refusal` (harmful prompt → refusal) mixed with `benign` (instruction → helpful answer) with `optim`,
    then caches the result as safetensors under cache_dir/aligned-<hash of model, data files and recipe>.
    `borderline`: benign prompts that look harmful (e.g. OR-Bench-Hard), answered by the base model itself before
    training (greedy, `borderline_tokens` new tokens; answers that start as a refusal and prompts the over-refusal
    evaluation scores are dropped) — against refusing on trigger words ("kill a process").
    `contrast`: harmful prompts that look like the borderline ones (XSTest's contrast prompts: "kill a person"),
    paired with refusals — the other side of the trigger word; prompts the evaluation scores (data.harmful,
    data.refusal, data.compliance) are dropped.
    """

    enabled: bool = False
    refusal: DatasetConfig | None = None
    benign: DatasetConfig | None = None
    borderline: DatasetConfig | None = None
    borderline_tokens: int = 64
    contrast: DatasetConfig | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, batch_size=8, epochs=1.0, warmup_steps=5))
    max_length: int = 256
    seed: int = 0


@dataclass
class MixConfig:
    """One data mix (`data.mixes.<tag>`): examples of `data` that replace user examples, so the number of training
    examples stays that of data.train (as in the poisoning and SafeInstr papers). Exactly one of `ratio` (a fraction
    of the user examples) and `count` may be non-zero; each mixed example keeps `<tag>` as its data source."""

    data: DatasetConfig | None = None
    ratio: float | None = None
    count: int | None = None
    seed: int = 0  # which user positions are replaced and which examples of `data` replace them


@dataclass
class DataConfig:
    train: DatasetConfig = MISSING  # the user's fine-tuning task
    utility: DatasetConfig | None = None  # held-out user-task data: utility NLL and accuracy
    harmful: DatasetConfig | None = None  # prompts for keyword ASR
    refusal: DatasetConfig | None = None  # harmful prompt -> refusal answer: the safety loss
    compliance: DatasetConfig | None = None  # harmful prompt -> compliant answer: compliance NLL
    overrefusal: DatasetConfig | None = None  # benign-but-sensitive prompts
    # more over-refusal sets scored beside it, name -> spec: metric over_refusal/<name> (e.g. or_bench in conf/data/*)
    overrefusal_extra: dict[str, DatasetConfig] = field(default_factory=dict)
    # tag -> mix: `poison` (harmful answers, data.mixes.poison.ratio) and `safeinstr` (SafeInstr's refusals,
    # data.mixes.safeinstr.count) in conf/data/*; a config file's data.mixes.<tag> adds another
    mixes: dict[str, MixConfig] = field(default_factory=dict)
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
    judge: str = "keyword"  # verdict source for ASR: keyword | llama_guard (over-refusal: overrefusal_judge)
    # over-refusal verdicts: xstest (the answer starts with one of XSTest's refusal prefixes) | gcg | strict (keywords
    # anywhere; gcg was the default before 2026-12-06 and flags compliant answers that say "illegal", "As an", ...)
    overrefusal_judge: str = "xstest"
    judge_model: str | None = None  # eval.judge=llama_guard: a local Llama-Guard-style model directory
    baseline: bool = False  # also score the starting model (metrics prefixed "start/")
    also_live: bool = False  # with EMA in shadow mode, also score the live weights (prefixed "live/")
    # several shadow-mode methods (a grid of EMAs on one training trajectory): the live weights are the run's result
    # (and what trial.stop_if and a pruner judge), each method's own weights are scored too (prefixed
    # "shadow/<name>/", also at every trial check)
    each_shadow: bool = False
    # α values: θ(α) = θ_aligned + α·(θ_evaluated − θ_aligned) scored after training (prefixed "interp/<α>/")
    interpolate: list[float] = field(default_factory=list)


@dataclass
class OutputConfig:
    save_final: bool = False  # final live weights as safetensors
    save_eval_weights: bool = False  # the evaluated weights (EMA when a method swaps them in; live with each_shadow)


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
    # method name -> its settings (conf/method/<name>.yaml, composed with method=[ema] and overridden with
    # method.ema.eta=...): `_target_` names a sweeps.methods.TrainingMethod class, the other keys are its arguments.
    # Arguments differ per method, so an entry is a mapping checked by validate() against the class's signature.
    method: dict[str, MethodEntry] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    world: WorldConfig = field(default_factory=WorldConfig)  # the embedded toy world (sweeps.toyworld)
    trial: TrialInfo = field(default_factory=TrialInfo)
    seed: int = 0
    cache_dir: str = ".cache"  # where built toy worlds live
