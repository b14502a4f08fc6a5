"""The plane through θ_aligned and two trials, and where every other trial lies on it.

Orthogonal basis (`landscape.basis=orthogonal`), over the flattened perturbed scope in fp32 (sums in fp64):
    u = θ_A − θ_0,   v = b⊥ · ‖u‖/‖b⊥‖  with  b⊥ = (θ_B − θ_0) − ((θ_B − θ_0)·u / u·u) u
so θ_A sits at (1, 0), θ_B at (b·u / u·u, ‖b⊥‖/‖u‖), and both axes are in units of ‖u‖: the figure's distances
and angles are the weight space's. A further trial θ is drawn at its least-squares coordinates with the residual
‖θ − proj(θ)‖ / ‖θ − θ_0‖ beside it (0: in the plane; 1: orthogonal to it).

`python -m landscape.plane <study out> [-- landscape overrides]` runs this plane over an `analysis.study` folder
(`<out>/<row>/seed_<k>/weights/eval.safetensors`, written with `output.save_eval_weights=true`): the first seed's
SFT and DER runs define it, every other run with weights is projected onto it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape import directions as D
from sweeps.config import ConfigError

BASES = ("targets", "orthogonal")
COLLINEAR = 1e-6  # ‖b⊥‖/‖b‖ below this: θ_B lies on the line through θ_0 and θ_A (no plane)


def plane_basis(da: Sequence[torch.Tensor], db: Sequence[torch.Tensor], basis: str,
                keys: tuple[str, str] = ("landscape.targets[0]", "landscape.targets[1]"),
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[float, float]]:  # fmt: skip
    """(d1, d2, coordinates of θ_B) from the two differences θ_A − θ_0 and θ_B − θ_0.

    basis "targets": d1, d2 are the differences themselves (θ_B at (0, 1)); "orthogonal": Gram–Schmidt as in the
    module docstring. Either way a zero or collinear direction is one ConfigError naming the key.
    """
    if basis not in BASES:
        raise ConfigError(f"landscape.basis: '{basis}' is not one of {list(BASES)}")
    u = [x.float() for x in da]
    b = [x.float() for x in db]
    nu, nb = D.norm(u), D.norm(b)
    if nu == 0:
        raise ConfigError(f"{keys[0]}: these weights equal the centre (θ_aligned) in the perturbed scope: a zero "
                          "direction spans no plane")  # fmt: skip
    if nb == 0:
        raise ConfigError(f"{keys[1]}: these weights equal the centre (θ_aligned) in the perturbed scope: a zero "
                          "direction spans no plane")  # fmt: skip
    coef = D.dot(u, b) / D.dot(u, u)
    perp = [y - coef * x for x, y in zip(u, b, strict=True)]
    npp = D.norm(perp)
    if npp <= COLLINEAR * nb:
        raise ConfigError(f"{keys[1]}: lies on the line through the centre and {keys[0]} (‖b⊥‖/‖b‖ = {npp / nb:.1e})"
                          ": the two directions span no plane")  # fmt: skip
    if basis == "targets":
        return list(da), list(db), (0.0, 1.0)
    v = [(t * (nu / npp)).to(x.dtype) for t, x in zip(perp, da, strict=True)]  # back to the weights' dtype
    return [t.to(x.dtype) for t, x in zip(u, da, strict=True)], v, (float(coef), npp / nu)


def project(point: Sequence[torch.Tensor], centre: Sequence[torch.Tensor], d1: Sequence[torch.Tensor],
            d2: Sequence[torch.Tensor]) -> dict[str, float]:  # fmt: skip
    """Least-squares (x, y) of point − centre in span{d1, d2} (fp32 tensors, fp64 sums), the residual distance
    ‖θ − proj‖ (`off_plane`), and that relative to ‖θ − θ_0‖ (`residual`)."""
    diff = [(p.float() - c.float()) for p, c in zip(point, centre, strict=True)]
    f1, f2 = [x.float() for x in d1], [x.float() for x in d2]
    gram = np.array([[D.dot(f1, f1), D.dot(f1, f2)], [D.dot(f2, f1), D.dot(f2, f2)]])
    a, b = np.linalg.solve(gram, np.array([D.dot(f1, diff), D.dot(f2, diff)]))
    resid = D.norm([x - a * p - b * q for x, p, q in zip(diff, f1, f2, strict=True)])
    dist = D.norm(diff)
    return {"x": float(a), "y": float(b), "off_plane": resid, "distance": dist, "residual": resid / max(dist, 1e-30)}


def fitted_axis(coords: Sequence[float], margin: float, n: int) -> np.ndarray:
    """n evenly spaced values covering 0 and every coordinate with `margin` × their extent on each side; 0 is a
    grid value exactly (the centre is computed, not interpolated)."""
    lo, hi = min(0.0, *coords), max(0.0, *coords)
    ext = hi - lo
    lo, hi = lo - margin * ext, hi + margin * ext
    step = (hi - lo) / (n - 2)  # one spare step: shifting the grid so 0 is on it still covers [lo, hi]
    k = math.ceil(-lo / step - 1e-12)
    values = step * (np.arange(n) - k)
    values[k] = 0.0
    near = np.abs(values - 1.0) < 1e-9
    values[near] = 1.0
    return values


def trial_info(spec: str) -> dict[str, Any]:
    """Label, poison and seed of a trial's weights file from its run dir (`<run>/weights/eval.safetensors`, with
    `<run>/metrics.json`); a file outside a run dir is labelled by its name."""
    from landscape.plots import short_label

    path = Path(spec)
    run = path.parent.parent if path.parent.name == "weights" else path.parent
    info: dict[str, Any] = {"label": short_label(spec), "poisoned": False, "poison": 0}
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {**info, "label": run.name if path.parent.name == "weights" else info["label"]}
    from analysis.load import methods_label

    label = methods_label(metrics.get("methods") or [])
    poison = float(metrics.get("data/mix/poison") or metrics.get("n_poison") or 0)
    seed = re.fullmatch(r"seed_(\d+)", run.name)
    row = run.parent.name if seed else run.name
    info.update(label=label, poison=poison, poisoned=poison > 0, row=row, asr=metrics.get("asr"),
                utility_acc=metrics.get("utility_acc"))  # fmt: skip
    if seed:
        info["seed"] = int(seed.group(1))
    return info


# ---------------------------------------------------------------------------------------------------------------
# python -m landscape.plane <study out>: the plane of an analysis.study folder


def study_runs(root: Path) -> list[dict[str, Any]]:
    """Every completed run `<root>/<row>/seed_<k>/` with its weights path (or None) and labels, by (seed, row)."""
    runs = []
    for metrics_path in sorted(root.glob("*/seed_*/metrics.json")):
        run = metrics_path.parent
        seed = re.fullmatch(r"seed_(\d+)", run.name)
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if seed is None or metrics.get("status") != "completed":
            continue
        weights = run / "weights" / "eval.safetensors"
        from analysis.load import methods_label

        runs.append({"row": run.parent.name, "seed": int(seed.group(1)), "run": run,
                     "weights": weights if weights.is_file() else None,
                     "label": methods_label(metrics.get("methods") or []),
                     "lora": _is_adapter(weights)})  # fmt: skip
    return sorted(runs, key=lambda r: (r["seed"], r["row"]))


def _is_adapter(weights: Path) -> bool:
    """A LoRA trial's weights file holds adapters, not the model's tensors: it has no place in the model's plane."""
    if not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return any("lora_" in k for k in f.keys())  # noqa: SIM118 (safe_open has no __iter__)


