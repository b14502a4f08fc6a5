"""Parameter-space EMA: the SGD identity, shadow swapping, state round-trip, argument checks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from sweeps.config import OptimConfig
from sweeps.formatting import Encoded
from sweeps.loop import train
from sweeps.methods import EMA, MethodStack, TrainingContext, build_methods, known_method_errors


class TinyLM(nn.Module):
    """Minimal causal-LM stand-in with HF's (input_ids, attention_mask, labels) -> .loss, .logits interface and no
    `logits_to_keep` (the training loss then takes the full-logits fallback of sweeps.lm_loss.forward_from)."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.head(torch.tanh(self.mix(self.emb(input_ids))))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)
        return type("Out", (), {"loss": loss, "logits": logits})()


def _data(n: int = 24) -> list[Encoded]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 11, (6,), generator=g).tolist()
        out.append(Encoded(ids, [-100, -100, *ids[2:]]))
    return out


def _ctx(model: nn.Module) -> TrainingContext:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainingContext(model, opt, total_steps=1, grad_accum=1, batch_size=1, pad_id=0)


def _sgd(lr: float, steps: int) -> OptimConfig:
    return OptimConfig(name="sgd", lr=lr, scheduler="constant", batch_size=4, max_steps=steps, grad_clip=None)


@pytest.mark.parametrize("eta", [0.25, 0.6])
def test_writeback_ema_equals_sgd_with_scaled_lr_step_by_step(eta: float) -> None:
    torch.manual_seed(0)
    base = TinyLM()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    lr, steps = 0.3, 12
    traj_a: list[list[torch.Tensor]] = []
    traj_b: list[list[torch.Tensor]] = []

    def snap(model, traj):
        return lambda step, loss: traj.append([p.detach().clone() for p in model.parameters()])

    ema = MethodStack([EMA(eta=eta, mode="writeback")])
    train(a, _data(), _sgd(lr, steps), ema, pad_id=0, seed=3, progress=False, on_step=snap(a, traj_a))
    train(b, _data(), _sgd(lr * eta, steps), MethodStack([]), pad_id=0, seed=3, progress=False,
          on_step=snap(b, traj_b))  # fmt: skip
    assert len(traj_a) == len(traj_b) == steps
    for step, (pa, pb) in enumerate(zip(traj_a, traj_b, strict=True), 1):
        for x, y in zip(pa, pb, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=f"diverged at step {step}")
    moved = max((x - y).abs().max().item() for x, y in zip(traj_a[-1], base.parameters(), strict=True))
    assert moved > 1e-3  # the identity is not trivially satisfied by parameters that never moved


def test_eta_one_is_plain_finetuning() -> None:
    torch.manual_seed(0)
    a, b = TinyLM(), None
    b = copy.deepcopy(a)
    optim = OptimConfig(lr=1e-2, batch_size=4, max_steps=5)
    train(a, _data(), optim, MethodStack([EMA(eta=1.0, mode="writeback")]), pad_id=0, progress=False)
    train(b, _data(), optim, MethodStack([]), pad_id=0, progress=False)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y)


def test_shadow_mode_swaps_in_average_and_restores_live_weights() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    start = [p.detach().clone() for p in model.parameters()]
    ema = EMA(eta=0.5, mode="shadow")
    train(model, _data(), OptimConfig(lr=1e-1, batch_size=4, max_steps=3), MethodStack([ema]), pad_id=0,
          progress=False)  # fmt: skip
    live = [p.detach().clone() for p in model.parameters()]
    # recompute θ̄ by hand is not possible without the trajectory; check its defining property instead:
    # it lies strictly between the start and the live weights for a 3-step run with η=0.5
    with ema.eval_weights():
        inside = [p.detach().clone() for p in model.parameters()]
    after = [p.detach().clone() for p in model.parameters()]
    for s, l_, i, a in zip(start, live, inside, after, strict=True):
        torch.testing.assert_close(a, l_)  # restored exactly
        assert not torch.equal(i, l_)
        assert (i - s).norm() < (l_ - s).norm() + 1e-6
    assert ema.metrics()["updates"] == 3


