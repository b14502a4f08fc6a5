"""Model loading: LoRA through peft, plain-template fallback, toy-world cache, clear errors."""

from __future__ import annotations

import pytest
import torch

from sweeps.config import ConfigError, LoraConfig, ModelConfig, OptimConfig
from sweeps.formatting import PLAIN_TEMPLATE, PromptFormatter
from sweeps.loop import train
from sweeps.methods import EMA, MethodStack
from sweeps.models import load_model
from sweeps.toyworld import WorldConfig, ensure_world, toy_examples, world_key


def test_lora_trains_only_adapters_and_ema_scopes_them(toy_root, toy_world) -> None:
    cfg = ModelConfig(device="cpu", lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    model, tok = load_model(cfg, str(toy_root / "aligned"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    fmt = PromptFormatter(tok)
    data = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", toy_world)[:32]]
    ema = EMA(eta=0.5, mode="shadow")
    result = train(model, data, OptimConfig(lr=1e-2, batch_size=4, max_steps=3), MethodStack([ema]),
                   pad_id=tok.pad_token_id, progress=False)  # fmt: skip
    assert result.status == "completed"
    assert set(ema.names) == trainable
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_bad_lora_target_is_a_config_error(toy_root) -> None:
    cfg = ModelConfig(device="cpu", lora=LoraConfig(enabled=True, target_modules=["no_such_proj"]))
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules"):
        load_model(cfg, str(toy_root / "aligned"))


def test_missing_model_dir_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model\.name_or_path"):
        load_model(ModelConfig(device="cpu"), str(tmp_path))


def test_plain_template_when_tokenizer_has_no_chat_template(aligned) -> None:
    _, tok = aligned
    tok.chat_template = None
    fmt = PromptFormatter(tok)
    assert not fmt.use_chat
    assert fmt.prompt_text("hello") == PLAIN_TEMPLATE.format(prompt="hello")
    chat = PromptFormatter(tok, template="Q: {prompt} A:")
    assert chat.prompt_text("hi") == "Q: hi A:"


def test_world_cache_is_reused_and_keyed_by_config(toy_root) -> None:
    from tests.conftest import CACHE_DIR

    before = (toy_root / "aligned" / "model.safetensors").stat().st_mtime_ns
    assert ensure_world(WorldConfig(), CACHE_DIR) == toy_root
    assert (toy_root / "aligned" / "model.safetensors").stat().st_mtime_ns == before  # not rebuilt
    assert world_key(WorldConfig()) != world_key(WorldConfig(seed=1))
    assert world_key(WorldConfig()) == toy_root.name.split("-")[-1]
    assert not list(toy_root.glob("**/*.bin")) and not list(toy_root.glob("**/*.pt"))  # safetensors only


def test_bfloat16_trial_steps_run(toy_root, toy_world) -> None:
    model, tok = load_model(ModelConfig(device="cpu", precision="bf16-pure"), str(toy_root / "aligned"))
    assert next(model.parameters()).dtype == torch.bfloat16
    fmt = PromptFormatter(tok)
    data = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", toy_world)[:16]]
    result = train(model, data, OptimConfig(lr=1e-3, batch_size=4, max_steps=2), MethodStack([EMA(eta=0.5)]),
                   pad_id=tok.pad_token_id, progress=False)  # fmt: skip
    assert result.status == "completed" and all(torch.isfinite(torch.tensor(result.losses)))


def test_gradient_checkpointing_trains_to_the_same_weights(toy_root, toy_world) -> None:
    fmt = None
    finals = []
    for checkpointing in (False, True):
        model, tok = load_model(ModelConfig(device="cpu", gradient_checkpointing=checkpointing),
                                str(toy_root / "aligned"))  # fmt: skip
        on = getattr(model, "is_activation_checkpointing", None)
        assert (on if on is not None else model.is_gradient_checkpointing) == checkpointing
        fmt = fmt or PromptFormatter(tok)
        data = [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", toy_world)[:16]]
        # checkpointing really recomputes: the layer's MLP (inside the checkpointed forward) starts again in backward
        # (a pre-hook: torch stops the recompute early once every saved tensor is back, before forward hooks run)
        mlp_starts: list[int] = []
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=mlp_starts: calls.append(1))
        torch.manual_seed(0)
        result = train(model, data, OptimConfig(lr=1e-3, batch_size=4, max_steps=3), MethodStack([]),
                       pad_id=tok.pad_token_id, progress=False)  # fmt: skip
        assert result.status == "completed"
        finals.append((result.losses, [p.detach().clone() for p in model.parameters()], len(mlp_starts)))
    (loss_a, weights_a, calls_a), (loss_b, weights_b, calls_b) = finals
    assert calls_a == 3 and calls_b == 2 * calls_a
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights_a, weights_b, strict=True))
    assert any(not torch.equal(a, w) for a, w in zip(weights_a, load_model(ModelConfig(device="cpu"),
               str(toy_root / "aligned"))[0].parameters(), strict=True))  # training moved the weights  # fmt: skip
