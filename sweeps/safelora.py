"""SafeLoRA on saved adapters: project a LoRA run's B matrices onto the alignment subspace.

    python -m sweeps.safelora --base BASE --aligned ALIGNED --adapter RUN/weights/final.safetensors --out OUT
        [--mode threshold --threshold 0.5 | --mode layers --layers 10]

BASE (θ before alignment) and ALIGNED (θ_aligned, the model the adapters were trained on) are model directories
or .safetensors files; ADAPTER is a LoRA run's saved trainable tensors (peft names, `...lora_B.<adapter>.weight`).
OUT is a .safetensors file with the same tensors, the chosen B matrices projected. Formula: sweeps/methods/safelora.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sweeps.methods.safelora import MODES, safelora
from sweeps.rundir import atomic_save_safetensors

_LORA_B = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_B\.(?P<adapter>[^.]+)\.weight$")


def _files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {path}")
    return files


def _keys(path: Path) -> set[str]:
    out: set[str] = set()
    for f in _files(path):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            out.update(sf.keys())
    return out


def _loader(path: Path, key: str) -> torch.Tensor:
    for f in _files(path):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            if key in sf.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return sf.get_tensor(key)
    raise ValueError(f"{path} lacks {key}")


def project_saved(base: Path, aligned: Path, adapter: Path, out: Path, *, mode: str = "threshold",
                  threshold: float = 0.5, layers: int = 10) -> tuple[list[str], dict[str, float]]:  # fmt: skip
    """Write the projected adapter tensors to `out`; returns the projected modules and every module's cosine."""
    tensors = load_file(str(adapter))
    base_keys, aligned_keys = _keys(base), _keys(aligned)
    modules, names = {}, {}
    for key in tensors:
        m = _LORA_B.match(key)
        if m is None:
            continue
        a_key = key.replace(f".lora_B.{m['adapter']}.", f".lora_A.{m['adapter']}.")
        if a_key not in tensors:
            raise ValueError(f"{adapter} has {key} but not {a_key}")
        weight = f"{m['module']}.weight"
        for path, have in ((base, base_keys), (aligned, aligned_keys)):
            if weight not in have:  # before any work
                raise ValueError(f"{path} lacks {weight}")

        def v(weight: str = weight) -> torch.Tensor:  # loaded when needed: one module's V at a time
            return _loader(aligned, weight).float() - _loader(base, weight).float()

        name = f"{m['module']}.{m['adapter']}"
        modules[name], names[name] = (v, tensors[a_key], tensors[key]), key
    if not modules:
        raise ValueError(f"{adapter} has no LoRA tensors (…lora_B.<adapter>.weight); SafeLoRA is LoRA only")
    new_b, cosines = safelora(modules, mode=mode, threshold=threshold, layers=layers)
    for name, b in new_b.items():
        tensors[names[name]] = b.contiguous()
    atomic_save_safetensors(out, tensors)
    return sorted(new_b), cosines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.safelora", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="θ before alignment (model dir or .safetensors)")
    ap.add_argument("--aligned", type=Path, required=True, help="θ_aligned, the model the adapters were trained on")
    ap.add_argument("--adapter", type=Path, required=True, help="the run's saved adapter tensors (.safetensors)")
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    ap.add_argument("--mode", choices=MODES, default="threshold")
    ap.add_argument("--threshold", type=float, default=0.5, help="project modules with cos <= this (default 0.5)")
    ap.add_argument("--layers", type=int, default=10, help="mode=layers: project this many lowest-cosine modules")
    args = ap.parse_args(argv)
    for key in ("base", "aligned", "adapter"):
        if not getattr(args, key).exists():
            print(f"sweeps.safelora: --{key}: not found: {getattr(args, key)}", file=sys.stderr)
            return 2
    if not -1 <= args.threshold <= 1:
        print(f"sweeps.safelora: --threshold: must be in [-1, 1], got {args.threshold}", file=sys.stderr)
        return 2
    if args.layers < 1:
        print(f"sweeps.safelora: --layers: must be >= 1, got {args.layers}", file=sys.stderr)
        return 2
    try:
        projected, cosines = project_saved(args.base, args.aligned, args.adapter, args.out, mode=args.mode,
                                           threshold=args.threshold, layers=args.layers)  # fmt: skip
    except ValueError as e:
        print(f"sweeps.safelora: {e}", file=sys.stderr)
        return 2
    print(f"projected {len(projected)} of {len(cosines)} modules into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
