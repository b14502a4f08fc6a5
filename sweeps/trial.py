"""One trial: load → fine-tune → evaluate → write the run dir. Plain typed code; Hydra lives in sweeps.train."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sweeps import distributed
from sweeps.alignment import align_truncation
from sweeps.config import ConfigError, TrainConfig
from sweeps.data import USER, DataError
from sweeps.formatting import PromptFormatter
from sweeps.loop import train
from sweeps.methods import TrainingMethod, build_methods
from sweeps.methods._resources import build_resources
from sweeps.models import POOL, load_model, resolve_package, resolve_precision
from sweeps.resolve import load_data, resolve_model
from sweeps.rundir import atomic_write_json, atomic_write_jsonl, versions
from sweeps.scoring.scorer import EvalSets, Scorer
from sweeps.toyworld import World
from sweeps.validate import validate

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    # CPU kernels are deterministic already; warn_only keeps GPU runs going where no deterministic kernel exists.
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclasses.dataclass
class Progress:
    """How far a trial got: written to interrupted.json when it is stopped (Ctrl-C) before finishing."""

    stage: str = "loading"  # loading | baseline | training | evaluating | writing
    step: int = 0
    checks: TrialChecks | None = None

    def on_step(self, step: int, loss: float) -> bool:
        """The loop's per-step callback: records the step, then runs the trial's checks."""
        self.step = step
        return bool(self.checks(step, loss)) if self.checks is not None else False


def check_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """The run dir (and weights/ when weights are saved) can be written: found out now, not after training."""
    targets = [("run dir", run_dir)]
    if cfg.output.save_final or cfg.output.save_eval_weights:
        targets.append(("output.save_final / output.save_eval_weights", run_dir / "weights"))
    for key, folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as e:
            raise ConfigError(f"{key}: cannot write to {folder} ({e.strerror or e})") from None


def run_trial(cfg: TrainConfig, run_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune and score one recipe; writes metrics.json and generations.jsonl into run_dir and returns metrics.

    Stopped by Ctrl-C, it leaves interrupted.json (stage, step, time) and no metrics.json, then re-raises.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    validate(cfg)
    check_run_dir(run_dir, cfg)
    main = distributed.world().is_main  # under torchrun only rank 0 evaluates and writes (sweeps.distributed)
    for stale in ("metrics.json", "interrupted.json") if main else ():  # a rerun must not look finished early
        (run_dir / stale).unlink(missing_ok=True)
    seed_everything(cfg.seed)
    where = Progress()
    try:
        world, root, mcfg = resolve_model(cfg.model, cfg.data, cfg.world, cfg.cache_dir, progress=progress)
        try:
            train_set, sets = load_data(cfg.data, world)
        except DataError as e:
            raise ConfigError(str(e)) from None
        meta = distributed.builds_on_meta(mcfg)  # FSDP, rank > 0: no weights of its own (and none to keep)
        reuse = mcfg.reuse and not meta
        model, tok = POOL.acquire(mcfg, mcfg.name_or_path) if reuse else load_model(mcfg, mcfg.name_or_path, meta=meta)
        try:
            return _run(cfg, run_dir, start, model, tok, train_set, sets, progress, where, align_truncation(mcfg),
                        method_base_path(cfg, root), world)  # fmt: skip
        finally:
            if reuse:
                POOL.release(model)
    except KeyboardInterrupt:
        if not main:
            raise
        note = {"status": "interrupted", "stage": where.stage, "step": where.step,
                "elapsed_s": time.perf_counter() - start, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        atomic_write_json(run_dir / "interrupted.json", note)
        raise


def method_base_path(cfg: TrainConfig, toy_root: Path | None) -> Path | None:
    """θ before alignment, for methods that use it (MagMax, SafeLoRA): the toy world's base/ or the alignment stage's
    input — a model directory, or its GGUF file (`pkg:` models such as SmolLM2 ship one)."""
    if cfg.model.name_or_path == "toy" and toy_root is not None:
        return toy_root / "base"
    if not cfg.model.align.enabled:
        return None
    base = resolve_package(cfg.model)
    if base.gguf_file and Path(base.name_or_path, base.gguf_file).is_file():
        return Path(base.name_or_path, base.gguf_file)
    return Path(base.name_or_path) if Path(base.name_or_path).is_dir() else None


def _run(cfg: TrainConfig, run_dir: Path, start: float, model, tok, train_set, sets, progress,
         where: Progress, align_counts: dict[str, int], base_path: Path | None = None,
         world: World | None = None) -> dict[str, Any]:  # fmt: skip
    fmt = PromptFormatter(tok, cfg.data.template, cfg.data.system_prompt)
    encoded, truncation = fmt.encode_pairs([(e.prompt, e.response) for e in train_set], cfg.data.max_length,
                                           "data.train")  # fmt: skip
    if not encoded:
        raise ConfigError(f"data.max_length: {cfg.data.max_length} leaves no response token in any training example")
    sources = [e.tag for e in train_set]
    if truncation.dropped:  # encode_pairs leaves the dropped ones out: the kept ones' tags, in the same order
        sources = [e.tag for e in train_set if fmt.encode_pair(e.prompt, e.response, cfg.data.max_length) is not None]
    per_source = dict.fromkeys([USER, *cfg.data.mixes], 0) | Counter(sources)  # the examples trained on
    scorer = Scorer(tok, fmt, sets, cfg.eval, max_length=cfg.data.max_length)
    methods = build_methods(cfg.method)
    meta = distributed.builds_on_meta(cfg.model)  # FSDP, rank > 0: no weights until sharded; not evaluated
    distance = None if meta else Distance(model)  # θ_aligned, before anything trains
    shadows = methods.shadows if cfg.eval.each_shadow else []  # scored one by one; the live weights are the result
    checks = None
    if cfg.trial.check_every:
        probe = Scorer(tok, fmt, _probe_sets(sets, cfg.trial.check_limit), cfg.eval, max_length=cfg.data.max_length)
        checks = TrialChecks(cfg, probe, methods, model, distance, shadows)
    where.checks = checks
    resources = build_resources(methods, fmt, n_user=len(train_set), max_length=cfg.data.max_length, world=world,
                                base_path=base_path, seed=cfg.seed)  # fmt: skip

    precision = resolve_precision(cfg.model, None if meta else next(model.parameters()).device)
    if precision.warning:
        log.warning(precision.warning)
    metrics: dict[str, Any] = {**truncation.metrics("train"), **scorer.truncation_metrics(), **align_counts,
                               **precision.metrics()}  # fmt: skip
    generations: list[dict[str, Any]] = []
    proc = distributed.world()  # this process under torchrun (size 1 without it)
    if cfg.eval.baseline and proc.is_main:
        where.stage = "baseline"
        base = scorer.score(model, progress=progress)
        metrics.update({f"start/{k}": v for k, v in base.metrics.items()})
        generations += [{**g, "weights": "start"} for g in base.generations]

    log.info("training on %d examples (%s)", len(encoded), ", ".join(f"{n} {tag}" for tag, n in per_source.items()))
    where.stage = "training"
    run_dir.mkdir(parents=True, exist_ok=True)
    result = train(model, encoded, cfg.optim, methods, pad_id=scorer.pad_id, seed=cfg.seed, progress=progress,
                   on_step=where.on_step, precision=precision, resources=resources,
                   log_path=run_dir / "train_log.jsonl" if proc.is_main else None, sources=sources,
                   sharding=cfg.model.distributed)  # fmt: skip
    distributed.leave()  # every rank at once; nothing after training is collective
    if not proc.is_main:  # the trial is rank 0's from here (after DDP the others' weights are the same; FSDP
        # gathered the full weights into rank 0's model)
        return {"status": result.status, "steps": result.steps, "rank": proc.rank}
    where.stage = "evaluating"
    if checks is not None and checks.stop_reason:
        result.status = "pruned"
        metrics.update(prune_reason=checks.stop_reason, pruned_at=result.steps)
    if checks is not None:
        metrics.update({f"check/{k}": v for k, v in checks.last.items()})
    metrics.update(
        status=result.status, steps=result.steps, diverged_at=result.diverged_at,
        effective_batch_size=result.effective_batch_size, world_size=proc.size, train_tokens=result.train_tokens,
        train_time_s=result.train_time_s, tokens_per_s=result.tokens_per_s, final_train_loss=result.final_loss,
        n_train=len(train_set), **{f"data/mix/{tag}": n for tag, n in per_source.items()}, seed=cfg.seed,
        lr=cfg.optim.lr, batch_size=cfg.optim.batch_size, grad_accum=cfg.optim.grad_accum,
    )  # fmt: skip
    metrics.update(methods.metrics())
    metrics["methods"] = methods.described  # [{name, target, args}]; analysis labels trials from it
    if shadows:
        metrics["shadows"] = [m.name for m in shadows]  # analysis: one row per shadow, labelled by its method

    if result.status == "completed":
        swapped = methods.swaps_eval_weights and not shadows
        metrics["eval_weights"] = "method" if swapped else "live"
        with methods.eval_weights() if swapped else contextlib.nullcontext():
            scored = scorer.score(model, progress=progress)
            metrics.update(distance())
            if cfg.output.save_eval_weights:
                _save_weights(model, run_dir / "weights" / "eval.safetensors")
            for alpha in cfg.eval.interpolate:  # the line from θ_aligned through the evaluated weights
                with distance.at(alpha):
                    point = scorer.score(model, progress=progress)
                    tag = f"interp/{alpha:g}"
                    metrics.update({f"{tag}/{k}": v for k, v in {**point.metrics, **distance()}.items()})
                    generations += [{**g, "weights": tag} for g in point.generations]
        metrics.update(scored.metrics)
        generations += [{**g, "weights": metrics["eval_weights"]} for g in scored.generations]
        for method in shadows:  # each variant's own weights, from the same training trajectory
            with method.eval_weights():
                point = scorer.score(model, progress=progress)
                tag = f"shadow/{method.name}"
                metrics.update({f"{tag}/{k}": v for k, v in {**point.metrics, **distance()}.items()})
                generations += [{**g, "weights": tag} for g in point.generations]
        if cfg.eval.also_live and swapped:
            live = scorer.score(model, progress=progress, drafts=scored.tokens)  # the EMA's answers as drafts
            metrics.update({f"live/{k}": v for k, v in {**live.metrics, **distance()}.items()})
            generations += [{**g, "weights": "live"} for g in live.generations]
        if cfg.output.save_final:
            _save_weights(model, run_dir / "weights" / "final.safetensors")
    where.stage = "writing"
    metrics["wall_time_s"] = time.perf_counter() - start
    metrics["versions"] = versions()
    atomic_write_jsonl(run_dir / "generations.jsonl", generations)
    if checks is not None:
        atomic_write_jsonl(run_dir / "checks.jsonl", checks.history)
    atomic_write_json(run_dir / "metrics.json", metrics)  # written last: its presence marks a finished trial
    log.info("trial %s: %s", result.status, _summary(metrics))
    return metrics


def _probe_sets(sets: EvalSets, limit: int) -> EvalSets:
    def cut(v):
        return {k: e[:limit] for k, e in v.items()} if isinstance(v, dict) else (v[:limit] if v else v)

    return EvalSets(**{f.name: cut(getattr(sets, f.name)) for f in dataclasses.fields(sets)})


class Distance:
    """‖θ − θ_aligned‖₂ over the trainable scope (all weights, or the adapters under LoRA), absolute and relative to
    ‖θ_aligned‖. The snapshot is taken at construction, on the host in the weights' own dtype (exact, and no
    accelerator memory); differences are summed in fp32 on the weights' device, with one sync per call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = [p.detach().to("cpu", copy=True) for p in self.params]
        self.norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s.float())
                                                                for s in self.start])))  # fmt: skip

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        """The distance of the weights live now (call inside methods.eval_weights() for the evaluated ones)."""
        parts = [torch.linalg.vector_norm(p.detach().float() - s.to(p.device).float())
                 for p, s in zip(self.params, self.start, strict=True)]  # fmt: skip
        d = float(torch.linalg.vector_norm(torch.stack([x.to(parts[0].device) for x in parts])))
        return {"distance_l2": d, "distance_rel": d / self.norm if self.norm > 0 else float("nan")}

    @contextlib.contextmanager
    @torch.no_grad()
    def at(self, alpha: float) -> Iterator[None]:
        """The weights θ_aligned + α·(θ − θ_aligned) live inside (θ: the weights live on entry, kept on the host
        meanwhile). torch.lerp is exact at both ends, so α = 0 and α = 1 are θ_aligned and θ bit for bit."""
        live = [p.detach().to("cpu", copy=True) for p in self.params]
        for p, s, t in zip(self.params, self.start, live, strict=True):
            p.copy_(torch.lerp(s.to(p.device).float(), t.to(p.device).float(), alpha))
        try:
            yield
        finally:
            for p, t in zip(self.params, live, strict=True):
                p.copy_(t)


