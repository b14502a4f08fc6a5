"""The alignment stage: base model → θ_aligned, built once per (model, data files, recipe) and cached as safetensors.

Fine-tuning-as-a-service studies first align the model (harmful prompt → refusal, mixed with benign instructions →
helpful answers), then let the user fine-tune θ_aligned. Every trial of a study, every worker and every landscape with
the same `model.align` settings shares one cached copy: `<cache_dir>/aligned-<key>/` holds `model.safetensors`, the
tokenizer and `align.json` (what was trained, for how long, final loss). A file lock makes concurrent workers wait for
one build instead of each building their own.

`python -m sweeps.align [overrides]` (sweeps/align.py) builds it explicitly and prints the folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sweeps.config import AlignConfig, ConfigError, DataConfig, DatasetConfig, ModelConfig

log = logging.getLogger(__name__)
ALIGN_FORMAT_VERSION = 2  # bump when the build recipe changes in a way the key cannot see (2: over-long pairs keep
# their response, prompt cut from the left)


def _file_digest(path: str) -> str:
    stat = os.stat(os.path.expanduser(path))
    return _digest(os.path.expanduser(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per (path, size, mtime) in a worker, not again for every trial's key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec_identity(spec: DatasetConfig | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    ident = dataclasses.asdict(spec)
    if not ident["drop_empty"]:
        del ident["drop_empty"]  # added later: at its default it leaves older specs' keys (and caches) as they were
    if spec.source == "file" and spec.path:
        ident["path"] = os.path.basename(spec.path)  # the content decides, not where the file sits
        ident["sha256"] = _file_digest(spec.path)
    return ident


def align_key(model: ModelConfig, data: DataConfig) -> str:
    """Hash of everything that decides θ_aligned: base weights, data contents, recipe, prompt formatting."""
    a = model.align
    ident = {
        "version": ALIGN_FORMAT_VERSION,
        "base": [model.name_or_path, model.gguf_file, model.revision, model.dtype, _precision(model)],
        "refusal": _spec_identity(a.refusal),
        "benign": _spec_identity(a.benign),
        # absent when unused, so the keys (and caches) of alignments made before the field existed stay as they were;
        # the prompts actually used (after holding out the evaluation's) decide, not the evaluation sets' sizes
        **({"borderline": _spec_identity(a.borderline), "borderline_tokens": a.borderline_tokens,
            "borderline_prompts": hashlib.sha256(json.dumps(_borderline_prompts(a, data)[0]).encode()).hexdigest()}
           if a.borderline is not None else {}),
        **({"contrast": _spec_identity(a.contrast),
            "contrast_pairs": hashlib.sha256(json.dumps(_contrast_pairs(a, data)[0]).encode()).hexdigest()}
           if a.contrast is not None else {}),
        "optim": dataclasses.asdict(a.optim),
        "max_length": a.max_length,
        "seed": a.seed,
        "template": data.template,
        "system_prompt": data.system_prompt,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _borderline_prompts(a: AlignConfig, data: DataConfig) -> tuple[list[str], int]:
    """`model.align.borderline`'s prompts minus those the over-refusal evaluation scores as configured (file and hub
    sets; toy sets are the toy world's own), and how many were held out."""
    from sweeps.data import DataError, load_examples

    if a.borderline is None:
        return [], 0
    evaluated = {"data.overrefusal": data.overrefusal} if data.overrefusal is not None else {}
    evaluated |= {f"data.overrefusal_extra.{k}": v for k, v in data.overrefusal_extra.items()}
    try:
        prompts = [e.prompt for e in load_examples(a.borderline, key="model.align.borderline")]
        held_out = {e.prompt for key, spec in evaluated.items() if spec.source != "toy"
                    for e in load_examples(spec, key=key)}  # fmt: skip
    except DataError as e:
        raise ConfigError(str(e)) from None
    kept = [p for p in prompts if p not in held_out]
    return kept, len(prompts) - len(kept)


