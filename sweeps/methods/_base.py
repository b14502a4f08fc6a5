"""The hook interface every training method (EMA, EWC, LwF, A-GEM, DER, Refresh, MagMax, ...) implements.

`sweeps.loop.train` owns forward / backward / clip / step and calls the hooks at fixed points, in this order:

    setup(ctx)                   once, before the first step: request streams, reference weights, the teacher,
                                 hidden states (sweeps.methods._context); compute Fisher, stored logits, ...
    per optimiser step:
      before_step(step, batches) before any forward of the step; `batches` are its user micro-batches. May move
                                 the weights (Refresh's unlearning move) but must leave `.grad` empty. May
                                 replace the micro-batches' contents in place (`batch.clear(); batch.update(..)`:
                                 Lisa's alignment phase trains on safety batches instead); the loop's token weights
                                 and the log's `tokens.train` still come from the user rows it drew.
      rider()                    after before_step: a batch of the method's own (DER's memory batch) to append to
                                 the LAST user micro-batch's forward, so one forward and one backward serve both;
                                 None (default) or any method with `reads_user_gradient`: no joint forward
      per micro-batch:
        extra_loss(model, batch, outputs)  a term on the USER batch (LwF), added to that micro-batch's loss and
                                 scaled by 1/grad_accum like it; `outputs.hidden_states` when capture_hidden()
        ride_loss(batch, outputs, first)  last micro-batch, when rider() gave rows: the term on them, from their
                                 rows of the joint forward (`batch` at the joint width, `outputs.logits` from
                                 position `first`); added to that micro-batch's loss, not scaled (as step_loss's)
      after_user_backward(model) the user micro-batches' gradients are in `.grad` (scaled under fp16), and the
                                 riders' terms: may read them and move the weights (Refresh's `ascent: shared`, which
                                 sets `reads_user_gradient` so that nothing rides), must not change `.grad`
      step_loss(model)           once per step, after all micro-batches: a term on memory batches (DER, DER++,
                                 replay) that did not ride; its backward adds to the gradients. Not scaled.
      after_backward(model)      gradients complete, before clipping: add parameter-only penalties in closed form
                                 (EWC, L2) or project (A-GEM); may change `.grad` only
      after_step(step)           after optimizer.step(); `step` counts from 1 (EMA update)
    finalize()                   once after training ran to its last step, before evaluation and saving: merges and
                                 projections (MagMax); may change the weights
    eval_weights()               context manager: the weights to evaluate are live inside it (EMA's average)

`step_log()` returns this step's terms for train_log.jsonl (floats or 0-d tensors: the loop syncs them at once);
`metrics()` the summary for metrics.json. Every hook does nothing by default.

The instance name is the config key (`method.<name>`), so two instances of one class keep separate state,
metrics (`<name>/...`) and data streams.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.methods._context import TrainingContext

REGISTRY: dict[str, type[TrainingMethod]] = {}


class TrainingMethod:
    key: ClassVar[str] = ""  # registry key and conf/method/<key>.yaml; the default instance name
    streams: ClassVar[tuple[str, ...]] = ()  # constructor arguments that are data-set specs (validated, loaded)
    off: ClassVar[dict[str, Any]] = {}  # arguments that make the method plain fine-tuning (the contract test)
    term: ClassVar[str] = ""  # its metrics() key that is non-zero once the method acts (the contract test)
    lora_only: ClassVar[bool] = False  # acts on LoRA adapters only: full fine-tuning is a config error
    uses_base: ClassVar[bool] = False  # reads θ_base (ctx.reference("base")): a trial with none known is a config error
    name: str = "method"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "key" in cls.__dict__ and cls.key:
            REGISTRY[cls.key] = cls
        cls.name = cls.key or cls.__name__.lower()

    def setup(self, ctx: TrainingContext) -> None:
        """Called once before training."""

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        """Optimiser step number `step` (1-based) is about to run on these micro-batches."""

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        return None

    def rider(self) -> dict[str, torch.Tensor] | None:
        """Rows to append to the last user micro-batch's forward this step (their term comes from ride_loss)."""
        return None

    def ride_loss(self, batch: dict[str, torch.Tensor], outputs: Any, first: int) -> torch.Tensor | None:
        """The term on the rows rider() gave, from their slice of the joint forward."""
        return None

    @property
    def reads_user_gradient(self) -> bool:
        """after_user_backward reads the user gradient alone: no method's rows may ride in the user forward."""
        return False

    def after_user_backward(self, model: nn.Module) -> None:
        """The user micro-batches' gradients are in `.grad`; step_loss terms come next."""

    def step_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are complete (all micro-batches and step losses) and not yet clipped."""

    def after_step(self, step: int) -> None:
        """The optimiser has just applied update number `step` (1-based)."""

    def finalize(self) -> None:
        """Training is over; change the weights for evaluation and saving if the method is post-hoc."""

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        yield

    @property
    def swaps_eval_weights(self) -> bool:
        return False

    @property
    def evaluates_start(self) -> bool:
        """True while `eval_weights` would evaluate exactly the weights training started from (θ_aligned): a trial
        check scores those once and reuses the scores for every such method."""
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict() returned (after setup())."""

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {}

    def metrics(self) -> dict[str, float]:
        return {}

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        """Value errors for these constructor arguments (one line each, starting with the argument name)."""
        return []


