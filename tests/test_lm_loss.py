"""Response-only forwards (sweeps.lm_loss): the same loss, gradient and logits as the model's own full-vocabulary
computation, for the training loss, the methods' memory losses and DER's logits."""

from __future__ import annotations

import pytest
import torch

from sweeps.formatting import IGNORE_INDEX, Encoded, PromptFormatter, collate
from sweeps.lm_loss import first_scored, first_scored_in, forward_from, response_loss
from sweeps.methods._context import response_mask
from sweeps.methods.der import _response_logits
from sweeps.toyworld import toy_examples


@pytest.fixture
def batch_rows(aligned, toy_world) -> tuple[list[Encoded], int]:
    """Prompts of different lengths in one batch (right-padded) and an example scored on its last two tokens only."""
    tok = aligned[1]
    fmt = PromptFormatter(tok)
    ex = toy_examples("refusal", toy_world)[:2] + toy_examples("user_eval", toy_world)[:2]
    enc = [fmt.encode_pair(e.prompt, e.response, 64) for e in ex]
    starts = {e.labels.index(next(t for t in e.labels if t != IGNORE_INDEX)) for e in enc}
    assert len(starts) > 1 and min(starts) > 1  # prompts differ; the shortest still skips positions
    late = Encoded(enc[2].input_ids, [IGNORE_INDEX] * (len(enc[2].labels) - 2) + enc[2].input_ids[-2:])
    return [*enc, late], tok.pad_token_id


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [g if g is not None else torch.zeros_like(p) for p, g in
            zip(params, torch.autograd.grad(loss, params, allow_unused=True), strict=True)]  # fmt: skip


def test_response_loss_equals_the_models_own_loss_and_gradient(aligned, batch_rows) -> None:
    model, _ = aligned
    rows, pad_id = batch_rows
    batch = collate(rows, pad_id)
    first = first_scored(rows)
    assert first == first_scored_in(batch["labels"]) > 0  # host count = device count, and prompt positions skipped
    model.train(False)
    reference = model(**batch).loss
    loss, outputs = response_loss(model, batch, first)
    assert outputs.logits.shape[1] == batch["input_ids"].shape[1] - first  # only the kept positions projected
    assert torch.allclose(loss, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(model, loss), _grads(model, reference), strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    total, _ = response_loss(model, batch, reduction="sum")
    n = sum(sum(1 for t in r.labels[1:] if t != IGNORE_INDEX) for r in rows)
    assert torch.allclose(total, reference * n, rtol=1e-5)


def test_a_model_without_logits_to_keep_gets_every_position_then_the_same_slice(batch_rows) -> None:
    from tests.test_ema import TinyLM

    class Counting(TinyLM):
        calls = 0

        def forward(self, *args, **kwargs):
            Counting.calls += 1
            return super().forward(*args, **kwargs)

    torch.manual_seed(0)
    model = Counting(vocab=max(max(r.input_ids) for r in batch_rows[0]) + 1)
    rows, pad_id = batch_rows
    batch = collate(rows, pad_id)
    first = first_scored(rows)
    for _ in range(2):
        loss, outputs = response_loss(model, batch, first)
        assert outputs.logits.shape[1] == batch["input_ids"].shape[1] - first
        assert torch.allclose(loss, model(**batch).loss, rtol=1e-5, atol=1e-6)
    assert Counting.calls == 1 + 2 + 2  # refused `logits_to_keep` once, then remembered: one call per forward


def test_a_batch_with_nothing_scored_adds_zero_with_a_gradient(aligned, batch_rows) -> None:
    """A micro-batch without response tokens contributes 0 to the step's summed loss and still backpropagates (every
    rank and micro-batch runs backward: DDP and FSDP need it), with all-zero gradients."""
    model, _ = aligned
    rows, pad_id = batch_rows
    empty = [Encoded(r.input_ids, [IGNORE_INDEX] * len(r.labels)) for r in rows[:2]]
    total, _ = response_loss(model, collate(empty, pad_id), first_scored(empty), reduction="sum")
    assert float(total) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in _grads(model, total))


def test_der_logits_and_lwf_hidden_states_equal_the_full_forward(aligned, batch_rows) -> None:
    model, _ = aligned
    rows, pad_id = batch_rows
    batch = collate(rows, pad_id)
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True)
        f, first, _ = _response_logits(model, batch)
        assert first == first_scored_in(batch["labels"]) > 0
        hidden = forward_from(model, batch, batch["input_ids"].shape[1] - 1, output_hidden_states=True).hidden_states
    assert torch.allclose(f, full.logits[response_mask(batch["labels"])], rtol=1e-5, atol=1e-5)
    assert torch.allclose(hidden[-1], full.hidden_states[-1], rtol=1e-5, atol=1e-6)


def test_a_joint_forward_gives_each_part_its_own_forwards_outputs(aligned, batch_rows) -> None:
    from sweeps.lm_loss import forward_joined, token_losses

    model, _ = aligned
    rows, pad_id = batch_rows
    model.train(False)
    user, memory = collate(rows[:2], pad_id), collate(rows[2:4], pad_id)  # memory: shorter rows, scored earlier
    assert memory["input_ids"].shape[1] < user["input_ids"].shape[1]
    first_user = first_scored_in(user["labels"])
    assert first_scored_in(memory["labels"]) < first_user  # the joint projection starts at the memory's position
    first, ((u_rows, u_out), (m_rows, m_out)) = forward_joined(model, user, first_user, [memory], pad_id,
                                                               output_hidden_states=True)  # fmt: skip
    assert first == first_scored_in(memory["labels"])
    width = user["input_ids"].shape[1]  # the memory rows come back padded to the joint width: pads masked, ignored
    assert u_rows["input_ids"].shape == (2, width) and m_rows["input_ids"].shape == (2, width)
    for rows_back, alone, out in ((u_rows, user, u_out), (m_rows, memory, m_out)):
        n = alone["input_ids"].shape[1]
        assert torch.equal(rows_back["labels"][:, :n], alone["labels"])
        assert (rows_back["labels"][:, n:] == IGNORE_INDEX).all() and (rows_back["attention_mask"][:, n:] == 0).all()
        ref = forward_from(model, alone, first, output_hidden_states=True)
        kept = n - first  # logits from `first`: the part's own width
        torch.testing.assert_close(out.logits[:, :kept], ref.logits, rtol=1e-4, atol=1e-5)
        mask = alone["attention_mask"].bool()
        torch.testing.assert_close(out.hidden_states[-1][:, :n][mask], ref.hidden_states[-1][mask], rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
        ce = response_loss(model, alone, first, reduction="sum")[0]
        torch.testing.assert_close(token_losses(out.logits, rows_back["labels"], first)[0].sum(), ce, rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