def _contrast_pairs(a: AlignConfig, data: DataConfig) -> tuple[list[tuple[str, str]], int]:
    """`model.align.contrast`'s (prompt, refusal) pairs minus prompts the ASR, safety-loss and compliance evaluations
    score (data.harmful, data.refusal, data.compliance; file and hub sets), and how many were held out."""
    from sweeps.data import DataError, load_examples

    if a.contrast is None:
        return [], 0
    evaluated = {k: v for k, v in (("data.harmful", data.harmful), ("data.refusal", data.refusal),
                                   ("data.compliance", data.compliance)) if v is not None and v.source != "toy"}
    try:
        pairs = [(e.prompt, e.response or "") for e in load_examples(a.contrast, key="model.align.contrast",
                                                                     need=("prompt", "response"))]  # fmt: skip
        held_out = {e.prompt for key, spec in evaluated.items() for e in load_examples(spec, key=key)}
    except DataError as e:
        raise ConfigError(str(e)) from None
    kept = [(p, r) for p, r in pairs if p not in held_out]
    return kept, len(pairs) - len(kept)


def _distill_borderline(model: Any, tok: Any, fmt: Any, prompts: list[str], max_new_tokens: int,
                        progress: bool) -> tuple[list[tuple[str, str]], int]:  # fmt: skip
    """The base model's own greedy answers to `prompts`; an answer that starts as a refusal (XSTest's prefixes, the
    over-refusal judge) or is empty is dropped. An answer cut at max_new_tokens ends at its last full sentence."""
    from sweeps.scoring.generate import generate
    from sweeps.scoring.keywords import starts_as_refusal

    out = generate(model, tok, [fmt.encode_prompt(p) for p in prompts], max_new_tokens=max_new_tokens,
                   batch_size=16, progress=progress, desc="align: borderline answers")  # fmt: skip
    pairs, refused = [], 0
    for prompt, g in zip(prompts, out, strict=True):
        text = g.text.strip()
        if g.new_tokens >= max_new_tokens:
            cut = max(text.rfind(c) for c in ".!?\n")
            text = text[: cut + 1].strip() if cut > 0 else text
        if not text or starts_as_refusal(text):
            refused += 1
            continue
        pairs.append((prompt, text))
    return pairs, refused


def _precision(model: ModelConfig) -> str:
    from sweeps.models import resolve_precision

    return resolve_precision(model).name  # resolved: an `auto` build on a GPU differs from one on a CPU


def aligned_model_config(model: ModelConfig, root: Path) -> ModelConfig:
    """The config that loads the cached θ_aligned (a plain HF folder) with the user's dtype, device and LoRA."""
    return dataclasses.replace(model, name_or_path=str(root), gguf_file=None, revision=None, align=AlignConfig())