def test_ema_every_k_and_state_round_trip() -> None:
    model = TinyLM()
    ema = EMA(eta=0.5, every=2, mode="shadow")
    ema.setup(_ctx(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.after_step(1)  # skipped: not a multiple of 2
    assert ema.updates == 0
    ema.after_step(2)
    assert ema.updates == 1
    state = {k: v.clone() for k, v in ema.state_dict().items()}
    other = EMA(eta=0.5, every=2)
    other.setup(_ctx(model))
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert other.updates == 1 and not other.evaluates_start  # a moved average is never taken for θ_aligned


def test_ema_scope_regex_and_lerp_formula() -> None:
    model = TinyLM()
    ema = EMA(eta=0.25, include=r"^head\.")
    ema.setup(_ctx(model))
    assert ema.names == ["head.weight", "head.bias"]
    assert not ema.evaluates_start  # idle, but its eval weights mix the start head with the live body
    full = EMA(eta=0.25)
    full.setup(_ctx(model))
    assert full.evaluates_start  # idle and full scope: exactly the starting weights
    old = model.head.weight.detach().clone()
    with torch.no_grad():
        model.head.weight.add_(4.0)
    ema.after_step(1)
    torch.testing.assert_close(ema.shadow[0], 0.75 * old + 0.25 * (old + 4.0))


def test_bad_ema_arguments_are_reported_by_key() -> None:
    errors = known_method_errors({"ema": {"_target_": "sweeps.methods.EMA", "eta": 1.5, "mode": "sideways"}})
    assert any(e.startswith("method.ema.eta") for e in errors)
    assert any(e.startswith("method.ema.mode") for e in errors)
    errors = known_method_errors({"ema": {"_target_": "sweeps.methods.EMA", "etta": 0.1}})
    assert errors and errors[0].startswith("method.ema") and "etta" in errors[0]
    errors = known_method_errors({"x": {"_target_": "sweeps.methods.Nope"}})
    assert errors and errors[0].startswith("method.x._target_")


def test_writeback_ema_with_adam_is_also_just_a_smaller_lr() -> None:
    """Adam's update direction does not depend on θ, so writeback EMA(η) + Adam(lr) == Adam(lr·η) (no decay)."""
    torch.manual_seed(0)
    a = TinyLM()
    b = copy.deepcopy(a)
    steps = 8
    adam = OptimConfig(lr=4e-2, batch_size=4, max_steps=steps, grad_clip=None, scheduler="constant")
    train(a, _data(), adam, MethodStack([EMA(eta=0.25, mode="writeback")]), pad_id=0, seed=1, progress=False)
    train(b, _data(), dataclasses.replace(adam, lr=1e-2), MethodStack([]), pad_id=0, seed=1, progress=False)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_two_instances_keep_separate_state_and_metrics_and_swap_flag_is_per_instance() -> None:
    """Names come from the config keys, so two EMAs do not overwrite each other; writeback never swaps."""
    stack = build_methods({"slow": {"_target_": "sweeps.methods.EMA", "eta": 0.1},
                           "fast": {"_target_": "sweeps.methods.EMA", "eta": 0.9, "mode": "writeback"}})
    model = TinyLM()
    train(model, _data(), _sgd(0.3, 3), stack, pad_id=0, progress=False)
    assert stack.metrics()["slow/eta"] == 0.1 and stack.metrics()["fast/eta"] == 0.9
    state = stack.state_dict()
    assert any(k.startswith("slow.") for k in state) and any(k.startswith("fast.") for k in state)
    assert not torch.equal(state["slow.head.weight"], state["fast.head.weight"])
    assert stack.swaps_eval_weights  # the shadow one
    assert not build_methods({"w": {"_target_": "sweeps.methods.EMA", "mode": "writeback"}}).swaps_eval_weights
    assert [d["name"] for d in stack.described] == ["slow", "fast"]
    assert stack.described[1] == {"name": "fast", "target": "sweeps.methods.EMA",
                                  "args": {"eta": 0.9, "mode": "writeback"}}


def _scalar_run(ema: EMA, values: list[float], *, steps_total: int | None = None, n_examples: int | None = None,
                batch_size: int = 1, grad_accum: int = 1) -> list[float]:  # fmt: skip
    """Drive one EMA over a one-parameter model whose weight is set to values[s-1] at step s; θ̄ after each step."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)  # θ_aligned
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema.setup(TrainingContext(model, opt, total_steps=steps_total or len(values), grad_accum=grad_accum,
                              batch_size=batch_size, pad_id=0, n_examples=n_examples))  # fmt: skip
    out = []
    for step, v in enumerate(values, 1):
        with torch.no_grad():
            model.weight.fill_(v)
        ema.after_step(step)
        out.append(ema.shadow[0].item())
    return out


def test_each_convention_against_a_hand_computation_over_three_steps() -> None:
    values = [4.0, 0.0, 8.0]  # θ_1, θ_2, θ_3 with θ_aligned = 2
    # new: θ̄ ← (1 − η)·θ̄ + η·θ, η = 0.25:  1.5 + 1 = 2.5;  1.875 + 0 = 1.875;  1.40625 + 2 = 3.40625
    assert _scalar_run(EMA(eta=0.25), values) == pytest.approx([2.5, 1.875, 3.40625])
    # old: θ̄ ← η·θ̄ + (1 − η)·θ, η = 0.75 (the same average):  the same numbers
    assert _scalar_run(EMA(eta=0.75, convention="old"), values) == pytest.approx([2.5, 1.875, 3.40625])
    # old with η = 0.25 weights the NEW parameters by 0.75:  0.5 + 3 = 3.5;  0.875 + 0 = 0.875;  0.21875 + 6
    assert _scalar_run(EMA(eta=0.25, convention="old"), values) == pytest.approx([3.5, 0.875, 6.21875])
    # init first: θ̄ = θ_1 at the first update, then η = 0.25 on the new:  4;  3 + 0 = 3;  2.25 + 2 = 4.25
    assert _scalar_run(EMA(eta=0.25, init="first"), values) == pytest.approx([4.0, 3.0, 4.25])
    ema = EMA(eta=0.25, convention="old")
    _scalar_run(ema, values)
    assert ema.metrics() == {"eta": 0.25, "weight_new": 0.75, "interval": 1.0, "updates": 3.0}


def test_per_epoch_updates_count_correctly_with_accumulation() -> None:
    # 10 examples, batch 2 × accumulation 2 = 4 per optimiser step: an epoch is ceil(10 / 4) = 3 steps
    ema = EMA(eta=0.5, every="epoch")
    _scalar_run(ema, [float(s) for s in range(1, 10)], n_examples=10, batch_size=2, grad_accum=2)
    assert ema.interval == 3 and ema.updates == 3  # steps 3, 6, 9
    assert ema.metrics()["interval"] == 3.0
    # through the real loop: 9 steps of 4 examples over 10 examples (3 epochs of 3 steps)
    stack = MethodStack([EMA(eta=0.5, every="epoch")])
    optim = OptimConfig(lr=1e-2, batch_size=2, grad_accum=2, max_steps=9)
    train(TinyLM(), _data(10), optim, stack, pad_id=0, progress=False)
    assert stack.metrics()["ema/updates"] == 3


def test_a_fixed_number_of_updates_is_spread_evenly_and_ends_on_the_last_step() -> None:
    ema = EMA(eta=0.5, updates=3)
    _scalar_run(ema, [float(s) for s in range(1, 11)])
    assert [s for s in range(1, 11) if ema.due(s)] == [4, 7, 10]
    assert ema.updates == 3 and ema.metrics()["interval"] == pytest.approx(10 / 3)
    many = EMA(eta=0.5, updates=50)  # more updates than steps: every step
    _scalar_run(many, [1.0] * 5)
    assert many.updates == 5


def test_default_ema_is_todays_every_step_new_weight_update() -> None:
    ema = EMA()
    assert (ema.eta, ema.every, ema.convention, ema.init, ema.n_updates) == (0.25, 1, "new", "start", None)
    assert _scalar_run(ema, [4.0, 0.0, 8.0]) == pytest.approx([2.5, 1.875, 3.40625])


@pytest.mark.parametrize(("args", "key"), [
    ({"convention": "newest"}, "convention"), ({"every": "week"}, "every"), ({"every": 0}, "every"),
    ({"updates": 0}, "updates"), ({"updates": 10, "every": 5}, "updates"), ({"init": "end"}, "init"),
    ({"eta": True}, "eta"),
])  # fmt: skip
def test_bad_design_space_values_are_one_line_naming_the_key(args: dict, key: str) -> None:
    errors = known_method_errors({"ema": {"_target_": "sweeps.methods.EMA", **args}})
    assert len(errors) == 1 and errors[0].startswith(f"method.ema.{key}:"), errors


def test_analysis_labels_name_the_design_choices() -> None:
    from analysis.load import methods_label

    def ema(**args) -> list[dict]:
        return [{"name": "ema", "target": "sweeps.methods.EMA", "args": args}]

    full_defaults = {"eta": 0.25, "convention": "new", "every": 1, "updates": None, "init": "start", "mode": "shadow"}
    assert methods_label(ema(**full_defaults)) == "EMA η=0.25"  # today's label for today's recipe
    assert methods_label(ema(**{**full_defaults, "every": "epoch"})) == "EMA η=0.25 every epoch"
    assert methods_label(ema(eta=0.99, convention="old", updates=20)) == "EMA η=0.99 old-convention 20 updates"
    assert methods_label(ema(eta=0.5, init="first")) == "EMA η=0.5 init first"
    assert methods_label(ema(eta=0.0, convention="old")) == "SFT"  # old convention: η = 0 keeps no memory
    assert methods_label(ema(eta=1.0, convention="old")) == "EMA η=1 old-convention"  # never moves: not off


def test_design_space_is_sweepable_from_the_command_line() -> None:
    from hydra import compose, initialize_config_dir

    from sweeps.config import ConfigError
    from sweeps.validate import to_train_config, validate
    from tests.conftest import ROOT

    def cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return to_train_config(compose("train", ["method=[ema]", *overrides]))

    ok = cfg("method.ema.every=epoch", "method.ema.convention=old", "method.ema.eta=0.9", "method.ema.init=first")
    validate(ok)
    assert build_methods(ok.method).methods[0].every == "epoch"
    with pytest.raises(ConfigError, match=r"method\.ema\.every: must be an integer >= 1 or 'epoch', got 'week'"):
        validate(cfg("method.ema.every=week"))