def pick(runs: Sequence[dict[str, Any]], want: str, flag: str) -> dict[str, Any]:
    """The first seed's run of row `want`, else the first seed's run whose method label is `want`."""
    for match in (lambda r: r["row"] == want, lambda r: r["label"] == want):
        found = [r for r in runs if match(r) and not r["lora"]]
        if found:
            return found[0]
    rows = sorted({r["row"] for r in runs})
    raise ConfigError(f"{flag}: no completed full-weight run of row or method '{want}' (rows: {rows or 'none'})")


def plane_command(root: Path, a: str = "sft", b: str = "der", out: Path | None = None,
                  extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:  # fmt: skip
    """The `python -m landscape` command of a study folder's plane, and notes on the runs left out."""
    if not root.is_dir():
        raise ConfigError(f"study folder not found: {root}")
    runs = study_runs(root)
    first, second = pick(runs, a, "--a"), pick(runs, b, "--b")
    for r, flag in ((first, "--a"), (second, "--b")):
        if r["weights"] is None:
            raise ConfigError(f"{flag}: {r['run']} has no weights/eval.safetensors; run the study with "
                              "output.save_eval_weights=true in its `overrides` (into a new --out: finished runs "
                              "are not rerun)")  # fmt: skip
    notes, overlay = [], []
    for r in runs:
        if r is first or r is second:
            continue
        if r["weights"] is None:
            notes.append(f"{r['run']}: no weights/eval.safetensors (output.save_eval_weights=true keeps them)")
        elif r["lora"]:
            notes.append(f"{r['run']}: LoRA adapters, not the model's weights: left off the plane")
        else:
            overlay.append(str(r["weights"]))
    out = out or root / "landscape_plane"
    cmd = [sys.executable, "-m", "landscape", f"hydra.run.dir={out}", "landscape.mode=plane",
           "landscape.basis=orthogonal", "landscape.margin=0.25", "landscape.points=9",
           "landscape.metrics=[safety_loss,asr]", f"landscape.targets=[{first['weights']},{second['weights']}]",
           f"landscape.overlay=[{','.join(overlay)}]", *extra]  # fmt: skip
    return cmd, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landscape.plane",
                                     description="The landscape plane through θ_aligned and two runs of a study "
                                                 "folder, every other run projected onto it.")  # fmt: skip
    parser.add_argument("study", type=Path, help="an analysis.study output folder (<out>/<row>/seed_<k>/)")
    parser.add_argument("--a", default="sft", help="row name or method label of the (1, 0) run (default: sft)")
    parser.add_argument("--b", default="der", help="row name or method label of the plane's second run (der)")
    parser.add_argument("--out", type=Path, help="the landscape's folder (default <study>/landscape_plane)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("overrides", nargs="*", help="after --: more `python -m landscape` overrides")
    args = parser.parse_args(argv)
    try:
        cmd, notes = plane_command(args.study, args.a, args.b, args.out, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(" ".join(cmd), flush=True)
    return 0 if args.dry_run else subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