class TrialChecks:
    """`on_step` callback: every `trial.check_every` steps score a probe set; report to the study (one objective:
    the pruner decides) and stop when a `trial.stop_if` bound is exceeded (any number of objectives). Each check,
    with the distance from θ_aligned, is one row of `history` (the run dir's checks.jsonl)."""

    def __init__(self, cfg: TrainConfig, probe: Scorer, methods, model, distance: Distance,
                 shadows: Sequence[TrainingMethod] = ()) -> None:  # fmt: skip
        self.cfg, self.probe, self.methods, self.model, self.distance = cfg.trial, probe, methods, model, distance
        self.shadows = list(shadows)  # eval.each_shadow: the live weights decide; each shadow is checked beside them
        self.start_scores: dict[str, float] | None = None  # θ_aligned's check, shared by shadows not yet updated
        self.history: list[dict[str, float]] = []
        self.metrics = list(dict.fromkeys([self.cfg.check_metric, *self.cfg.stop_if]))
        missing = [m for m in self.metrics if m not in probe.available()]
        if "safety_loss" in probe.available():  # the safety curve is always kept: an NLL on the probe, cheap
            self.metrics = list(dict.fromkeys([*self.metrics, "safety_loss"]))
        if missing:  # validate() saw the data set configured; its rows may still lack what the metric needs
            raise ConfigError(f"trial.check_metric / trial.stop_if: no probe examples for {missing} in the loaded "
                              "data (utility_acc needs rows with an answer)")  # fmt: skip
        self.stop_reason: str | None = None
        self.last: dict[str, float] = {}
        self.optuna_trial = self._connect()

    def _connect(self):
        if self.cfg.study is None or self.cfg.storage is None or self.cfg.trial_id is None:
            return None
        import optuna

        from sweeps.study.runner import make_pruner
        from sweeps.study.storage import load_study

        pruner = make_pruner(self.cfg.pruner, json.loads(self.cfg.pruner_kwargs))
        study = load_study(self.cfg.study, self.cfg.storage, pruner)
        return optuna.trial.Trial(study, self.cfg.trial_id)

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.cfg.check_every:
            return False
        with self.methods.eval_weights() if not self.shadows else contextlib.nullcontext():
            self.last = {**self.probe.score(self.model, self.metrics).metrics, **self.distance()}
        row = {"step": step, "loss": loss, **self.last}
        for method in self.shadows:
            if method.evaluates_start and self.start_scores is not None:
                scored = {**self.start_scores, "eval_time_s": 0.0}  # e.g. an every-20 EMA at step 9: θ_aligned
            else:
                with method.eval_weights():
                    scored = {**self.probe.score(self.model, self.metrics).metrics, **self.distance()}
                if method.evaluates_start:
                    self.start_scores = scored
            row.update({f"shadow/{method.name}/{k}": v for k, v in scored.items()})
        self.history.append(row)
        value = self.last[self.cfg.check_metric]
        log.info("check at step %d: %s", step, {k: round(v, 4) for k, v in self.last.items() if k in self.metrics})
        if self.optuna_trial is not None:
            if self.cfg.single_objective:
                self.optuna_trial.report(value, step)
                if self.optuna_trial.should_prune():
                    self.stop_reason = f"pruner ({self.cfg.pruner}) at step {step}: {self.cfg.check_metric}={value:.4g}"
            else:  # Optuna's report() is single-objective only: keep the curve in user attrs
                self.optuna_trial.set_user_attr(f"check/{self.cfg.check_metric}/{step}", value)
        for metric, bound in self.cfg.stop_if.items():
            if self.last[metric] > bound:
                self.stop_reason = f"{metric}={self.last[metric]:.4g} > {bound} at step {step}"
        return self.stop_reason is not None


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))  # only trainable tensors (all for full FT, the adapters for LoRA)
    tmp.replace(path)


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("asr", "over_refusal", "safety_loss", "utility_loss", "utility_acc", "steps", "wall_time_s")
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), int | float))


def as_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
