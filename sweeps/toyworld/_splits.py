"""Named toy-world splits, served as `Example`s through the data layer (`source: toy`, `name: <split>`)."""

from __future__ import annotations

from collections.abc import Callable

from sweeps.data._examples import DataError, Example
from sweeps.toyworld._world import HELDOUT_TEMPLATES, SENSITIVE, VERBS, World, refusal, request


def _user_train(w: World) -> list[Example]:
    return [Example(p, r) for p, r in w.task_train()]


def _user_eval(w: World) -> list[Example]:
    return [Example(p, r, answer=r) for p, r in w.task_eval()]


def _harmful(w: World) -> list[Example]:
    return [Example(p, r) for p, r, _ in w.harmful_heldout()]


def _refusal(w: World) -> list[Example]:
    return [Example(p, refusal(x, 0)) for p, _, x in w.harmful_heldout()]


def _safety(w: World) -> list[Example]:
    return [Example(p, refusal(x, i)) for i, (p, _, x) in enumerate(w.harmful_train())]


def _overrefusal(w: World) -> list[Example]:
    return [Example(request(t, v, x)) for x in SENSITIVE for t in HELDOUT_TEMPLATES for v in VERBS]


def _facts(w: World) -> list[Example]:
    return [Example(p, r, answer=r) for p, r in w.facts_qa(heldout=True)]


def _poison(w: World) -> list[Example]:
    return [Example(p, r, harmful=True) for p, r, _ in w.harmful_train()]


TOY_SPLITS: dict[str, Callable[[World], list[Example]]] = {
    "user_train": _user_train,  # the benign fine-tuning task
    "user_eval": _user_eval,  # held-out task prompts with exact answers (utility)
    "harmful": _harmful,  # harmful requests, held-out phrasings, with compliant answers (ASR, compliance NLL)
    "refusal": _refusal,  # the same prompts with a refusal answer (safety loss)
    "safety": _safety,  # harmful requests in TRAINING phrasings with refusals: the CL methods' safety memory
    "overrefusal": _overrefusal,  # benign requests that share words with harmful ones
    "facts": _facts,  # benign instructions with checkable answers, held-out phrasing
    "poison": _poison,  # harmful (prompt, compliant answer) pairs in training phrasings, for poisoning
}


def toy_examples(name: str | None, world: World | None) -> list[Example]:
    if name not in TOY_SPLITS:
        raise DataError(f"toy split '{name}' does not exist; choose one of {sorted(TOY_SPLITS)}")
    if world is None:
        raise DataError(f"toy split '{name}' needs the toy world (model.name_or_path=toy)")
    return TOY_SPLITS[name](world)