def check_number(kwargs: dict[str, Any], arg: str, default: Any, *, lo: float | None = None, hi: float | None = None,
                 integer: bool = False, open_lo: bool = False, none_ok: bool = False) -> list[str]:  # fmt: skip
    """One error line when kwargs[arg] is not a number in the range (bools are not numbers)."""
    v = kwargs.get(arg, default)
    if v is None and none_ok:
        return []
    kind = int if integer else int | float
    ok = isinstance(v, kind) and not isinstance(v, bool)
    ok = ok and (lo is None or (v > lo if open_lo else v >= lo)) and (hi is None or v <= hi)
    if ok:
        return []
    what = "an integer" if integer else "a number"
    bounds = f"{'>' if open_lo else '>='} {lo}" if lo is not None else ""
    bounds += (" and " if bounds and hi is not None else "") + (f"<= {hi}" if hi is not None else "")
    return [f"{arg}: must be {what}{' ' + bounds if bounds else ''}{' or null' if none_ok else ''}, got {v!r}"]


def check_flag(kwargs: dict[str, Any], arg: str, default: bool = False) -> list[str]:
    v = kwargs.get(arg, default)
    return [] if isinstance(v, bool) else [f"{arg}: must be true or false, got {v!r}"]


def check_choice(kwargs: dict[str, Any], arg: str, default: Any, choices: Sequence[Any]) -> list[str]:
    v = kwargs.get(arg, default)
    return [] if v in choices else [f"{arg}: {v!r} is not one of {list(choices)}"]


