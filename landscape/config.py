"""Typed config of `python -m landscape` (registered as the schema of conf/landscape.yaml)."""

from __future__ import annotations

import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sweeps.config import ConfigError, DataConfig, EvalConfig, ModelConfig


@dataclass
class ScopeConfig:
    include: str | None = None  # regex on parameter names
    # regex; "auto": norms and biases stay fixed in random mode, nothing is excluded in interpolate/plane mode (so
    # α = 1 is exactly the target model); null: nothing excluded
    exclude: str | None = "auto"
    embeddings: bool = True
    lm_head: bool = True
    lora_only: bool = False


@dataclass
class LandscapeSettings:
    mode: str = "random"  # random (1 or 2 seeded Gaussian directions) | interpolate (centre → target) | plane
    dims: int = 2  # random mode: 1 or 2
    seed: int = 0
    normalisation: str = "filter"  # filter | layer | none (applied to random directions)
    scope: ScopeConfig = field(default_factory=ScopeConfig)
    radius: float = 0.5  # random mode: each axis spans [-radius, radius]
    span: list[float] = field(default_factory=lambda: [-0.5, 1.5])  # interpolate / plane axes
    # plane: "targets" (axes θ_B − θ_0 and θ_C − θ_0, C at (0, 1)) | "orthogonal" (Gram–Schmidt, both axes in units
    # of ‖θ_B − θ_0‖: true distances and angles; landscape/plane.py)
    basis: str = "targets"
    margin: float | None = None  # plane: fit each axis to θ_0, B and C, this share of their extent beyond (not span)
    points: int = 11  # per axis; the origin is always a grid point
    repeats: int = 1  # random mode: independent direction sets (CI bands and radius CI)
    metrics: list[str] = field(default_factory=lambda: ["safety_loss", "utility_loss"])
    asr_limit: int | None = 32  # harmful prompts generated per point when "asr" is a metric
    # generated metrics (asr, over_refusal, utility_acc): check the nearest computed point's answers as drafts in up
    # to this many forward passes before decoding the rest token by token (0: off; 1 on a CPU with a large model)
    draft_rounds: int = 8
    # interpolate: [B]; plane: [B, C] — model dirs, .safetensors files, or toy:base / toy:aligned
    targets: list[str] = field(default_factory=list)
    overlay: list[str] = field(default_factory=list)  # weights to project onto the plane and mark on the figures
    centre_weights: str | None = None  # .safetensors overlaid on the model (e.g. a trial's weights/eval.safetensors)
    thresholds: dict[str, float] = field(default_factory=dict)  # metric -> basin threshold (absolute)
    tolerance: float = 1.0  # default threshold: the centre's value + tolerance (losses), 0.5 for asr
    hessian: bool = False  # top Hessian eigenvalue of the safety and utility losses at the centre
    hessian_examples: int = 16
    hessian_iters: int = 20
    surface3d: bool = False
    workers: int = 1  # split the grid over this many processes/GPUs ...
    worker: int = 0  # ... this one computes points with index % workers == worker
    max_points: int | None = None  # compute at most this many new points, then stop (resume later)


@dataclass
class LandscapeAppConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    world: dict[str, Any] = field(default_factory=dict)
    landscape: LandscapeSettings = field(default_factory=LandscapeSettings)
    seed: int = 0
    cache_dir: str = ".cache"


MODES = ("random", "interpolate", "plane")


def hits_origin(lo: float, hi: float, n: int) -> bool:
    """Whether n evenly spaced points from lo to hi include 0 (to grid tolerance)."""
    k = -lo * (n - 1) / (hi - lo)
    return abs(k - round(k)) < 1e-9 * max(1.0, n)


def shared_errors(cfg: LandscapeAppConfig) -> list[str]:
    """The train CLI's checks of what a landscape shares with a trial: model, data, eval, world."""
    from sweeps.config import TrainConfig
    from sweeps.resolve import world_config
    from sweeps.validate import validate  # the train CLI's public check

    try:
        shared = TrainConfig(model=cfg.model, data=cfg.data, eval=cfg.eval, world=world_config(dict(cfg.world)),
                             seed=cfg.seed, cache_dir=cfg.cache_dir)  # fmt: skip
        validate(shared)
    except ConfigError as e:
        return [line.strip() for line in str(e).splitlines() if line.strip() and line.strip() != "invalid config:"]
    return []


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_error(device: str) -> str | None:
    """Why model.device cannot be used here, or None (checked before a model is loaded onto it)."""
    if not DEVICE.fullmatch(device):
        return f"model.device: '{device}' is not one of auto, cpu, cuda, cuda:N, mps"
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            return f"model.device: '{device}' is not available ({count} CUDA device(s) here)"
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return "model.device: 'mps' is not available here"
    return None


def _weights_errors(s: LandscapeSettings) -> list[str]:
    """Weights named by path must exist (toy:… and pkg:… are resolved later)."""
    specs = [(f"landscape.targets[{i}]", t) for i, t in enumerate(s.targets)]
    specs += [(f"landscape.overlay[{i}]", t) for i, t in enumerate(s.overlay)]
    specs += [("landscape.centre_weights", s.centre_weights)] if s.centre_weights else []
    errors = []
    for key, spec in specs:
        if spec.startswith(("toy:", "pkg:")):
            continue
        path = Path(spec)
        if path.suffix == ".safetensors" and not path.is_file():
            errors.append(f"{key}: weights file not found: {spec}")
        elif path.suffix != ".safetensors" and not path.is_dir():
            errors.append(f"{key}: '{spec}' is neither a .safetensors file nor a model directory")
    return errors


