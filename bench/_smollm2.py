"""What the SmolLM2 benches (bench_nll.py, bench_train_loss.py) share: a cached θ_aligned and ../shared/data."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_aligned(model: str | None, threads: int) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The θ_aligned folder `model` (default: the first `.cache/aligned-*`, built by any SmolLM2 study), fp32, in eval
    mode, with `threads` CPU threads; exits with one line when it or ../shared/data is missing."""
    torch.set_num_threads(threads)
    folder = Path(model) if model else next(iter(sorted((ROOT / ".cache").glob("aligned-*"))), None)
    if folder is None or not (folder / "model.safetensors").is_file() or not DATA.is_dir():
        sys.exit("needs a θ_aligned folder (--model, or run a SmolLM2 study once) and ../shared/data")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(folder), model