class MethodStack(TrainingMethod):
    """Runs several methods in config order; eval_weights nests them (first listed is outermost)."""

    def __init__(self, methods: list[TrainingMethod], described: list[dict[str, Any]] | None = None) -> None:
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"two methods share a name: {names}")
        self.methods = methods
        self.described = described or [{"name": m.name, "target": f"{type(m).__module__}.{type(m).__qualname__}",
                                        "args": {}} for m in methods]  # fmt: skip

    def setup(self, ctx: TrainingContext) -> None:
        for m in self.methods:
            m.setup(ctx)

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        for m in self.methods:
            m.before_step(step, batches)

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        terms = [t for m in self.methods if (t := m.extra_loss(model, batch, outputs)) is not None]
        return torch.stack(terms).sum() if terms else None

    def riders(self) -> list[tuple[TrainingMethod, dict[str, torch.Tensor]]]:
        """(method, rows) for each method whose rows join the last user forward this step."""
        if any(m.reads_user_gradient for m in self.methods):
            return []
        return [(m, rows) for m in self.methods if (rows := m.rider()) is not None]

    def after_user_backward(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_user_backward(model)

    def step_loss(self, model: nn.Module) -> torch.Tensor | None:
        terms = [t for m in self.methods if (t := m.step_loss(model)) is not None]
        return torch.stack(terms).sum() if terms else None

    def after_backward(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_backward(model)

    def after_step(self, step: int) -> None:
        for m in self.methods:
            m.after_step(step)

    def finalize(self) -> None:
        for m in self.methods:
            m.finalize()

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for m in self.methods:
                stack.enter_context(m.eval_weights())
            yield

    @property
    def swaps_eval_weights(self) -> bool:
        return any(m.swaps_eval_weights for m in self.methods)

    @property
    def shadows(self) -> list[TrainingMethod]:
        """The methods that evaluate weights of their own (shadow-mode EMA). Several of them (`eval.each_shadow`) are
        variants on one training trajectory: each is scored on its own, never nested inside another."""
        return [m for m in self.methods if m.swaps_eval_weights]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{m.name}.{k}": v for m in self.methods for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for m in self.methods:
            prefix = f"{m.name}."
            m.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {f"{m.name}/{k}": v for m in self.methods for k, v in m.step_log().items()}

    def metrics(self) -> dict[str, float]:
        return {f"{m.name}/{k}": v for m in self.methods for k, v in m.metrics().items()}


def resolve(target: str) -> type[TrainingMethod]:
    module, _, attr = target.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise TypeError(f"{target} is not a TrainingMethod")
    return cls


def stream_spec_errors(key: str, spec: Any) -> list[str]:
    """A method's data-set argument is a DatasetConfig mapping, checked like `data.*` (missing file, ...)."""
    from sweeps.config import DatasetConfig
    from sweeps.data.spec import check_dataset

    if not isinstance(spec, dict):
        return [f"{key}: must be a data-set spec such as {{source: toy, name: safety}}, got {spec!r}"]
    try:
        ds = DatasetConfig(**spec)
    except TypeError as e:
        return [f"{key}: {e}"]
    errors: list[str] = []
    check_dataset(errors, key, ds)
    return errors


def known_method_errors(method_cfg: dict[str, Any], lora: bool | None = None,
                        toy_world: bool | None = None) -> list[str]:  # fmt: skip
    """Check every `method.<name>` entry before anything is built: target, argument names and values, data;
    with `lora` known (model.lora.enabled), that a LoRA-only method is not used with full fine-tuning; with
    `toy_world` known (the trial builds the toy world), that a toy split is not asked for without it."""
    errors: list[str] = []
    for key, entry in (method_cfg or {}).items():
        entry = dict(entry or {})
        target = entry.pop("_target_", None)
        if not target:
            errors.append(f"method.{key}._target_: missing")
            continue
        try:
            cls = resolve(target)
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            errors.append(f"method.{key}._target_: cannot use '{target}' ({e})")
            continue
        try:
            inspect.signature(cls).bind(**entry)
        except TypeError as e:
            errors.append(f"method.{key}: {e}")
            continue
        errors.extend(f"method.{key}.{msg}" for msg in cls.check_args(entry))
        if lora is False and cls.lora_only:
            errors.append(f"method.{key}: projects LoRA adapters (B·A) and needs model.lora.enabled=true; "
                          "full fine-tuning has nothing for it to project")
        for arg in cls.streams:
            if entry.get(arg) is None:
                errors.append(f"method.{key}.{arg}: required (a data-set spec, e.g. {{source: toy, name: safety}})")
            else:
                spec = plain(entry[arg])
                errors.extend(stream_spec_errors(f"method.{key}.{arg}", spec))
                if toy_world is False and isinstance(spec, dict) and spec.get("source") == "toy":
                    errors.append(f"method.{key}.{arg}: toy split '{spec.get('name')}' needs the toy world "
                                  f"(model.name_or_path=toy); give a data set, e.g. "
                                  f"+dataset@method.{key}.{arg}=safeinstr_refusal")  # fmt: skip
    return errors


def plain(value: Any) -> Any:
    """OmegaConf containers → plain dicts/lists (methods receive ordinary Python values)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def shadow_errors(method_cfg: dict[str, Any], each_shadow: bool) -> list[str]:
    """Several shadow-mode methods need `eval.each_shadow` (nested, only the innermost's weights would be scored while
    metrics.json named them all); `eval.each_shadow` needs at least one. Bad arguments are known_method_errors'."""
    try:
        names = [m.name for m in build_methods(method_cfg).shadows]
    except Exception:  # bad arguments: known_method_errors reports them
        return []
    if len(names) > 1 and not each_shadow:
        return [f"method: {', '.join(names)} each evaluate weights of their own (shadow mode); set "
                "eval.each_shadow=true to score each of them (the live weights are then the run's result)"]
    if each_shadow and not names:
        return ["eval.each_shadow: no method in `method` keeps weights of its own (e.g. EMA with mode: shadow)"]
    return []


def build_methods(method_cfg: dict[str, Any]) -> MethodStack:
    """One instance per `method.<name>` entry, named by its key; `described` is what metrics.json records."""
    methods, described = [], []
    for name, entry in (method_cfg or {}).items():
        entry = {k: plain(v) for k, v in dict(entry or {}).items()}
        target = entry.pop("_target_")
        m = resolve(target)(**entry)
        m.name = name
        methods.append(m)
        described.append({"name": name, "target": target, "args": entry})
    return MethodStack(methods, described)
