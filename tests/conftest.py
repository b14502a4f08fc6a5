from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Built toy worlds are cached here across test runs (and shared with `python -m sweeps.train`).
CACHE_DIR = Path(os.environ.get("SWEEPS_CACHE_DIR", ROOT / ".cache"))
PYTHON = sys.executable


@pytest.fixture(scope="session")
def toy_root() -> Path:
    """The default toy world (θ_base, θ_aligned); built once per machine, then read from the cache."""
    import warnings

    from sweeps.toyworld import WorldConfig, ensure_world
    from sweeps.toyworld._build import stale_build

    root = ensure_world(WorldConfig(), CACHE_DIR)
    if (why := stale_build(root)) is not None:  # tests asserting the world's refusals may pass here and fail on CI
        warnings.warn(why, stacklevel=1)
    return root


@pytest.fixture(scope="session")
def toy_world():
    from sweeps.toyworld import World, WorldConfig

    return World(WorldConfig())


@pytest.fixture()
def aligned(toy_root):
    """A fresh copy of θ_aligned and its tokenizer (tests may modify the model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(toy_root / "aligned")
    model.eval()
    return model, AutoTokenizer.from_pretrained(toy_root / "aligned")


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file not present: {path}")
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu`-marked tests skip, with the reason, where CUDA is absent (`pytest -m gpu` on a GPU machine runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