def ensure_aligned(model: ModelConfig, data: DataConfig, cache_dir: str | os.PathLike,
                   *, progress: bool = True) -> ModelConfig:
    """Return `model` unchanged when no alignment is asked for, else a config pointing at the cached θ_aligned.

    `model` must already be resolved (no `pkg:` name). Builds under an exclusive file lock when absent.
    """
    if not model.align.enabled:
        return model
    key = align_key(model, data)
    root = Path(cache_dir) / f"aligned-{key}"
    if (root / "align.json").exists():
        return aligned_model_config(model, root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock = open(root.parent / f".aligned-{key}.lock", "w")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise ConfigError(f"cache_dir: cannot write the aligned model to {root.parent} ({e.strerror or e})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it: wait, then reuse its result
        if not (root / "align.json").exists():
            _build(model, data, root, progress)
    return aligned_model_config(model, root)


def _build(model_cfg: ModelConfig, data: DataConfig, root: Path, progress: bool) -> None:
    from sweeps.data import DataError, load_examples
    from sweeps.formatting import PromptFormatter
    from sweeps.loop import train
    from sweeps.methods import MethodStack
    from sweeps.models import load_base_model, resolve_precision

    a = model_cfg.align
    try:
        refusal = load_examples(a.refusal, key="model.align.refusal", need=("prompt", "response"))
        benign = [] if a.benign is None else load_examples(a.benign, key="model.align.benign",
                                                            need=("prompt", "response"))  # fmt: skip
    except DataError as e:
        raise ConfigError(str(e)) from None
    borderline_prompts, n_held_out = _borderline_prompts(a, data)
    contrast, n_contrast_held_out = _contrast_pairs(a, data)
    base_cfg = dataclasses.replace(model_cfg, lora=dataclasses.replace(model_cfg.lora, enabled=False))
    log.info("aligning %s on %d refusal + %d benign (+ %d borderline prompts, %d contrast refusals, %d more contrast "
             "prompts held out as evaluation prompts) examples (once; cached in %s)", model_cfg.name_or_path,
             len(refusal), len(benign), len(borderline_prompts), len(contrast), n_contrast_held_out, root)  # fmt: skip
    model, tok = load_base_model(base_cfg, model_cfg.name_or_path)
    fmt = PromptFormatter(tok, data.template, data.system_prompt)
    distilled, n_refused = [], 0
    if borderline_prompts:
        distilled, n_refused = _distill_borderline(model, tok, fmt, borderline_prompts, a.borderline_tokens, progress)
        log.info("borderline: %d of %d prompts answered by the base model (%d held out as evaluation prompts, %d "
                 "answers started as a refusal)", len(distilled), len(borderline_prompts) + n_held_out, n_held_out,
                 n_refused)  # fmt: skip
    encoded, truncation = [], {}
    roles = [("refusal", [(e.prompt, e.response or "") for e in refusal]),
             ("benign", [(e.prompt, e.response or "") for e in benign])]
    roles += [("borderline", distilled)] if a.borderline is not None else []
    roles += [("contrast", contrast)] if a.contrast is not None else []
    for role, pairs in roles:
        kept, stats = fmt.encode_pairs(pairs, a.max_length, f"model.align.{role}")
        encoded += kept
        truncation.update(stats.metrics(f"align.{role}"))
    if not encoded:
        raise ConfigError(f"model.align.max_length: {a.max_length} leaves no response token in any alignment example")
    start = time.perf_counter()
    result = train(model, encoded, a.optim, MethodStack([]), pad_id=tok.pad_token_id, seed=a.seed, progress=progress,
                   precision=resolve_precision(base_cfg))  # fmt: skip
    if result.status != "completed":
        raise ConfigError(f"model.align.optim: alignment {result.status} at step {result.diverged_at} "
                          "(lower model.align.optim.lr)")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=".aligning-", dir=root.parent))
    try:
        save_plain(model, tmp)
        tok.save_pretrained(tmp)
        info = {
            "key": root.name.removeprefix("aligned-"), "base": model_cfg.name_or_path, "gguf_file": model_cfg.gguf_file,
            "n_refusal": len(refusal), "n_benign": len(benign), "steps": result.steps,
            **({"n_borderline": len(distilled), "borderline_held_out": n_held_out, "borderline_refused": n_refused}
               if a.borderline is not None else {}),
            **({"n_contrast": len(contrast), "contrast_held_out": n_contrast_held_out}
               if a.contrast is not None else {}),
            "effective_batch_size": result.effective_batch_size, "final_loss": result.final_loss,
            "train_time_s": result.train_time_s, "wall_time_s": time.perf_counter() - start,
            "align": dataclasses.asdict(a), "truncation": truncation,
        }  # fmt: skip
        (tmp / "align.json").write_text(json.dumps(info, indent=2, default=str))
        if a.borderline is not None:  # what the base model taught θ_aligned to answer, to read
            (tmp / "borderline.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                                                          for p, r in distilled))  # fmt: skip
        os.rename(tmp, root)  # atomic: a reader sees no folder or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("aligned in %.0fs: %d steps, final loss %.4f → %s", info["wall_time_s"], result.steps,
             result.final_loss or float("nan"), root)  # fmt: skip


def align_truncation(model: ModelConfig) -> dict[str, int]:
    """`truncated/align.*` and `dropped/align.*` of the alignment stage behind `model` (empty when there is none)."""
    info = Path(model.name_or_path) / "align.json"
    return json.loads(info.read_text()).get("truncation", {}) if info.is_file() else {}


def save_plain(model: Any, folder: Path) -> None:
    """save_pretrained as safetensors, also for a model loaded from GGUF (dequantised to full precision, but
    transformers still marks it quantised and refuses to serialise it): then config + weights are written directly."""
    if getattr(model, "hf_quantizer", None) is None:
        model.save_pretrained(folder, safe_serialization=True)
        return
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # drops tied duplicates
