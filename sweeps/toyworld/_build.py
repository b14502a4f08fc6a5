"""Build (once) and cache the toy world's tokenizer, θ_base and θ_aligned as ordinary HF model directories."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sweeps.config import OptimConfig
from sweeps.formatting import PromptFormatter
from sweeps.loop import train
from sweeps.methods import MethodStack
from sweeps.toyworld._world import World, WorldConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: built by the token-weighted loop of 2026-12-02 (different bits from format 1)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}{% if m['role'] == 'system' %} <|system|> {{ m['content'] }}"
    "{% elif m['role'] == 'user' %} <|user|> {{ m['content'] }}"
    "{% else %} <|assistant|> {{ m['content'] }} </s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} <|assistant|>{% endif %}"
)


# fields added after format 2 at their format-2 values (conf/world/format2.yaml) are left out of the key, so worlds
# cached before they existed keep their key
_KEYLESS_DEFAULTS = {"sound_lists": 0, "train_templates": 6, "pretrain_heldout_harmful": True}


# The code whose arithmetic decides a built world's bits. The key leaves it out (a world is defined by its config), so a
# cached world may come from other code: a change of loss arithmetic alone (2026-12-06) built a world that failed the
# tests CI built it for while the cached one passed here. `stale_build` says when the cache is from other code.
_BUILD_SOURCES = ("config.py", "formatting.py", "lm_loss.py", "loop.py", "toyworld/_build.py", "toyworld/_world.py")


def build_fingerprint() -> str:
    """A hash of the sources in `_BUILD_SOURCES` and the torch version: what a fresh build here would be built by."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(torch.__version__.encode())
    for name in _BUILD_SOURCES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:12]


def stale_build(root: Path) -> str | None:
    """Why the cached world at `root` may differ from what this code builds today, or None (same code)."""
    try:
        built = json.loads((root / "world.json").read_text()).get("built_with", {})
    except (OSError, ValueError):
        built = {}
    code, now = built.get("code"), build_fingerprint()
    if code == now:
        return None
    which = f"code {code}" if code else "code not recorded (built before 2026-12-06)"
    return (f"toy world {root} was built by other code ({which}; now {now}): its weights may differ "
            f"from a fresh build, as on a CI machine — delete the folder to rebuild it")


def world_key(cfg: WorldConfig) -> str:
    keyed = {k: v for k, v in cfg.to_dict().items() if _KEYLESS_DEFAULTS.get(k, object()) != v}
    blob = json.dumps({"world": keyed, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_world_key(config: Mapping[str, Any]) -> str | None:
    """The toy world a trial config (a run's `.hydra/config.yaml`, or a composed config as a dict) runs on: its cache
    key, or None when its model is not the toy world's. Fields this code does not know are left out."""
    if not str((config.get("model") or {}).get("name_or_path", "")).startswith("toy"):
        return None
    known = {f.name for f in fields(WorldConfig)}
    return world_key(WorldConfig(**{k: v for k, v in (config.get("world") or {}).items() if k in known}))


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    words = sorted({w for text in world.all_text() for w in text.split()} - set(SPECIALS))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"  # generation pads on the left; training collates its own right padding
    return tok


def build_model(cfg: WorldConfig, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _stage(model, tok, pairs, steps: int, lr: float, cfg: WorldConfig, name: str) -> float:
    fmt = PromptFormatter(tok)
    data = [fmt.encode_pair(p, r, max_length=64) for p, r in pairs]
    optim = OptimConfig(lr=lr, max_steps=steps, batch_size=cfg.batch_size, warmup_steps=steps // 20, grad_clip=1.0)
    result = train(model, data, optim, MethodStack([]), pad_id=tok.pad_token_id, seed=cfg.seed, progress=False)
    log.info("toy world %s: %d steps, final loss %.4f, %.1fs", name, result.steps, result.final_loss,
             result.train_time_s)  # fmt: skip
    return result.final_loss


_WARNED: set[Path] = set()  # stale cached worlds already logged in this process


def ensure_world(cfg: WorldConfig, cache_dir: str | os.PathLike) -> Path:
    """Return the world's cache folder (with base/ and aligned/ HF model dirs), building it if absent."""
    root = Path(cache_dir) / f"toyworld-{world_key(cfg)}"
    if (root / "aligned" / "config.json").exists():
        if (why := stale_build(root)) is not None and root not in _WARNED:
            _WARNED.add(root)
            log.warning(why)
        return root
    log.info("building toy world %s (once; cached in %s)", world_key(cfg), root)
    t0 = time.time()
    world = World(cfg)
    tok = build_tokenizer(world)
    model = build_model(cfg, tok)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        _stage(model, tok, world.pretrain_corpus(), cfg.pretrain_steps, cfg.pretrain_lr, cfg, "pretrain")
        model.save_pretrained(tmp / "base", safe_serialization=True)
        tok.save_pretrained(tmp / "base")
        _stage(model, tok, world.align_corpus(), cfg.align_steps, cfg.align_lr, cfg, "align")
        model.save_pretrained(tmp / "aligned", safe_serialization=True)
        tok.save_pretrained(tmp / "aligned")
        # the weights follow the float rounding of the machine and thread count that built them: record both
        built = {"threads": torch.get_num_threads(), "torch": torch.__version__, "code": build_fingerprint(),
                 "seconds": round(time.time() - t0, 1)}
        (tmp / "world.json").write_text(json.dumps({"key": world_key(cfg), **cfg.to_dict(), "built_with": built},
                                                   indent=2))
        try:
            os.rename(tmp, root)  # atomic: a concurrent builder that lost the race discards its copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
