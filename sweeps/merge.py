"""MagMax on saved weights: merge a fine-tuned model with its aligned start against the pre-alignment base.

    python -m sweeps.merge --base BASE --aligned ALIGNED --finetuned RUN/weights/final.safetensors --out DIR
        [--scale 0.5]

BASE and ALIGNED are model directories (or .safetensors files); FINETUNED holds the trained tensors (a run's
`weights/final.safetensors` from full fine-tuning: every tensor it has is merged, the others are θ_aligned's).
OUT gets ALIGNED's config and tokenizer files and the merged `model.safetensors`. Formula: sweeps/methods/magmax.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sweeps.methods.magmax import magmax
from sweeps.rundir import atomic_save_safetensors


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"sweeps.merge: no .safetensors weights in {path}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def merge(base: Path, aligned: Path, finetuned: Path, out: Path, scale: float = 0.5) -> int:
    """Write the merged model to `out`; returns the number of tensors merged."""
    b, a, f = _tensors(base), _tensors(aligned), _tensors(finetuned)
    unknown = [k for k in f if k not in a]
    if unknown:
        raise SystemExit(f"sweeps.merge: {finetuned} has tensors the aligned model lacks, e.g. {unknown[0]} "
                         "(LoRA adapters? merge them first, or use method=[magmax] during training)")
    missing = [k for k in f if k not in b]
    if missing:
        raise SystemExit(f"sweeps.merge: {base} lacks {missing[0]}")
    merged = {k: magmax(b[k], [a[k], f[k]], scale).to(a[k].dtype).contiguous() if k in f else v
              for k, v in a.items()}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if aligned.is_dir():
        for p in aligned.iterdir():
            if p.is_file() and p.suffix != ".safetensors" and p.name != "model.safetensors.index.json":
                shutil.copy2(p, out / p.name)
    atomic_save_safetensors(out / "model.safetensors", merged)
    return len(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="θ before alignment (model dir or .safetensors)")
    ap.add_argument("--aligned", type=Path, required=True, help="θ_aligned, where fine-tuning started")
    ap.add_argument("--finetuned", type=Path, required=True, help="the fine-tuned tensors")
    ap.add_argument("--out", type=Path, required=True, help="output model directory")
    ap.add_argument("--scale", type=float, default=0.5, help="λ (default 0.5, MagMax's)")
    args = ap.parse_args(argv)
    for key in ("base", "aligned", "finetuned"):
        if not getattr(args, key).exists():
            print(f"sweeps.merge: --{key}: not found: {getattr(args, key)}", file=sys.stderr)
            return 2
    if args.scale < 0:
        print(f"sweeps.merge: --scale: must be >= 0, got {args.scale}", file=sys.stderr)
        return 2
    n = merge(args.base, args.aligned, args.finetuned, args.out, args.scale)
    print(f"merged {n} tensors into {args.out / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
