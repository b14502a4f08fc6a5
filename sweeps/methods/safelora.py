"""SafeLoRA (Hsu et al., 2024): post-hoc projection of LoRA updates onto the alignment subspace, LoRA only.

Per adapted module, with V = W_aligned − W_base (the module's alignment update) and C = V·Vᵀ / ‖V‖_F:

    ΔW = B·A;   if cos(C·ΔW, ΔW) ≤ threshold:  B ← C·B

mode `threshold` projects every module at or below `threshold` (0.5); mode `layers` projects the `layers` (10)
modules of lowest cosine. C·X is computed as V·(Vᵀ·X) / ‖V‖_F, the same product without the d_out² matrix, one
module at a time (fp32). Reference: IBM/SafeLoRA model.py (`projected_weighted`, `get_aligned_matrix`).
Runs in `finalize()` on the live adapters, or on saved ones: `python -m sweeps.safelora` (sweeps/safelora.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from sweeps.methods._base import TrainingMethod, check_choice, check_number
from sweeps.methods._context import TrainingContext, base_names

MODES = ("threshold", "layers")


def project(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """C·x with C = V·Vᵀ / ‖V‖_F, in fp32."""
    v = v.float()
    return v @ (v.T @ x.float()) / torch.linalg.matrix_norm(v).clamp(min=1e-30)


def cosine(v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(C·ΔW, ΔW) over all entries, ΔW = B·A."""
    delta = b.float() @ a.float()
    return float(torch.nn.functional.cosine_similarity((project(v, b) @ a.float()).flatten(), delta.flatten(), dim=0))


def select(cosines: Mapping[str, float], mode: str, threshold: float, layers: int) -> list[str]:
    if mode == "threshold":
        return [k for k, c in cosines.items() if c <= threshold]
    return sorted(cosines, key=lambda k: cosines[k])[:layers]


def safelora(modules: Mapping[str, tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor]], *,
             mode: str = "threshold", threshold: float = 0.5, layers: int = 10,
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:  # fmt: skip
    """`modules`: name → (V loader, A, B). Returns the new B of every projected module and every module's cosine;
    V is built when needed and dropped at once (one module's V at a time)."""
    cosines = {name: cosine(v(), a, b) for name, (v, a, b) in modules.items()}
    chosen = select(cosines, mode, threshold, layers)
    new_b = {name: project(modules[name][0](), modules[name][2]).to(modules[name][2].dtype) for name in chosen}
    return new_b, cosines


class SafeLoRA(TrainingMethod):
    key = "safelora"
    lora_only: ClassVar[bool] = True
    off: ClassVar[dict[str, Any]] = {"enabled": False}
    uses_base: ClassVar[bool] = True
    term: ClassVar[str] = "projected"

    def __init__(self, mode: str = "threshold", threshold: float = 0.5, layers: int = 10, base: str | None = None,
                 enabled: bool = True) -> None:  # fmt: skip
        errors = self.check_args({"mode": mode, "threshold": threshold, "layers": layers, "enabled": enabled})
        if errors:
            raise ValueError("; ".join(errors))
        self.mode, self.threshold, self.layers, self.base, self.enabled = mode, threshold, layers, base, enabled
        self.cosines: dict[str, float] = {}
        self.projected: list[str] = []

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = []
        if not isinstance(kwargs.get("enabled", True), bool):
            errors.append(f"enabled: must be true or false, got {kwargs.get('enabled')!r}")
        errors += check_choice(kwargs, "mode", "threshold", MODES)
        errors += check_number(kwargs, "threshold", 0.5, lo=-1, hi=1)
        errors += check_number(kwargs, "layers", 10, lo=0, open_lo=True, integer=True)
        return errors

    def setup(self, ctx: TrainingContext) -> None:
        if not ctx.lora:
            from sweeps.config import ConfigError

            raise ConfigError(lora_only_error(self.name))  # validate() reports it before training
        self.model = ctx.model
        if self.enabled:
            self.theta_base = ctx.reference("base")

    @torch.no_grad()
    def finalize(self) -> None:
        if not self.enabled:
            return
        keys = {id(p): k for k, p in base_names(self.model)}
        modules: dict[str, tuple[Callable[[], torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        targets = {}
        for mname, m in self.model.named_modules():
            if not hasattr(m, "lora_B") or not hasattr(m, "base_layer"):
                continue
            w = m.base_layer.weight
            key = keys[id(w)]
            for adapter in m.lora_B:
                name = f"{mname}.{adapter}"
                modules[name] = ((lambda w=w, key=key: w.float() - self.theta_base[key].float()),
                                 m.lora_A[adapter].weight, m.lora_B[adapter].weight)  # fmt: skip
                targets[name] = m.lora_B[adapter].weight
        new_b, self.cosines = safelora(modules, mode=self.mode, threshold=self.threshold, layers=self.layers)
        for name, b in new_b.items():
            targets[name].copy_(b)
        self.projected = sorted(new_b)

    def metrics(self) -> dict[str, float]:
        out = {"projected": float(len(self.projected)), "modules": float(len(self.cosines))}
        if self.cosines:
            out["min_cos"] = min(self.cosines.values())
        return out


def lora_only_error(name: str) -> str:
    from sweeps.methods._base import known_method_errors

    return known_method_errors({name: {"_target_": "sweeps.methods.SafeLoRA"}}, lora=False)[0]
