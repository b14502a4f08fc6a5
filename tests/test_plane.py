"""The plane through θ_aligned and two trials: Gram–Schmidt basis, projections and residuals, the fitted grid,
resume, bad input, and `python -m landscape.plane` over a study folder on the toy world."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from landscape.config import LandscapeAppConfig
from landscape.plane import fitted_axis, plane_basis, plane_command, project
from landscape.run import run_landscape
from sweeps.config import ConfigError
from tests.conftest import CACHE_DIR, PYTHON, ROOT


def _cfg(*overrides: str) -> LandscapeAppConfig:
    import landscape.__main__  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose(config_name="landscape", overrides=[f"cache_dir={CACHE_DIR}", *overrides])
    return OmegaConf.to_object(dcfg)


def test_gram_schmidt_coordinates_and_residuals_on_small_tensors() -> None:
    centre = [torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 2.0]])]  # two tensors: the scope is flattened
    a = [torch.tensor([3.0, 1.0]), torch.tensor([[0.0, 2.0]])]  # u = (2, 0 | 0, 0)
    b = [torch.tensor([2.0, 1.0]), torch.tensor([[3.0, 2.0]])]  # θ_B − θ_0 = (1, 0 | 3, 0)
    du = [x - c for x, c in zip(a, centre, strict=True)]
    db = [x - c for x, c in zip(b, centre, strict=True)]
    d1, d2, (bx, by) = plane_basis(du, db, "orthogonal")
    # b·u / u·u = 2/4; b⊥ = (0, 0 | 3, 0), ‖b⊥‖/‖u‖ = 3/2; v = b⊥ scaled to ‖u‖ = 2
    assert (bx, by) == pytest.approx((0.5, 1.5))
    assert torch.equal(d2[1], torch.tensor([[2.0, 0.0]])) and torch.equal(d2[0], torch.zeros(2))
    pa, pb = project(a, centre, d1, d2), project(b, centre, d1, d2)
    assert (pa["x"], pa["y"]) == (1.0, 0.0) and pa["residual"] == 0.0
    assert (pb["x"], pb["y"]) == pytest.approx((bx, by)) and pb["residual"] == pytest.approx(0.0, abs=1e-12)
    inside = [c + 0.3 * u - 1.2 * v for c, u, v in zip(centre, d1, d2, strict=True)]
    p = project(inside, centre, d1, d2)
    assert (p["x"], p["y"]) == pytest.approx((0.3, -1.2)) and p["residual"] == pytest.approx(0.0, abs=1e-7)
    # off the plane by 4 along the second coordinate of the first tensor: ‖θ − proj‖ = 4 of ‖θ − θ_0‖ = √(4²+…)
    off = [inside[0] + torch.tensor([0.0, 4.0]), inside[1]]
    p = project(off, centre, d1, d2)
    dist = math.sqrt(0.6**2 + 4**2 + 2.4**2)
    assert (p["x"], p["y"]) == pytest.approx((0.3, -1.2))
    assert p["off_plane"] == pytest.approx(4.0) and p["residual"] == pytest.approx(4.0 / dist)
    # the "targets" basis keeps the raw differences: θ_B at (0, 1)
    t1, t2, at = plane_basis(du, db, "targets")
    assert at == (0.0, 1.0) and project(b, centre, t1, t2)["y"] == pytest.approx(1.0)


def test_zero_and_collinear_directions_name_the_key() -> None:
    u = [torch.tensor([1.0, 2.0])]
    with pytest.raises(ConfigError, match=r"^landscape\.targets\[0\]: .*zero direction"):
        plane_basis([torch.zeros(2)], u, "orthogonal")
    with pytest.raises(ConfigError, match=r"^landscape\.targets\[1\]: .*zero direction"):
        plane_basis(u, [torch.zeros(2)], "targets")
    with pytest.raises(ConfigError, match=r"^landscape\.targets\[1\]: lies on the line"):
        plane_basis(u, [torch.tensor([-3.0, -6.0])], "orthogonal")


def test_fitted_axis_covers_the_points_and_hits_zero() -> None:
    for coords, margin, n in (([1.0, 0.4], 0.25, 9), ([1.0, -0.7], 0.1, 3), ([1.0, 2.6], 0.0, 5), ([0.0, 1.5], 0.2, 4)):
        values = fitted_axis(coords, margin, n)
        lo, hi = min(0, *coords), max(0, *coords)
        ext = hi - lo
        assert len(values) == n and 0.0 in values.tolist()
        assert values.min() <= lo - margin * ext + 1e-12 and values.max() >= hi + margin * ext - 1e-12, coords


def _save(tensors: dict[str, torch.Tensor], path: Path, metrics: dict | None = None) -> str:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(path))
    if metrics is not None:
        (path.parent.parent / "metrics.json").write_text(json.dumps({"status": "completed", **metrics}))
    return str(path)


def _trials(root: Path, toy_root: Path) -> dict[str, str]:
    """A toy study folder: SFT and DER runs (seed 0) define the plane; a poisoned SFT run sits at
    θ_0 + 0.4 u + 0.5 v' (in the plane) and an EWC run off it. Trial files hold only some tensors, like a run's."""
    from transformers import AutoModelForCausalLM

    aligned = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(toy_root / "aligned").named_parameters()}
    names = [n for n in aligned if aligned[n].dim() == 2 and "layers" in n][:4]
    g = torch.Generator().manual_seed(0)
    noise = [{n: 0.02 * torch.randn(aligned[n].shape, generator=g) for n in names} for _ in range(3)]
    sft = {n: aligned[n] + noise[0][n] for n in names}
    der = {n: aligned[n] + 0.5 * noise[0][n] + noise[1][n] for n in names}
    mix = {n: aligned[n] + 0.4 * noise[0][n] + 0.5 * (der[n] - aligned[n]) for n in names}
    off = {n: aligned[n] + 0.2 * noise[0][n] + noise[2][n] for n in names}
    der_method = [{"name": "der", "target": "sweeps.methods.DER", "args": {"lam": 0.5}}]
    ewc = [{"name": "ewc", "target": "sweeps.methods.EWC", "args": {}}]
    return {"sft": _save(sft, root / "sft" / "seed_0" / "weights" / "eval.safetensors", {"methods": []}),
            "der": _save(der, root / "der" / "seed_0" / "weights" / "eval.safetensors", {"methods": der_method}),
            "poisoned": _save(mix, root / "sft_p01" / "seed_0" / "weights" / "eval.safetensors",
                              {"methods": [], "data/mix/poison": 100}),
            "ewc": _save(off, root / "ewc" / "seed_1" / "weights" / "eval.safetensors", {"methods": ewc})}  # fmt: skip


def test_plane_run_projects_trials_resumes_and_origin_is_exact(tmp_path, toy_root, aligned) -> None:
    from sweeps.formatting import PromptFormatter
    from sweeps.resolve import load_data
    from sweeps.scoring.scorer import Scorer
    from sweeps.toyworld import World, WorldConfig

    w = _trials(tmp_path / "study", toy_root)
    args = ["landscape.mode=plane", "landscape.basis=orthogonal", "landscape.margin=0.2", "landscape.points=3",
            f"landscape.targets=[{w['sft']},{w['der']}]", f"landscape.overlay=[{w['poisoned']},{w['ewc']}]",
            "landscape.metrics=[safety_loss]", "data.refusal.limit=24"]  # fmt: skip
    part = run_landscape(_cfg(*args, "landscape.max_points=4"), tmp_path / "ls", progress=False)
    assert not part["complete"] and part["points"] == 4
    done_before = (tmp_path / "ls" / "points.0.jsonl").read_text()
    full = run_landscape(_cfg(*args), tmp_path / "ls", progress=False)
    assert full["complete"]
    manifest = json.loads((tmp_path / "ls" / "manifest.json").read_text())
    assert manifest["points_computed_now"] == 5  # the 4 done points are not computed again
    assert (tmp_path / "ls" / "points.0.jsonl").read_text().startswith(done_before)
    assert abs(manifest["cosines"][0]["after"]) < 1e-6
    a, b = manifest["plane"]["points"]
    assert (a["label"], b["label"], a["seed"]) == ("SFT", "DER λ=0.5", 0) and (a["x"], a["y"]) == (1.0, 0.0)
    grid = manifest["grid"]
    for x, y in ((0, 0), (1, 0), (b["x"], b["y"])):  # the fitted grid covers the three points
        assert min(grid["x"]) < x < max(grid["x"]) or (x == 0 and 0.0 in grid["x"])
        assert min(grid["y"]) < y < max(grid["y"]) or (y == 0 and 0.0 in grid["y"])
    poisoned, ewc = manifest["overlay"]
    assert poisoned["poisoned"] and poisoned["label"] == "SFT" and not ewc["poisoned"] and ewc["label"] == "EWC λ=100"
    # the poisoned run is 0.4 u + 0.5 (θ_DER − θ_0) = (0.4 + 0.5 b_x, 0.5 b_y), in the plane
    assert (poisoned["x"], poisoned["y"]) == pytest.approx((0.4 + 0.5 * b["x"], 0.5 * b["y"]), abs=1e-4)
    assert poisoned["residual"] < 1e-4 and 0.5 < ewc["residual"] < 1  # fresh noise: mostly off the plane

    table = pd.read_csv(tmp_path / "ls" / "points.csv")
    model, tok = aligned
    cfg = _cfg(*args)
    _, sets = load_data(cfg.data, World(WorldConfig()))
    assert len(sets.refusal) == 24
    direct = Scorer(tok, PromptFormatter(tok), sets, cfg.eval, max_length=64).score(model, ["safety_loss"])
    assert table[(table.x == 0) & (table.y == 0)].safety_loss.iloc[0] == direct.metrics["safety_loss"]

    # the same settings over other weights at the same paths: another grid, refused instead of mixed in
    from safetensors.torch import load_file, save_file

    der = load_file(w["der"])
    save_file({n: 2 * t for n, t in der.items()}, w["der"])
    with pytest.raises(ConfigError, match="another grid"):
        run_landscape(_cfg(*args), tmp_path / "ls", progress=False)


def test_bad_plane_inputs_are_one_line_naming_the_key(tmp_path, toy_root) -> None:
    from transformers import AutoModelForCausalLM

    w = _trials(tmp_path / "study", toy_root)
    aligned = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(toy_root / "aligned").named_parameters()}
    name = next(n for n in aligned if aligned[n].dim() == 2)
    same = _save({name: aligned[name]}, tmp_path / "same.safetensors")
    wrong = _save({name: aligned[name][:2]}, tmp_path / "wrong.safetensors")
    base = ["landscape.mode=plane", "landscape.basis=orthogonal", "landscape.margin=0.2", "landscape.points=3",
            "landscape.metrics=[safety_loss]", "data.refusal.limit=8"]  # fmt: skip
    cases = {
        f"landscape.targets=[{same},{w['der']}]": r"^landscape\.targets\[0\]: .*zero direction",
        f"landscape.targets=[{w['sft']},{wrong}]": rf"^landscape\.targets\[1\]: {wrong}: tensor '.*' has shape",
        f"landscape.overlay=[{wrong}]": r"^landscape\.overlay\[0\]: .* has shape",
        f"landscape.targets=[{w['sft']},{tmp_path / 'nope.safetensors'}]": r"landscape\.targets\[1\]: weights file "
                                                                            r"not found",
    }  # fmt: skip
    for override, message in cases.items():
        extra = [] if override.startswith("landscape.targets") else [f"landscape.targets=[{w['sft']},{w['der']}]"]
        with pytest.raises(ConfigError, match=message) as err:
            run_landscape(_cfg(*base, *extra, override), tmp_path / "bad", progress=False)
        assert "\n" not in str(err.value).removeprefix("invalid config:\n  "), override
    assert not list((tmp_path / "bad").glob("points.*")) if (tmp_path / "bad").exists() else True
    with pytest.raises(ConfigError, match=r"landscape\.basis: only for mode=plane"):
        run_landscape(_cfg("landscape.basis=orthogonal"), tmp_path / "bad2", progress=False)


def test_study_folder_command_picks_sft_and_der_and_draws_the_plane(tmp_path, toy_root) -> None:
    root = tmp_path / "study"
    w = _trials(root, toy_root)
    (root / "lwf" / "seed_0").mkdir(parents=True)  # a run without weights: noted, left out
    (root / "lwf" / "seed_0" / "metrics.json").write_text(json.dumps({"status": "completed", "methods": []}))
    cmd, notes = plane_command(root)
    assert f"landscape.targets=[{w['sft']},{w['der']}]" in cmd
    assert f"landscape.overlay=[{w['poisoned']},{w['ewc']}]" in cmd  # by (seed, row)
    assert len(notes) == 1 and "lwf" in notes[0]
    with pytest.raises(ConfigError, match=r"^--b: no completed full-weight run of row or method 'magmax'"):
        plane_command(root, b="magmax")
    with pytest.raises(ConfigError, match=r"^--a: .*lwf/seed_0 has no weights/eval\.safetensors; .*save_eval_weights"):
        plane_command(root, a="lwf")

    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([PYTHON, "-m", "landscape.plane", str(root), "--", f"cache_dir={CACHE_DIR}",
                           "landscape.points=3", "landscape.metrics=[safety_loss]", "data.refusal.limit=8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "landscape_plane"
    assert (out / "landscape_plane.png").stat().st_size > 0 and (out / "landscape_2d.png").stat().st_size > 0
    assert "SFT s0 poisoned (off 0.00)" in proc.stdout and "EWC λ=100 s1 (off 0.9" in proc.stdout
    assert set(pd.read_csv(out / "points.csv").columns) >= {"x", "y", "safety_loss"}

    bad = subprocess.run([PYTHON, "-m", "landscape.plane", str(tmp_path / "missing")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "study folder not found" in bad.stderr
