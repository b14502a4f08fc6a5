"""What only a GPU shows (all marked `gpu`, skipped without CUDA; bench/gpu_check.py runs them on a lent GPU)."""

from __future__ import annotations

import gc
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CACHE_DIR, PYTHON, ROOT

pytestmark = pytest.mark.gpu

TINY = ["optim.max_steps=3", "eval.asr.limit=2", "eval.accuracy_limit=2", "eval.asr.max_new_tokens=4",
        "eval.accuracy_max_new_tokens=4", f"cache_dir={CACHE_DIR}"]  # fmt: skip


def test_bf16_autocast_numerics_match_fp32(aligned) -> None:
    """bf16 autocast: the forward in 16 bits, the master weights and the loss to backprop stay fp32 and close."""
    from sweeps.config import ModelConfig
    from sweeps.models import resolve_precision

    model, _ = aligned
    model.cuda()
    ids = torch.randint(0, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss
        precision = resolve_precision(ModelConfig(precision="bf16-autocast"), ids.device)
        with precision.autocast():
            out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32  # autocast ran; loss upcast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert out.loss.float().item() == pytest.approx(ref.item(), rel=2e-2)


def test_cuda_memory_released_after_a_trial(tmp_path, toy_root) -> None:
    from hydra import compose, initialize_config_dir

    from sweeps.trial import run_trial
    from sweeps.validate import to_train_config

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose("train", overrides=[*TINY, "model.device=cuda", "model.reuse=false"])
    cfg = to_train_config(dcfg)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    metrics = run_trial(cfg, tmp_path / "run", progress=False)
    assert metrics["status"] == "completed"
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - before < 1024**2, "a finished trial keeps tensors on the GPU"


def test_deterministic_mode_gives_identical_weights(tmp_path, toy_root) -> None:
    """CUBLAS_WORKSPACE_CONFIG + torch.use_deterministic_algorithms (seed_everything): two runs, the same bits."""
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "SWEEPS_CACHE_DIR": str(CACHE_DIR)}
    weights = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        proc = subprocess.run([PYTHON, "-m", "sweeps.train", f"hydra.run.dir={run_dir}", *TINY, "model.device=cuda",
                               "output.save_final=true"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights.append(load_file(run_dir / "weights" / "final.safetensors"))
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for nccl DDP")
def test_ddp_nccl_two_gpus(tmp_path, toy_root) -> None:
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR)}
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                           "sweeps.train", f"hydra.run.dir={tmp_path / 'run'}", *TINY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").exists()
