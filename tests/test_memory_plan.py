"""bench/memory_plan.py: its arithmetic against a hand count on a small Llama shape."""

from __future__ import annotations

from transformers import LlamaConfig

from bench.memory_plan import GIB, count_params, lora_params, markdown, meta_params, plan

# hidden 16, MLP 32, 2 layers, 4 heads of 4 dims, 2 KV heads (k/v project to 8), vocab 100, untied lm_head
SMALL = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)  # fmt: skip


def test_parameter_counts_match_a_hand_count_and_transformers() -> None:
    per_layer = 16 * 16 + 16 * 8 + 16 * 8 + 16 * 16 + 3 * 16 * 32 + 2 * 16  # q, k, v, o, gate/up/down, 2 norms
    assert per_layer == 2336
    hand = 100 * 16 + 2 * per_layer + 16 + 100 * 16  # embeddings, layers, final norm, lm_head
    assert count_params(SMALL) == hand == 7888 == meta_params(SMALL)
    tied = LlamaConfig(**{**SMALL.to_dict(), "tie_word_embeddings": True})
    assert count_params(tied) == 7888 - 1600 == meta_params(tied)
    assert lora_params(SMALL, r=8) == 2 * (8 * (16 + 16) + 8 * (16 + 8)) == 896  # A and B on q (16→16), v (16→8)


def test_bytes_per_component_match_a_hand_computation() -> None:
    full = plan("small", SMALL, "full", weight_bytes=4, shards=2, der=(10, 6, 4))
    n = 7888
    assert full.bytes == {"weights": n * 4 / 2, "gradients": n * 4 / 2, "adamw": n * 8 / 2, "ema": n * 4 / 2,
                          "teacher": n * 2 / 2, "reference": n * 4 / 2, "der": 10 * 6 * 4 * 6}  # fmt: skip
    assert full.plain == n * 16 / 2 and full.everything == n * 26 / 2 + 1440
    lora = plan("small", SMALL, "lora", weight_bytes=2, der=(0, 0, 0))
    assert lora.trainable == 896
    assert lora.bytes == {"weights": (n + 896) * 2, "gradients": 896 * 4, "adamw": 896 * 8, "ema": 896 * 4,
                          "teacher": 0, "reference": 896 * 4, "der": 0}  # fmt: skip
    table = markdown([full, lora], gpu_gib=n * 16 / 2 / GIB)  # a "GPU" exactly as large as full's plain bytes
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[12] for r in rows] == ["yes", "yes"] and rows[0].split(" | ")[14] == "no |"