def validate_landscape(cfg: LandscapeAppConfig) -> None:
    """Raise ConfigError listing every invalid value: the shared model/data/eval checks, then landscape.*."""
    from landscape.directions import NORMALISATIONS
    from sweeps.scoring.scorer import METRICS

    s = cfg.landscape
    errors = shared_errors(cfg)
    if (why := device_error(cfg.model.device)) is not None:
        errors.append(why)
    if s.mode not in MODES:
        errors.append(f"landscape.mode: '{s.mode}' is not one of {list(MODES)}")
    if s.mode == "random" and s.dims not in (1, 2):
        errors.append(f"landscape.dims: must be 1 or 2, got {s.dims}")
    if s.normalisation not in NORMALISATIONS:
        errors.append(f"landscape.normalisation: '{s.normalisation}' is not one of {list(NORMALISATIONS)}")
    if s.points < 3 or (s.points % 2 == 0 and s.mode == "random"):
        errors.append(f"landscape.points: must be odd and >= 3 (the origin is the middle point), got {s.points}")
    if not 0 < s.radius < math.inf:
        errors.append(f"landscape.radius: must be > 0 and finite, got {s.radius}")
    if len(s.span) != 2 or not -math.inf < s.span[0] < 0 < s.span[1] < math.inf:
        errors.append(f"landscape.span: must be [low < 0, high > 0], got {list(s.span)}")
    elif (s.mode == "interpolate" or (s.mode == "plane" and s.margin is None)) and s.points >= 3 \
            and not hits_origin(*s.span, s.points):
        fits = [n for n in range(3, 102) if hits_origin(*s.span, n)][:4]
        errors.append(f"landscape.points: {s.points} points on span {list(s.span)} miss the origin (α=0); "
                      f"use one of {fits or 'none up to 101 — change landscape.span'}")  # fmt: skip
    for key in ("include", "exclude"):
        pattern = getattr(s.scope, key)
        if pattern and pattern != "auto":
            try:
                re.compile(pattern)
            except re.error as e:
                errors.append(f"landscape.scope.{key}: '{pattern}' is not a valid regex ({e})")
    if s.draft_rounds < 0:
        errors.append(f"landscape.draft_rounds: must be >= 0, got {s.draft_rounds}")
    if s.repeats < 1:
        errors.append(f"landscape.repeats: must be >= 1, got {s.repeats}")
    need = {"random": 0, "interpolate": 1, "plane": 2}.get(s.mode, 0)
    if len(s.targets) != need:
        errors.append(f"landscape.targets: mode {s.mode} needs {need} target(s), got {len(s.targets)}")
    unknown = [m for m in s.metrics if m not in METRICS]
    if unknown or not s.metrics:
        errors.append(f"landscape.metrics: {unknown or 'empty'}; choose from {list(METRICS)}")
    if not 0 <= s.worker < s.workers:
        errors.append(f"landscape.worker: must be in [0, workers), got {s.worker} of {s.workers}")
    if s.overlay and s.mode != "plane":
        errors.append("landscape.overlay: only for mode=plane")
    from landscape.plane import BASES

    if s.basis not in BASES:
        errors.append(f"landscape.basis: '{s.basis}' is not one of {list(BASES)}")
    elif s.basis != "targets" and s.mode != "plane":
        errors.append("landscape.basis: only for mode=plane")
    if s.margin is not None and (s.mode != "plane" or not 0 <= s.margin < math.inf):
        errors.append(f"landscape.margin: must be >= 0 and finite, for mode=plane only, got {s.margin} ({s.mode})")
    for key in ("hessian_examples", "hessian_iters"):
        if getattr(s, key) < 1:
            errors.append(f"landscape.{key}: must be >= 1, got {getattr(s, key)}")
    for key in ("asr_limit", "max_points"):
        if getattr(s, key) is not None and getattr(s, key) < 1:
            errors.append(f"landscape.{key}: must be >= 1 or null, got {getattr(s, key)}")
    if not 0 <= s.tolerance < math.inf:
        errors.append(f"landscape.tolerance: must be >= 0 and finite, got {s.tolerance}")
    for metric, value in s.thresholds.items():
        if metric not in s.metrics:
            errors.append(f"landscape.thresholds.{metric}: not one of landscape.metrics {list(s.metrics)}")
        elif not math.isfinite(value):
            errors.append(f"landscape.thresholds.{metric}: must be finite, got {value}")
    errors += _weights_errors(s)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def unwritable(folder: Path) -> str | None:
    """Why files cannot be written into folder (created if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"cannot write into {folder} ({e.strerror or e})"
    return None


class OutputDirCheck(Callback):
    """An unusable hydra.run.dir (under a regular file, read-only) is one line and exit status 2, before Hydra's
    own mkdir would fail with a traceback (conf/landscape.yaml registers this in hydra.callbacks)."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        why = unwritable(Path(str(config.hydra.run.dir)))
        if why is not None:
            print(f"error: hydra.run.dir: {why}", file=sys.stderr)
            sys.exit(2)
