"""Safety baselines: Lisa's phase schedule and anchors, SafeLoRA's projection rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeps.formatting import Encoded
from sweeps.methods import Resources, TrainingContext
from sweeps.methods.lisa import ALIGN, FINETUNE, Lisa, LisaSchedule


def test_lisa_schedule_alternates_alignment_first_like_the_reference() -> None:
    s = LisaSchedule(2, 3)
    phases = [s.advance()[0] for _ in range(12)]
    a, f = ALIGN, FINETUNE
    assert phases == [a, a, f, f, f, a, a, f, f, f, a, a]
    assert [LisaSchedule(0, 3).advance()[0] for _ in range(3)] == [f, f, f]  # no alignment: plain fine-tuning
    s = LisaSchedule(2, 0)
    assert [s.advance()[0] for _ in range(4)] == [a] * 4


def _lisa(total: int, **kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    safety = [Encoded([1, 2, 3], [-100, 2, 3])]
    lisa = Lisa(safety={"source": "toy", "name": "safety"}, **kw)
    ctx = TrainingContext(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=total, grad_accum=1,
                          batch_size=1, pad_id=0, resources=Resources({"lisa.safety": safety}))  # fmt: skip
    lisa.setup(ctx)
    return model, lisa


def test_lisa_anchor_is_the_last_weights_of_the_other_phase_and_batches_are_swapped() -> None:
    model, lisa = _lisa(10, align_steps=2, finetune_steps=2, rho=0.5, warmup=0.1)
    w = model.weight
    start = w.detach().clone()
    ends = {}
    for step in range(1, 7):
        user = {"input_ids": torch.tensor([[7, 8]]), "labels": torch.tensor([[-100, 8]])}
        lisa.before_step(step, [user])
        phase = lisa.phase
        if phase == ALIGN:  # the user batch was replaced by the safety stream's
            assert user["input_ids"].tolist() == [[1, 2, 3]]
        else:
            assert user["input_ids"].tolist() == [[7, 8]]
        w.grad = None
        lisa.after_backward(model)
        # the other phase's last weights (θ_aligned before the other phase has run); none in the first 10 %
        anchor = ends.get(FINETUNE if phase == ALIGN else ALIGN, start)
        if step <= 2:  # the reference's `steps > 0.1 * total` with 0-based steps: from step 3 of 10
            assert w.grad is None
        else:
            torch.testing.assert_close(w.grad, 0.5 * (w.detach() - anchor))
            torch.testing.assert_close(lisa.proximal, 0.25 * (w.detach() - anchor).square().sum())
        with torch.no_grad():
            w.add_(torch.full_like(w, float(step)))  # a distinct move per step
        ends[phase] = w.detach().clone()
    assert lisa.metrics()["align_steps"] == 4.0  # steps 1, 2, 5, 6
    assert lisa.metrics()["memory"] == 1.0  # the safety stream's size, as DER's `memory` (Table 5's m)
    assert _lisa(10, align_steps=0)[1].metrics()["memory"] == 0.0  # no alignment phase: no stream loaded


def test_lisa_state_restores_the_clock_and_anchors() -> None:
    model, lisa = _lisa(10, align_steps=2, finetune_steps=3)
    for step in range(1, 4):
        lisa.before_step(step, [{"input_ids": torch.tensor([[7]]), "labels": torch.tensor([[7]])}])
        with torch.no_grad():
            model.weight.add_(1.0)
    _, other = _lisa(10, align_steps=2, finetune_steps=3)
    other.load_state_dict(lisa.state_dict())
    assert [other.schedule.advance()[0] for _ in range(4)] == [lisa.schedule.advance()[0] for _ in range(4)]
    torch.testing.assert_close(other.anchors[ALIGN]["weight"], lisa.anchors[ALIGN]["weight"])


def test_lisa_bad_arguments_are_one_line_each() -> None:
    errors = Lisa.check_args({"rho": -1.0, "align_steps": 1.5, "warmup": 2})
    assert [e.split(":")[0] for e in errors] == ["rho", "align_steps", "warmup"]
    with pytest.raises(ValueError, match="finetune_steps"):
        Lisa(finetune_steps=-1)


def _tiny_modules():
    v = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # ‖V‖_F = 2: C = V·Vᵀ/2 = 2·e1·e1ᵀ
    a = torch.tensor([[1.0, 2.0]])
    inside = torch.tensor([[1.0], [0.0], [0.0]])  # ΔW in the alignment subspace: cos = 1
    outside = torch.tensor([[0.1], [1.0], [0.0]])  # mostly outside it: cos ≈ 0.0995
    return v, {"in": (lambda: v, a, inside.clone()), "out": (lambda: v, a, outside.clone())}, inside, outside


def test_safelora_projects_only_below_the_threshold_and_exactly() -> None:
    from sweeps.methods.safelora import safelora

    v, modules, _, outside = _tiny_modules()
    new_b, cos = safelora(modules, mode="threshold", threshold=0.5)
    assert cos["in"] == pytest.approx(1.0) and cos["out"] == pytest.approx(0.1 / 1.01**0.5, rel=1e-5)
    assert set(new_b) == {"out"}  # above the threshold: untouched
    c = v @ v.T / torch.linalg.matrix_norm(v)
    torch.testing.assert_close(new_b["out"], c @ outside)
    torch.testing.assert_close(new_b["out"], torch.tensor([[0.2], [0.0], [0.0]]))
    assert set(safelora(modules, mode="threshold", threshold=1.0)[0]) == {"in", "out"}  # cos ≤ threshold
    assert set(safelora(modules, mode="layers", layers=1)[0]) == {"out"}  # the lowest cosine


def test_safelora_command_on_saved_adapters(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from sweeps.safelora import main

    v, _, inside, outside = _tiny_modules()
    base = {"l0.q.weight": torch.zeros(3, 2), "l1.q.weight": torch.ones(3, 2)}
    aligned = {k: t + v for k, t in base.items()}
    a = torch.tensor([[1.0, 2.0]])
    p = "base_model.model."
    adapter = {f"{p}l0.q.lora_A.default.weight": a, f"{p}l0.q.lora_B.default.weight": inside,
               f"{p}l1.q.lora_A.default.weight": a.clone(), f"{p}l1.q.lora_B.default.weight": outside}
    for name, tensors in (("base", base), ("aligned", aligned), ("adapter", adapter)):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    args = ["--base", str(tmp_path / "base.safetensors"), "--aligned", str(tmp_path / "aligned.safetensors"),
            "--adapter", str(tmp_path / "adapter.safetensors"), "--out", str(tmp_path / "out.safetensors")]
    assert main(args) == 0
    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["base_model.model.l0.q.lora_B.default.weight"], inside)
    torch.testing.assert_close(out["base_model.model.l1.q.lora_B.default.weight"], torch.tensor([[0.2], [0.0], [0.0]]))
    torch.testing.assert_close(out["base_model.model.l1.q.lora_A.default.weight"], a)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "full.safetensors"))  # full fine-tuning weights: one line, exit 2
    assert main([*args[:4], "--adapter", str(tmp_path / "full.safetensors"), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_safelora_finalize_projects_the_live_adapters_against_the_base(toy_root, toy_world) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sweeps.methods import SafeLoRA
    from sweeps.methods.safelora import project

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(toy_root / "aligned"),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))  # fmt: skip
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    base = load_file(str(toy_root / "base" / "model.safetensors"))
    want = {}
    for n, m in model.named_modules():
        if hasattr(m, "lora_B"):
            key = n.removeprefix("base_model.model.") + ".weight"
            want[n] = project(m.base_layer.weight.detach() - base[key], m.lora_B["default"].weight.detach())
    method = SafeLoRA(threshold=1.0)  # every module: cos ≤ 1
    ctx = TrainingContext(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, grad_accum=1,
                          batch_size=1, pad_id=0, resources=Resources(base_path=toy_root / "base"))  # fmt: skip
    method.setup(ctx)
    method.finalize()
    assert method.metrics()["projected"] == len(want) > 0
    for n, m in model.named_modules():
        if n in want:
            torch.testing.assert_close(m.lora_B["default"].weight, want[n])
