"""Landscapes: direction definitions, exact points, restore guarantees, resume identity, a small end-to-end run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from landscape import directions as D
from landscape.config import LandscapeAppConfig
from landscape.perturb import Perturbation, checksum
from landscape.run import axis, project, run_landscape
from landscape.summaries import crossing, hessian_top, top_hessian_eigenvalue, visage
from sweeps.config import ConfigError
from sweeps.stats import mean_ci
from tests.conftest import CACHE_DIR, PYTHON, ROOT

CONF = ROOT / "conf"


def _cfg(*overrides: str) -> LandscapeAppConfig:
    import landscape.__main__  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        dcfg = compose(config_name="landscape", overrides=[f"cache_dir={CACHE_DIR}", *overrides])
    return OmegaConf.to_object(dcfg)


def test_normalisations_on_small_tensors() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    f = D.normalise(d, w, "filter")
    torch.testing.assert_close(f.norm(dim=1), w.norm(dim=1))  # each row scaled to its filter's norm
    torch.testing.assert_close(f[0] / f[0].norm(), d[0] / d[0].norm())  # direction kept
    lay = D.normalise(d, w, "layer")
    torch.testing.assert_close(lay.norm(), w.norm())
    torch.testing.assert_close(lay / lay.norm(), d / d.norm())
    assert torch.equal(D.normalise(d, w, "none"), d)
    b = torch.tensor([1.0, 2.0, 2.0])
    torch.testing.assert_close(D.normalise(torch.ones(3), b, "filter").norm(), b.norm())  # 1-D: one filter


def test_directions_are_seeded_by_name_and_orthogonalised(aligned) -> None:
    model, _ = aligned
    params = D.select_parameters(model, D.Scope())
    assert not any("norm" in n or "bias" in n for n, _ in params)
    assert any("embed" in n for n, _ in params)
    d1 = D.random_direction(params, 0, "filter")
    again = D.random_direction(params[1:], 0, "filter")  # dropping a tensor does not change the others
    for x, y in zip(d1[1:], again, strict=True):
        assert torch.equal(x, y)
    d2 = D.orthogonalise(d1, D.random_direction(params, 1, "filter"))
    assert abs(D.cosine(d1, d2)) < 1e-6
    no_embed = D.select_parameters(model, D.Scope(embeddings=False))
    assert not any("embed" in n for n, _ in no_embed)
    with pytest.raises(ValueError, match="no parameters"):
        D.select_parameters(model, D.Scope(lora_only=True))


def test_point_is_exact_and_weights_restore_on_exit_and_error(aligned) -> None:
    model, _ = aligned
    params = D.select_parameters(model, D.Scope())
    d1 = D.random_direction(params, 0, "layer")
    d2 = D.random_direction(params, 1, "layer")
    centre = [p.detach().clone() for _, p in params]
    before = checksum(model)
    with Perturbation(params, [d1, d2]) as pert:
        pert.set(0.3, -0.2)
        pert.set(-0.1, 0.4)  # from scratch: no drift from the previous point
        for (_, p), c, a, b in zip(params, centre, d1, d2, strict=True):
            torch.testing.assert_close(p.detach(), c + -0.1 * a + 0.4 * b)
    assert checksum(model) == before
    flags = [p.requires_grad for _, p in params]
    with pytest.raises(RuntimeError, match="boom"), Perturbation(params, [d1, d2]) as pert:
        pert.set(1.0, 1.0)
        for _, p in params:
            p.requires_grad_(False)
        raise RuntimeError("boom")
    assert checksum(model) == before
    assert [p.requires_grad for _, p in params] == flags
    with pytest.raises(KeyboardInterrupt), Perturbation(params, [d1, d2]) as pert:  # Ctrl-C mid-point
        pert.set(-0.4, 0.2)
        raise KeyboardInterrupt
    assert checksum(model) == before


def test_axis_contains_origin_exactly() -> None:
    xs = axis(-0.5, 0.5, 21)
    assert xs[10] == 0.0 and xs[0] == -0.5 and xs[-1] == 0.5
    ys = axis(-0.5, 1.5, 9)
    assert 0.0 in ys and 1.0 in ys


def test_interpolate_and_plane_grids_that_miss_the_origin_are_rejected_up_front() -> None:
    from landscape.config import hits_origin, validate_landscape

    assert hits_origin(-0.5, 1.5, 9) and hits_origin(-0.5, 0.5, 4) is False and hits_origin(-0.5, 1.0, 4)
    # the defaults (11 points on [-0.5, 1.5]) put α=0 between two points: named key, valid counts suggested
    with pytest.raises(ConfigError, match=r"landscape\.points: 11 points .* miss the origin.*\[5, 9, 13, 17\]"):
        validate_landscape(_cfg("landscape.mode=interpolate", "landscape.targets=[toy:base]"))
    validate_landscape(_cfg("landscape.mode=interpolate", "landscape.targets=[toy:base]", "landscape.points=9"))
    with pytest.raises(ConfigError, match=r"landscape\.scope\.exclude: '\(norm' is not a valid regex"):
        validate_landscape(_cfg("landscape.scope.exclude='(norm'"))


def test_summaries_on_known_curves() -> None:
    alphas = np.linspace(-1, 1, 21)
    values = alphas**2  # crosses 0.25 at |α| = 0.5
    lo, hi = crossing(alphas, values, 0.25)
    assert lo == pytest.approx(0.5, abs=0.02) and hi == pytest.approx(0.5, abs=0.02)
    assert crossing(alphas, values, 10.0) == (float("inf"), float("inf"))
    assert visage(np.array([100.0, 40.0, 0.0, 60.0, 100.0]), 100.0) == pytest.approx((60 + 100 + 40) / 3)
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)  # t(0.975, df=2)
    # power iteration on a quadratic with a known Hessian diag(3, 1)
    x = torch.tensor([0.5, -0.2], requires_grad=True)
    eig = top_hessian_eigenvalue(lambda: 1.5 * x[0] ** 2 + 0.5 * x[1] ** 2, [x], iters=50)
    assert eig == pytest.approx(3.0, rel=1e-3)
    # a saddle, Hessian diag(3, −5): the largest magnitude is −5, the top of the spectrum 3
    eigs = hessian_top(lambda: 1.5 * x[0] ** 2 - 2.5 * x[1] ** 2, [x], iters=200)
    assert eigs["largest_magnitude"] == pytest.approx(-5.0, rel=1e-3) and eigs["top"] == pytest.approx(3.0, rel=1e-3)


def test_mean_ci_is_student_t_and_honest_for_one_value() -> None:
    from scipy import stats as sps

    two = mean_ci([0.3, 0.5])  # two directions: df = 1
    half = sps.t.ppf(0.975, 1) * np.std([0.3, 0.5], ddof=1) / np.sqrt(2)
    assert two.n == 2 and two.mean == pytest.approx(0.4) and two.half == pytest.approx(half)
    assert (two.lo, two.hi) == pytest.approx((0.4 - half, 0.4 + half))
    z_half = 1.96 * np.std([0.3, 0.5], ddof=1) / np.sqrt(2)  # the old normal interval
    assert two.half / z_half == pytest.approx(12.7062 / 1.96, rel=1e-4)  # ≈ 6.5× wider
    one = mean_ci([0.7, float("nan"), float("inf")])  # non-finite values are dropped and not counted
    assert one.n == 1 and one.mean == 0.7 and np.isnan(one.half) and np.isnan(one.std)
    assert np.isnan(mean_ci([]).mean) and mean_ci([]).n == 0


def test_non_finite_points_end_the_basin_and_are_counted() -> None:
    from landscape.config import LandscapeSettings
    from landscape.run import summarise

    a = np.linspace(-1, 1, 11).round(10)
    flat = np.zeros(11)
    assert crossing(a, flat, 0.5) == (np.inf, np.inf)
    for bad in (np.nan, np.inf, -np.inf):
        v = flat.copy()
        v[8] = bad  # at α = 0.6: the basin ends at the last finite point before it, 0.4
        assert crossing(a, v, 0.5) == pytest.approx((np.inf, 0.4))
    v = flat.copy()
    v[5] = np.nan
    assert crossing(a, v, 0.5) == (0.0, 0.0)  # a diverged centre: no basin
    assert visage(np.array([0.0, -np.inf, np.nan, 0.2]), 1.0) == pytest.approx((1.0 + 0.8) / 2)
    rows = [{"repeat": 0, "x": x, "y": 0.0, "safety_loss": (np.nan if x == 0.6 else 0.0), "utility_acc": 0.8}
            for x in a]  # fmt: skip
    out = summarise(pd.DataFrame(rows), LandscapeSettings(metrics=["safety_loss", "utility_acc"], tolerance=0.5),
                    dims=1)  # fmt: skip
    radius = out["safety_loss"]["radius"]
    assert radius["values"] == pytest.approx([0.4]) and radius["censored"] == 0  # not "never crossing"
    assert out["safety_loss"]["non_finite"] == 1 and out["utility_acc"]["non_finite"] == 0
    assert radius["ci95"] is None  # one direction: no interval, not a zero-width one


def test_basin_radius_counts_directions_that_never_cross_at_the_grid_edge() -> None:
    from landscape.config import LandscapeSettings
    from landscape.run import summarise

    xs = np.linspace(-1, 1, 11).round(10)
    rows = []
    for r, slope in enumerate((1.0, 0.1)):  # repeat 0 crosses centre + 0.5 at |α| = 0.5; repeat 1 never does
        rows += [{"repeat": r, "x": x, "y": 0.0, "safety_loss": slope * abs(x), "utility_acc": 0.8 - 0.6 * abs(x)}
                 for x in xs]  # fmt: skip
    table = pd.DataFrame(rows)
    s = LandscapeSettings(metrics=["safety_loss", "utility_acc"], tolerance=0.5, repeats=2)
    out = summarise(table, s, dims=1)
    radius = out["safety_loss"]["radius"]
    assert radius["values"] == pytest.approx([0.5, 1.0]) and radius["censored"] == 1  # at least 1.0: the edge
    assert radius["mean"] == pytest.approx(0.75)
    # higher is better: the basin keeps half the centre's accuracy (0.4), reached at |α| = 2/3 in both repeats
    acc = out["utility_acc"]
    assert acc["threshold"] == pytest.approx(0.4) and acc["inside"] == "above"
    assert acc["radius"]["values"] == pytest.approx([2 / 3, 2 / 3], abs=1e-9) and acc["radius"]["censored"] == 0
    assert acc["visage"][0] > 0


def test_projection_recovers_plane_coordinates() -> None:
    c = [torch.zeros(3)]
    d1, d2 = [torch.tensor([1.0, 0.0, 0.0])], [torch.tensor([1.0, 1.0, 0.0])]
    a, b, resid = project([torch.tensor([2.5, 1.0, 0.0])], c, d1, d2)
    assert (a, b) == pytest.approx((1.5, 1.0)) and resid == pytest.approx(0.0, abs=1e-9)


def test_origin_reproduces_centre_metrics_and_resume_is_identical(tmp_path, toy_root, aligned) -> None:
    from sweeps.config import EvalConfig
    from sweeps.formatting import PromptFormatter
    from sweeps.scoring.scorer import EvalSets, Scorer
    from sweeps.toyworld import World, WorldConfig, toy_examples

    args = ["landscape.points=5", "landscape.radius=0.3", "landscape.metrics=[safety_loss,utility_loss,asr]",
            "landscape.asr_limit=12"]  # fmt: skip
    full = run_landscape(_cfg(*args), tmp_path / "full", progress=False)
    assert full["complete"]
    part = run_landscape(_cfg(*args, "landscape.max_points=7"), tmp_path / "resumed", progress=False)
    assert not part["complete"] and part["points"] == 7
    store = tmp_path / "resumed" / "points.0.jsonl"  # killed while writing the 7th point: half a line, no newline
    text = store.read_text()
    store.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    with pytest.raises(ConfigError, match=r"other settings \(landscape\.radius\)"):
        run_landscape(_cfg(*args[:1], "landscape.radius=0.4", *args[2:]), tmp_path / "resumed", progress=False)
    again = run_landscape(_cfg(*args), tmp_path / "resumed", progress=False)
    assert again["complete"]
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["points_computed_now"] == 25 - 6  # only the missing points, the cut one among them
    assert all(json.loads(line) for line in store.read_text().splitlines())  # no line glued to the cut one
    a, b = pd.read_csv(tmp_path / "full" / "points.csv"), pd.read_csv(tmp_path / "resumed" / "points.csv")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 25 and set(a.columns) >= {"x", "y", "safety_loss", "utility_loss", "asr"}

    model, tok = aligned
    world = World(WorldConfig())
    sets = EvalSets(refusal=toy_examples("refusal", world), utility=toy_examples("user_eval", world),
                    harmful=toy_examples("harmful", world))  # fmt: skip
    eval_cfg = EvalConfig()
    eval_cfg.asr.limit = 12
    direct = Scorer(tok, PromptFormatter(tok), sets, eval_cfg, max_length=64).score(
        model, ["safety_loss", "utility_loss", "asr"]).metrics  # fmt: skip
    origin = a[(a.x == 0) & (a.y == 0)].iloc[0]
    for m in ("safety_loss", "utility_loss", "asr"):
        assert origin[m] == pytest.approx(direct[m], rel=1e-6)
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert abs(manifest["cosines"][0]["after"]) < 1e-6
    assert manifest["excluded"] and all("norm" in n or "bias" in n for n in manifest["excluded"])


def test_drafts_change_no_verdict_and_come_from_the_nearest_point(tmp_path, toy_root) -> None:
    from landscape.run import DraftBook

    # radius 0.75: an Intel-built toy world's safety basin is wider than an AMD-built one's (worlds differ by the CPU
    # that built them); at 0.5 every point but one refused there, at 0.75 the ends comply (ASR 0.2 and 0.6)
    args = ["landscape.dims=1", "landscape.points=11", "landscape.radius=0.75", "landscape.metrics=[asr]",
            "landscape.asr_limit=40"]  # fmt: skip
    run_landscape(_cfg(*args), tmp_path / "drafts", progress=False)
    run_landscape(_cfg(*args, "landscape.draft_rounds=0"), tmp_path / "plain", progress=False)
    a, b = pd.read_csv(tmp_path / "drafts" / "points.csv"), pd.read_csv(tmp_path / "plain" / "points.csv")
    pd.testing.assert_frame_equal(a, b)
    # verdicts must differ between points (some flip from refusal to compliance), so drafts get rejected somewhere
    assert a.asr.min() == 0 and a.asr.max() >= 0.1, "test needs points that refuse and points that comply"
    share = [json.loads((tmp_path / d / "manifest.json").read_text())["drafted_share"] for d in ("drafts", "plain")]
    assert share[0] > 0.15 and share[1] == 0  # 0.65 on an AMD world at radius 0.5, 0.38 on an Intel one at 0.75

    book = DraftBook(keep=2)
    book.add(0, 0.0, 0.0, {"harmful": [[1]]})
    book.add(0, 0.1, 0.0, {"harmful": [[2]]})
    book.add(1, 0.2, 0.0, {"harmful": [[3]]})  # over `keep`: the oldest point is dropped
    assert book.nearest(0, 0.3, 0.0) == {"harmful": [[2]]} and book.nearest(0, -0.1, 0.0) == {"harmful": [[2]]}
    assert book.nearest(1, 0.0, 0.0) == {"harmful": [[3]]} and book.nearest(2, 0.0, 0.0) is None


@pytest.mark.slow
def test_cli_2d_run_writes_table_manifest_and_figures(tmp_path, toy_root) -> None:
    out = tmp_path / "ls"
    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR)}
    proc = subprocess.run(
        [PYTHON, "-m", "landscape", f"hydra.run.dir={out}", "landscape.points=5", "landscape.surface3d=true",
         "landscape.hessian=true", "landscape.hessian_iters=5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "basin radius" in proc.stdout
    for name in ("points.csv", "manifest.json", "config.yaml", "landscape_2d.pdf", "landscape_2d.png",
                 "landscape_3d.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["summaries"]) == {"safety_loss", "utility_loss"}
    hessian = manifest["hessian"]
    assert set(hessian) == {"safety_loss", "utility_loss"}
    assert all(np.isfinite(e["largest_magnitude"]) and e["top"] >= min(0.0, e["largest_magnitude"])
               for e in hessian.values())  # fmt: skip

    one_d = tmp_path / "ls1"
    proc = subprocess.run(
        [PYTHON, "-m", "landscape", f"hydra.run.dir={one_d}", "landscape.dims=1", "landscape.points=7",
         "landscape.repeats=3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (one_d / "landscape_1d.png").stat().st_size > 0
    assert json.loads((one_d / "manifest.json").read_text())["summaries"]["safety_loss"]["radius"]["n"] == 3

    bad = subprocess.run([PYTHON, "-m", "landscape", f"hydra.run.dir={tmp_path / 'bad'}", "landscape.mode=plane"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "landscape.targets" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad" / "config.yaml").exists()  # nothing written for a rejected config


def test_interpolation_between_aligned_and_base(tmp_path, toy_root) -> None:
    cfg = _cfg("landscape.mode=interpolate", "landscape.targets=[toy:base]", "landscape.points=5",
               "landscape.span=[-0.5,1.5]", "landscape.metrics=[safety_loss]")  # fmt: skip
    result = run_landscape(cfg, tmp_path, progress=False)
    table = pd.read_csv(tmp_path / "points.csv")
    assert set(table.x) == {-0.5, 0.0, 0.5, 1.0, 1.5}
    at = dict(zip(table.x, table.safety_loss, strict=True))
    assert at[1.0] > at[0.0]  # θ_base refuses less than θ_aligned
    assert result["complete"]
    assert Path(tmp_path / "manifest.json").exists()
    # centred on another model's weights: the origin is that model (θ_base, the interpolation's α = 1)
    run_landscape(_cfg("landscape.centre_weights=toy:base", "landscape.dims=1", "landscape.points=3",
                       "landscape.metrics=[safety_loss]"), tmp_path / "at_base", progress=False)  # fmt: skip
    around_base = pd.read_csv(tmp_path / "at_base" / "points.csv")
    assert float(around_base[around_base.x == 0].safety_loss.iloc[0]) == pytest.approx(at[1.0], rel=1e-5)


def test_plane_projection_overlay_and_split_workers(tmp_path, toy_root) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    aligned = dict(AutoModelForCausalLM.from_pretrained(toy_root / "aligned").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(toy_root / "base").named_parameters())
    torch.manual_seed(0)
    third = {n: (p + 0.01 * torch.randn_like(p)).detach().contiguous() for n, p in aligned.items()}
    save_file(third, str(tmp_path / "c.safetensors"))
    # a point at aligned + 0.3·(base − aligned) + 0.6·(third − aligned)
    mix = {n: (aligned[n] + 0.3 * (base[n] - aligned[n]) + 0.6 * (third[n] - aligned[n])).detach().contiguous()
           for n in aligned}  # fmt: skip
    (tmp_path / "t" / "weights").mkdir(parents=True)
    save_file(mix, str(tmp_path / "t" / "weights" / "eval.safetensors"))
    args = ["landscape.mode=plane", f"landscape.targets=[toy:base,{tmp_path / 'c.safetensors'}]",
            f"landscape.overlay=[{tmp_path / 't' / 'weights' / 'eval.safetensors'}]", "landscape.points=4",
            "landscape.span=[-0.5,1.0]", "landscape.metrics=[safety_loss]"]  # fmt: skip
    whole = run_landscape(_cfg(*args), tmp_path / "whole", progress=False)
    manifest = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    (mark,) = manifest["overlay"]
    assert mark["label"] == "t"
    assert (mark["x"], mark["y"]) == pytest.approx((0.3, 0.6), abs=1e-4)
    assert mark["residual"] < 1e-3
    assert whole["complete"]
    # the same grid split over two workers writing into one folder gives the same table
    first = run_landscape(_cfg(*args, "landscape.workers=2", "landscape.worker=0"), tmp_path / "split", progress=False)
    assert not first["complete"]
    second = run_landscape(_cfg(*args, "landscape.workers=2", "landscape.worker=1"), tmp_path / "split",
                           progress=False)  # fmt: skip
    assert second["complete"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "points.csv"),
                                  pd.read_csv(tmp_path / "split" / "points.csv"))  # fmt: skip


def _toy_tensors(aligned) -> tuple[list[str], list[torch.Tensor], set[str]]:
    model, _ = aligned
    params = dict(model.named_parameters())
    return list(params), [p.detach() for p in params.values()], set(model.state_dict())


def test_target_weights_are_checked_per_tensor_and_name_file_and_tensor(tmp_path, aligned) -> None:
    from safetensors.torch import save_file

    from landscape.run import _load_target
    from sweeps.config import ModelConfig

    names, centre, known = _toy_tensors(aligned)
    good = {n: c.clone().contiguous() for n, c in zip(names, centre, strict=True)}
    victim = next(n for n, c in zip(names, centre, strict=True) if c.dim() == 2)
    cases = {}
    wide = dict(good)
    wide[victim] = good[victim][:1].contiguous()  # broadcasts to the model's shape: must still be refused
    cases["wide"] = (wide, rf"tensor '{re.escape(victim)}' has shape \[1, \d+\], the model's is")
    cases["unknown"] = ({**good, "model.extra.weight": torch.zeros(2)}, r"tensor 'model.extra.weight' is not in")
    for name, (tensors, _) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    save_file(good, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all" * 10)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("truncated", "garbage", "empty"):
        cases[name] = (None, "not a readable safetensors file")
    for name, (_, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        with pytest.raises(ConfigError, match=message) as err:
            _load_target(str(path), names, centre, ModelConfig(), None, known)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    loaded = _load_target(str(tmp_path / "good.safetensors"), names, centre, ModelConfig(), None, known)
    assert all(torch.equal(x, y) for x, y in zip(loaded, centre, strict=True))
    partial = {victim: good[victim] + 1}  # a trial's weights file: only its trainable tensors
    save_file(partial, str(tmp_path / "partial.safetensors"))
    loaded = _load_target(str(tmp_path / "partial.safetensors"), names, centre, ModelConfig(), None, known)
    assert sum(not torch.equal(x, y) for x, y in zip(loaded, centre, strict=True)) == 1


def test_cli_rejects_bad_weights_shared_config_and_unwritable_run_dir(tmp_path, toy_root) -> None:
    from safetensors.torch import save_file

    env = {**os.environ, "SWEEPS_CACHE_DIR": str(CACHE_DIR)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "landscape", f"cache_dir={CACHE_DIR}", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    save_file({"model.embed_tokens.weight": torch.zeros(3, 2)}, str(tmp_path / "wrong.safetensors"))
    out = tmp_path / "wrong"
    bad = run(f"hydra.run.dir={out}", f"landscape.centre_weights={tmp_path / 'wrong.safetensors'}",
              "landscape.dims=1", "landscape.points=3")  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    (line,) = [x for x in bad.stderr.splitlines() if "error" in x.lower()]  # (model loading draws progress bars)
    assert line.startswith("error: ") and "wrong.safetensors" in line
    assert "'model.embed_tokens.weight' has shape [3, 2]" in line
    assert {p.name for p in out.iterdir()} <= {".hydra", "__main__.log"}  # nothing of the landscape written
    # the train CLI's checks on the shared parts, and landscape.* checks, reported together
    out = tmp_path / "invalid"
    bad = run(f"hydra.run.dir={out}", "model.dtype=float8", "data.max_length=0", "eval.asr.keywords=nope",
              "model.device=tpu", "landscape.hessian_iters=0", "+landscape.thresholds.asr=0.5")  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    for key in ("model.dtype", "data.max_length", "eval.asr.keywords", "model.device", "landscape.hessian_iters",
                "landscape.thresholds.asr"):
        assert key in bad.stderr, (key, bad.stderr)
    assert {p.name for p in out.iterdir()} <= {".hydra", "__main__.log"}
    (tmp_path / "file").write_text("a regular file")
    bad = run(f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0
    assert str(tmp_path / "file" / "run") in bad.stderr


def test_a_corrupt_identity_file_is_one_line_naming_it(tmp_path) -> None:
    (tmp_path / "points.0.jsonl").write_text("")
    for text in ("{not json", "[1, 2]"):
        (tmp_path / "landscape_identity.json").write_text(text)
        with pytest.raises(ConfigError, match=r"landscape_identity\.json: not") as err:
            run_landscape(_cfg("landscape.dims=1", "landscape.points=3"), tmp_path, progress=False)
        assert "\n" not in str(err.value)



def test_landscape_values_reaching_libraries_are_checked_up_front(tmp_path) -> None:
    from landscape.config import device_error, validate_landscape

    assert device_error("cpu") is None and device_error("auto") is None
    assert "not one of auto, cpu" in device_error("gpu0") and "not available" in device_error("cuda:99")
    bad = {"landscape.radius=inf": "landscape.radius", "landscape.tolerance=-1": "landscape.tolerance",
           "landscape.max_points=0": "landscape.max_points", "landscape.asr_limit=0": "landscape.asr_limit",
           "landscape.hessian_examples=0": "landscape.hessian_examples",
           "+landscape.thresholds.safety_loss=nan": "landscape.thresholds.safety_loss",
           f"landscape.centre_weights={tmp_path / 'none.safetensors'}": "landscape.centre_weights: weights file",
           "data.max_length=0": "data.max_length"}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        validate_landscape(_cfg(*bad))
    for key in bad.values():
        assert key in str(err.value), (key, str(err.value))
    validate_landscape(_cfg())  # the defaults pass
