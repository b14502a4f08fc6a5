"""Contract every registered method meets (found from the registry, so a new method is covered), then each
method's defining property."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sweeps.config import OptimConfig
from sweeps.formatting import PromptFormatter
from sweeps.loop import train
from sweeps.methods import REGISTRY, Resources, TrainingContext, build_methods, known_method_errors
from sweeps.toyworld import toy_examples

ROOT = Path(__file__).resolve().parents[1]
KEYS = sorted(REGISTRY)
OPTIM = OptimConfig(lr=3e-3, batch_size=2, max_steps=2, scheduler="constant", grad_clip=1.0)
_PLAIN: dict = {}


def _entry(key: str, **override) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "method" / f"{key}.yaml"))[key], **override}


@pytest.fixture(scope="module")
def toy(toy_root, toy_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(toy_root / "aligned").eval()
    tok = AutoTokenizer.from_pretrained(toy_root / "aligned")
    fmt = PromptFormatter(tok)
    # half the user data is harmful compliance, so the user gradient conflicts with the safety memory (A-GEM acts)
    mixed = toy_examples("user_train", toy_world)[:16] + toy_examples("poison", toy_world)[:16]
    user = [fmt.encode_pair(e.prompt, e.response, 64) for e in mixed]
    safety = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("safety", toy_world)[:8]]
    return model, tok.pad_token_id, user, safety, toy_root


def _model(toy, lora: bool):
    model = copy.deepcopy(toy[0])
    if lora:
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng():  # peft draws A from the global generator: the same A in every run
            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                     target_modules=["q_proj", "v_proj"]))  # fmt: skip
        # B = 0 at init would make every adapter-only term vanish on the first step; start from a random B
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(0))
    return model


def _plain(toy, lora: bool = False, steps: int = 2):
    if (lora, steps) not in _PLAIN:
        _PLAIN[lora, steps] = _run(toy, {}, lora, steps)[0]
    return _PLAIN[lora, steps]


def _run(toy, cfg: dict, lora: bool = False, steps: int = 2, **optim_args):
    model = _model(toy, lora)
    stack = build_methods(cfg)
    streams = {f"{m.name}.{a}": toy[3] for m in stack.methods for a in type(m).streams}
    res = Resources(streams=streams, base_path=toy[4] / "base")
    optim = OptimConfig(**{**OPTIM.__dict__, "max_steps": steps, **optim_args})
    result = train(model, toy[2], optim, stack, pad_id=toy[1], seed=1, progress=False, resources=res)
    assert result.status == "completed"
    return model, stack


def test_every_registered_method_has_a_config_and_every_config_a_method() -> None:
    from omegaconf import OmegaConf

    files = {p.stem: p for p in (ROOT / "conf" / "method").glob("*.yaml")}
    assert set(REGISTRY) <= set(files)
    for stem in set(files) - set(REGISTRY):  # a preset of several instances (ema_grid): each one a registered method
        entries = OmegaConf.to_container(OmegaConf.load(files[stem]))
        assert len(entries) > 1 and known_method_errors(entries) == [], stem


@pytest.mark.parametrize("key", KEYS)
def test_config_composes_validates_and_a_bad_argument_is_one_line(key: str, tmp_path) -> None:
    cls = REGISTRY[key]
    assert known_method_errors({key: _entry(key)}) == []
    arg, value = next(iter(cls.off.items()))
    bad = "maybe" if isinstance(value, bool) else -1.0
    errors = known_method_errors({key: _entry(key, **{arg: bad})})
    assert len(errors) == 1 and errors[0].startswith(f"method.{key}.{arg}:"), errors
    for stream in cls.streams:  # a missing file is one line naming the key, before anything is built
        errors = known_method_errors({key: _entry(key, **{stream: {"source": "file", "path": str(tmp_path / "x")}})})
        assert errors == [f"method.{key}.{stream}.path: file not found: {tmp_path / 'x'}"]
        # the default toy split without the toy world (a real model): one line naming the key, not a crash at setup
        toy_spec = {stream: {"source": "toy", "name": "safety"}}
        assert known_method_errors({key: _entry(key, **toy_spec)}, toy_world=True) == []
        errors = known_method_errors({key: _entry(key, **toy_spec)}, toy_world=False)
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"method.{key}.{stream}: toy split 'safety' needs the toy world")


@pytest.mark.parametrize("key", KEYS)
def test_strength_zero_is_plain_finetuning_exactly(toy, key: str) -> None:
    lora = REGISTRY[key].lora_only  # a LoRA-only method is compared with plain LoRA fine-tuning
    plain = _plain(toy, lora)
    off, _ = _run(toy, {key: _entry(key, **REGISTRY[key].off)}, lora)
    for (n, a), b in zip(plain.named_parameters(), off.parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("key", KEYS)
def test_positive_strength_acts_stacks_with_ema_and_is_namespaced(toy, key: str, lora: bool) -> None:
    if REGISTRY[key].lora_only and not lora:
        pytest.skip("LoRA-only: full fine-tuning is a config error (test_lora_only_method_under_full_ft_is_one_line)")
    # 4 steps: A-GEM acts only on a step whose user gradient conflicts with the memory's, and under LoRA the first
    # two steps of the toy world need not conflict
    plain = _plain(toy, lora, steps=4)
    # the stacked EMA is in shadow mode: it leaves the live trajectory to the method under test
    model, stack = _run(toy, {key: _entry(key), "avg": _entry("ema", eta=0.5)}, lora, steps=4)
    with stack.methods[0].eval_weights():
        assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters(), strict=True))
    metrics = stack.metrics()
    assert metrics[f"{key}/{REGISTRY[key].term}"] != 0, metrics
    assert metrics["avg/updates"] == 4
    assert all(k.split("/")[0] in (key, "avg") for k in metrics)


@pytest.mark.parametrize("key", KEYS)
def test_state_round_trips(toy, key: str) -> None:
    model, stack = _run(toy, {key: _entry(key)}, REGISTRY[key].lora_only, steps=2)
    state = {k: v.clone() for k, v in stack.state_dict().items()}
    other = build_methods({key: _entry(key)})
    streams = {f"{m.name}.{a}": toy[3] for m in other.methods for a in type(m).streams}
    ctx = TrainingContext(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, grad_accum=1,
                          batch_size=4, pad_id=toy[1], resources=Resources(streams, toy[4] / "base"))  # fmt: skip
    other.setup(ctx)
    other.load_state_dict(state)
    assert other.state_dict().keys() == state.keys()
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


@pytest.mark.parametrize("key", [k for k in KEYS if REGISTRY[k].lora_only])
def test_lora_only_method_under_full_ft_is_one_line(toy, key: str) -> None:
    from sweeps.config import ConfigError

    errors = known_method_errors({key: _entry(key)}, lora=False)
    assert len(errors) == 1 and errors[0].startswith(f"method.{key}: ") and "model.lora.enabled" in errors[0]
    assert known_method_errors({key: _entry(key)}, lora=True) == []
    with pytest.raises(ConfigError, match=f"^method.{key}: "):  # and when train() is called directly
        _run(toy, {key: _entry(key)}, lora=False)


# ---- defining properties ---------------------------------------------------------------------------------------

def _ctx(toy, model, method, lora=False):
    streams = {f"{method.name}.{a}": toy[3] for a in type(method).streams}
    return TrainingContext(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=1, grad_accum=1,
                           batch_size=4, pad_id=toy[1], resources=Resources(streams, toy[4] / "base"))  # fmt: skip


@pytest.mark.parametrize("chunk", [None, 1000], ids=["default-chunks", "ragged-chunks"])
def test_ewc_penalty_gradient_is_lambda_fisher_times_displacement(toy, chunk, monkeypatch) -> None:
    from sweeps.methods import EWC, _chunks

    if chunk is not None:  # many chunks per tensor with a ragged tail: the chunked pass must cover every element once
        monkeypatch.setattr(_chunks, "CHUNK", chunk)

    model = _model(toy, False)
    ewc = EWC(lam=7.0)
    ctx = _ctx(toy, model, ewc)
    ewc.setup(ctx)
    star = {n: p.detach().clone() for n, p in ctx.params.items()}
    with torch.no_grad():
        for p in ctx.params.values():
            p.add_(torch.randn_like(p) * 0.01)
    assert all(f.sum() > 0 for f in ewc.fisher.values())
    expected_penalty = sum(0.5 * 7.0 * (ewc.fisher[n] * (p - star[n]) ** 2).sum() for n, p in ctx.params.items())
    expected = torch.autograd.grad(expected_penalty, list(ctx.params.values()))
    ewc.after_backward(model)  # no task gradient yet: .grad is the penalty's alone
    for (n, p), g in zip(ctx.params.items(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(p.grad, 7.0 * ewc.fisher[n] * (p.detach() - star[n]))
    torch.testing.assert_close(ewc.penalty, expected_penalty.detach())


def test_ewc_identity_fisher_is_l2_to_the_start(toy) -> None:
    from sweeps.methods import EWC

    model = _model(toy, False)
    ewc = EWC(lam=2.0, fisher="identity")
    ctx = _ctx(toy, model, ewc)
    ewc.setup(ctx)
    p = next(iter(ctx.params.values()))
    with torch.no_grad():
        p.add_(0.5)
    ewc.after_backward(model)
    torch.testing.assert_close(p.grad, torch.full_like(p, 2.0 * 0.5))


def test_chunks_are_cache_sized_on_cpu_and_launch_sized_elsewhere() -> None:
    from sweeps.methods._chunks import CHUNK, DEVICE_CHUNK, Scratch, flat_chunks

    x = torch.zeros(3 * CHUNK + 5)
    assert [len(c) for (c,) in flat_chunks(x)] == [CHUNK] * 3 + [5]
    meta = torch.empty(3 * CHUNK + 5, device="meta")  # stands in for an accelerator: one chunk, not four
    assert [len(c) for (c,) in flat_chunks(meta)] == [3 * CHUNK + 5] and DEVICE_CHUNK > 3 * CHUNK + 5
    scratch = Scratch()
    assert scratch.take(2, 10, meta.device)[0].shape == (10,)
    assert scratch.buffers[meta.device].shape == (2, DEVICE_CHUNK)


def test_flat_chunks_cover_every_element_once_and_write_through() -> None:
    from sweeps.methods._chunks import flat_chunks

    a, b = torch.arange(10.0).reshape(2, 5), torch.zeros(2, 5)
    pieces = list(flat_chunks(a, b, size=4))
    assert [len(x) for x, _ in pieces] == [4, 4, 2]
    for x, y in pieces:
        y.add_(x)
    torch.testing.assert_close(b, a)
    with pytest.raises(RuntimeError):
        next(flat_chunks(a.t()))  # a non-contiguous tensor is refused, never silently copied


def test_agem_projection_never_conflicts_with_the_reference_gradient(toy) -> None:
    from sweeps.methods import AGEM

    model = _model(toy, False)
    agem = AGEM(batch_size=len(toy[3]))  # the whole memory: the reference batch is known
    ctx = _ctx(toy, model, agem)
    agem.setup(ctx)
    params = list(ctx.params.values())
    batch, _ = ctx.streams["agem.memory"].next(len(toy[3]))
    ref = torch.autograd.grad(model(**batch).loss, params)
    for sign in (-1.0, 1.0):
        g = [sign * r + 0.3 * r.abs().mean() * torch.randn_like(r) for r in ref]
        for p, x in zip(params, g, strict=True):
            p.grad = x.clone()
        agem.after_backward(model)
        dot = sum((p.grad * r).sum() for p, r in zip(params, ref, strict=True))
        if sign < 0:
            assert agem.projected == 1 and abs(float(dot)) < 1e-4 * float(sum((r * r).sum() for r in ref))
        else:  # no conflict: the gradient is left exactly as it was
            assert agem.projected == 0 and all(torch.equal(p.grad, x) for p, x in zip(params, g, strict=True))
    assert agem.metrics()["projection_rate"] == 0.5


@pytest.mark.parametrize("store", ["logits", "teacher"])
def test_der_loss_is_zero_at_the_aligned_weights(toy, store: str) -> None:
    from sweeps.methods import DER

    model = _model(toy, False)
    der = DER(lam=1.0, store=store)
    der.setup(_ctx(toy, model, der))
    assert float(der.step_loss(model).detach()) < 1e-10
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.05)
    assert float(der.step_loss(model)) > 1e-6


def test_derpp_same_batch_is_both_terms_on_one_memory_batch(toy) -> None:
    from sweeps.methods import DERpp
    from sweeps.methods._context import response_mask

    model = _model(toy, False)
    both = DERpp(lam=0.5, beta=0.25, same_batch=True)
    both.setup(_ctx(toy, model, both))  # z: θ_aligned's logits
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.05)  # away from θ_aligned: the MSE term is non-zero
    twin = copy.deepcopy(both.stream)  # the same seeded stream: the batch it will draw
    total = both.step_loss(model)
    batch, ids = twin.next()
    assert both.stream.tokens == twin.tokens  # one memory batch served, not two
    out = model(**batch)
    z = torch.cat([both.z[i] for i in ids.tolist()])
    mse = torch.nn.functional.mse_loss(out.logits[response_mask(batch["labels"])].float(), z)
    torch.testing.assert_close(total, 0.5 * mse + 0.25 * out.loss)
    assert float(both.terms["mse"]) > 0 and float(both.terms["ce"]) > 0


@pytest.mark.parametrize("chunk", [None, 1000], ids=["flat-small-tensors", "ragged-chunks"])
def test_refresh_shared_ascent_moves_along_the_steps_own_user_gradient(toy, chunk, monkeypatch) -> None:
    from sweeps.formatting import collate
    from sweeps.methods import Refresh, _chunks

    if chunk is not None:  # every tensor above the chunk size: the chunked pass, ragged tails, instead of the flat one
        monkeypatch.setattr(_chunks, "CHUNK", chunk)
    model = _model(toy, False)
    refresh = Refresh(gamma=1e-3, noise=0.0, lam=0.0, beta=0.0, ascent="shared")
    refresh.setup(_ctx(toy, model, refresh))
    assert (len(refresh.small) == len(refresh.damping)) == (chunk is None)  # the path under test
    batch = collate(toy[2][:4], toy[1])
    model(**batch).loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    refresh.before_step(1, [batch])  # the separate pass is off in shared mode
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    refresh.after_user_backward(model)
    for n, p in model.named_parameters():
        g, theta = grads[n], before[n]
        expected = theta + 1e-3 * g * theta.norm() / (g.norm() + 1e-20) * refresh.damping[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(p.grad, g)  # the gradient itself is descended unchanged
    # the separate mode takes its own pass on the first micro-batch: the same move from the same gradient here
    other = _model(toy, False)
    sep = Refresh(gamma=1e-3, noise=0.0, lam=0.0, beta=0.0, ascent="separate")
    sep.setup(_ctx(toy, other, sep))
    sep.before_step(1, [batch])
    for (n, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("cfg", [{"derpp": {"same_batch": True}}, {"refresh": {"ascent": "shared"}},
                                 {"refresh": {"ascent": "shared", "same_batch": True}}], ids=str)  # fmt: skip
def test_cheaper_variants_act_and_their_zero_strength_is_plain(toy, cfg: dict) -> None:
    (key, extra), = cfg.items()
    off, _ = _run(toy, {key: _entry(key, **extra, **REGISTRY[key].off)})
    for (n, a), b in zip(_plain(toy).named_parameters(), off.parameters(), strict=True):
        assert torch.equal(a, b), n
    model, stack = _run(toy, {key: _entry(key, **extra)})
    assert any(not torch.equal(a, b) for a, b in zip(_plain(toy).parameters(), model.parameters(), strict=True))
    assert stack.metrics()[f"{key}/{REGISTRY[key].term}"] != 0


@pytest.mark.parametrize("cfg", [{"der": {}}, {"derpp": {}}, {"derpp": {"same_batch": True}}, {"refresh": {}},
                                 {"der": {}, "lwf": {}}], ids=str)  # fmt: skip
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_memory_rows_joined_to_the_user_forward_give_the_separate_passes_update(toy, cfg, lora, monkeypatch) -> None:
    import sweeps.loop

    joined = []
    forward_joined = sweeps.loop.forward_joined
    monkeypatch.setattr(sweeps.loop, "forward_joined", lambda *a, **k: joined.append(1) or forward_joined(*a, **k))

    def run(joint: str):  # SGD: the two paths' float rounding differs, and Adam would blow that up on tiny gradients
        entries = {k: _entry(k, **extra, **({"joint": joint} if "joint" in _entry(k) else {})) for k, extra in
                   cfg.items()}  # fmt: skip
        return _run(toy, entries, lora, steps=3, name="sgd", lr=0.05, grad_accum=2)  # the memory joins micro-batch 2

    separate, separate_stack = run("never")
    assert joined == []
    model, stack = run("always")
    assert len(joined) == 3  # once per optimiser step
    for (n, a), b in zip(separate.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)
    metrics, expected = stack.metrics(), separate_stack.metrics()
    terms = [k for k in expected if k.endswith(("/mse", "/ce"))]
    assert terms and all(expected[k] > 0 for k in terms)  # the replay acted by the last step
    for k in terms:
        assert metrics[k] == pytest.approx(expected[k], rel=1e-3), k
    for m in stack.methods:  # the same memory rows were served
        if hasattr(m, "stream"):
            assert m.stream.tokens == next(o for o in separate_stack.methods if o.name == m.name).stream.tokens


def test_refresh_shared_ascent_keeps_the_memory_rows_out_of_the_user_forward(toy, monkeypatch) -> None:
    import sweeps.loop

    monkeypatch.setattr(sweeps.loop, "forward_joined", lambda *a, **k: pytest.fail("joined under a shared ascent"))
    _, stack = _run(toy, {"der": _entry("der", joint="always"), "refresh": _entry("refresh", ascent="shared",
                                                                                   joint="always")})  # fmt: skip
    assert stack.metrics()["refresh/unlearn_norm"] > 0 and stack.metrics()["der/mse"] > 0


def test_joint_forward_pays_unless_padding_adds_a_tenth() -> None:
    from sweeps.formatting import IGNORE_INDEX, concat_batches
    from sweeps.lm_loss import joint_pays

    def batch(rows: int, width: int) -> dict:
        return {"input_ids": torch.ones(rows, width, dtype=torch.long),
                "attention_mask": torch.ones(rows, width, dtype=torch.long),
                "labels": torch.ones(rows, width, dtype=torch.long)}  # fmt: skip

    assert joint_pays("auto", [batch(4, 100), batch(4, 110)])  # 880 ≤ 1.1 × 840
    assert not joint_pays("auto", [batch(4, 100), batch(4, 130)])  # 1040 > 1.1 × 920
    assert joint_pays("always", [batch(4, 10), batch(4, 200)]) and not joint_pays("never", [batch(4, 10)] * 2)
    joined = concat_batches([batch(1, 2), batch(2, 3)], pad_id=7)
    assert joined["input_ids"].tolist() == [[1, 1, 7], [1, 1, 1], [1, 1, 1]]
    assert joined["attention_mask"][0].tolist() == [1, 1, 0] and joined["labels"][0, 2] == IGNORE_INDEX


def test_refresh_noise_depends_on_the_seed_and_lanes_not_the_thread_count(toy, monkeypatch) -> None:
    from sweeps.methods import Refresh, _chunks

    monkeypatch.setattr(_chunks, "CHUNK", 1000)  # every tensor chunked, ragged tails, chunks on both lanes
    moves = []
    for threads in (1, 2):
        model = _model(toy, False)
        method = Refresh(gamma=1e-3, noise=1.0, lam=0.0, beta=0.0, seed=3)
        method.setup(_ctx(toy, model, method))
        before = [p.detach().clone() for p in model.parameters()]
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:  # a zero ascent gradient: the move is the damped noise alone
            method.unlearn([torch.zeros_like(p) for p in model.parameters()])
        finally:
            torch.set_num_threads(previous)
        damping = [method.damping[n] for n, _ in model.named_parameters()]
        moves.append(torch.cat([((p.detach() - b) / (1e-3 * d)).view(-1)
                                for p, b, d in zip(model.parameters(), before, damping, strict=True)]))  # fmt: skip
    torch.testing.assert_close(moves[0], moves[1], rtol=0, atol=0)
    eps = moves[0]
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 1) < 0.01  # standard normal (≈ 0.7M draws)
    lane0, lane1 = eps[:1000], eps[1000:2000]  # the first tensor's chunks 0 and 1: two lanes, two generators
    assert abs(float(torch.corrcoef(torch.stack([lane0, lane1]))[0, 1])) < 0.15


def test_lwf_term_is_zero_at_the_aligned_weights_and_grows_after(toy) -> None:
    _, stack = _run(toy, {"lwf": _entry("lwf")}, steps=1)
    fresh = _model(toy, False)
    lwf = build_methods({"lwf": _entry("lwf")}).methods[0]
    ctx = _ctx(toy, fresh, lwf)
    lwf.setup(ctx)
    from sweeps.formatting import collate

    batch = collate(toy[2][:4], toy[1])
    assert float(lwf.extra_loss(fresh, batch, fresh(**batch, output_hidden_states=True))) == 0.0
    assert stack.metrics()["lwf/mse"] == 0.0  # the first step is taken at θ_aligned
    _, stack2 = _run(toy, {"lwf": _entry("lwf")}, steps=2)
    assert stack2.metrics()["lwf/mse"] > 0


def test_magmax_elementwise_choice_and_tie_rule() -> None:
    from sweeps.methods.magmax import magmax

    base = torch.tensor([0.0, 1.0, 1.0, 2.0, 0.0])
    safety = torch.tensor([3.0, 0.0, 2.0, 2.0, -1.0])  # Δ_s = [3, -1, 1, 0, -1]
    user = torch.tensor([-1.0, 3.0, 0.0, 1.0, 1.0])  # Δ_u = [-1, 2, -1, -1, 1]
    merged = magmax(base, [safety, user], 1.0)
    # larger magnitude wins: 3 (safety), 2 (user), -1 (user, over 0); ties |1| = |-1| go to the later task (user)
    want = torch.tensor([3.0, 2.0, -1.0, -1.0, 1.0])
    torch.testing.assert_close(merged, base + want)
    torch.testing.assert_close(magmax(base, [safety, user], 0.5), base + 0.5 * want)


def test_magmax_finalize_writes_the_merge_after_training(toy) -> None:
    from safetensors.torch import load_file

    from sweeps.methods.magmax import magmax

    start = {n: p.detach().clone() for n, p in toy[0].named_parameters()}
    base = load_file(str(toy[4] / "base" / "model.safetensors"))
    plain = _plain(toy)
    merged, _ = _run(toy, {"magmax": _entry("magmax", scale=0.5)})
    for n, p in merged.named_parameters():
        torch.testing.assert_close(p, magmax(base[n], [start[n], dict(plain.named_parameters())[n]], 0.5))


def test_merge_cli_applies_magmax_to_saved_weights(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from sweeps.merge import main

    base, aligned, tuned = tmp_path / "base", tmp_path / "aligned", tmp_path / "final.safetensors"
    base.mkdir()
    aligned.mkdir()
    save_file({"w": torch.zeros(3), "frozen": torch.zeros(2)}, str(base / "model.safetensors"))
    save_file({"w": torch.tensor([2.0, 0.0, 1.0]), "frozen": torch.ones(2)}, str(aligned / "model.safetensors"))
    (aligned / "config.json").write_text("{}")
    save_file({"w": torch.tensor([1.0, -3.0, -1.0])}, str(tuned))
    assert main(["--base", str(base), "--aligned", str(aligned), "--finetuned", str(tuned),
                 "--out", str(tmp_path / "out"), "--scale", "0.5"]) == 0  # fmt: skip
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    torch.testing.assert_close(out["w"], 0.5 * torch.tensor([2.0, -3.0, -1.0]))
    torch.testing.assert_close(out["frozen"], torch.ones(2))  # not fine-tuned: θ_aligned's
    assert (tmp_path / "out" / "config.json").exists()
    assert main(["--base", str(tmp_path / "nope"), "--aligned", str(aligned), "--finetuned", str(tuned),
                 "--out", str(tmp_path / "o2")]) == 2  # fmt: skip


def test_cli_missing_memory_file_is_one_line_naming_the_key(tmp_path) -> None:
    import os
    import subprocess

    from tests.conftest import CACHE_DIR, PYTHON

    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([PYTHON, "-m", "sweeps.train", f"hydra.run.dir={tmp_path / 'run'}", "method=[der]",
                           "method.der.memory.source=file", "+method.der.memory.path=/no/such.jsonl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "method.der.memory.path: file not found: /no/such.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "metrics.json").exists()
