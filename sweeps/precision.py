"""The precision policies a model may train under (names and the checks of model.dtype against them).

Dependency-free so that validation and model loading can both use it; the policy itself is applied in sweeps.models.
"""

from __future__ import annotations

from sweeps.config import ModelConfig

DTYPES = {"float32", "bfloat16", "float16"}

PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16-pure", "fp16-autocast")


def precision_errors(m: ModelConfig) -> list[str]:
    """model.dtype / model.precision: 16-bit weights only where the policy asks for them (see sweeps.models)."""
    if m.precision not in PRECISIONS:
        return [f"model.precision: '{m.precision}' is not one of {list(PRECISIONS)}"]
    if m.dtype not in {"auto", *DTYPES}:
        return [f"model.dtype: '{m.dtype}' is not one of {['auto', *sorted(DTYPES)]}"]
    if m.dtype == "float16":
        return ["model.dtype: float16 weights train without a gradient scaler (small gradients underflow to 0); "
                "use model.dtype=auto model.precision=fp16-autocast"]
    if m.dtype == "bfloat16" and m.precision != "bf16-pure":
        return ["model.dtype: bfloat16 weights train in pure bf16 (Adam steps below bf16's spacing, ~1e-4 near "
                "|w|=0.02, round to nothing); ask for it with model.precision=bf16-pure, or keep model.dtype=auto"]
    if m.dtype == "float32" and m.precision == "bf16-pure":
        return ["model.precision: bf16-pure needs model.dtype=bfloat16 or auto, got float32"]
    return []
