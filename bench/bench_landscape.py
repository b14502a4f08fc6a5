"""Landscape benchmarks, side by side in one run: ours vs loss-landscapes, eval FLOP/s, ASR cost per point.

    .venv/bin/pip install loss-landscapes==3.0.6   # its only dependency is numpy
    .venv/bin/python bench/bench_landscape.py [--cache-dir .cache] [--threads 2] [--points 11] [--parts 1,2,3]

About 2–3 minutes on 2 idle cores. Every timing is a best-of (interleaved runs), but other jobs on the same cores
still skew it: check the load averages it prints.

Part 1  the same 2-D random-plane safety-loss landscape (toy aligned Llama, filter normalisation, `--points`² grid,
        extent ±0.5/`--distance` filter-normalised units, every parameter perturbed) computed by our code
        (landscape.directions + Perturbation + Scorer, as landscape/run.py does) and by PyPI `loss_landscapes
        .random_plane` with a Metric that calls the same `per_example_nll` on the same encoded refusal set. Reports
        wall time (best of `--repeats`, ABBA order), time outside the metric, and what each leaves behind (checksum,
        requires_grad), plus an untimed audit of their walk: the (α, β) behind every entry of the array they return,
        recovered by projecting θ − θ₀ on their directions (captured by wrapping their direction factories).
Part 2  peak fp32 matmul FLOP/s (one n×n `torch.matmul`, best of a few) vs `per_example_nll` throughput on a randomly
        initialised ~110M-parameter Llama (tied embeddings) on synthetic batches. FLOPs = 2 × (weights of every
        nn.Linear, lm_head included) per token; the attention score/value products are reported separately.
Part 3  ASR-landscape cost per grid point on the toy model, on llm-landscape's 1-D grid (21 points, α ∈ [−0.5, 0.5]):
        their recipe (walk a state_dict copy and `load_state_dict` it at every point, HF `generate` greedy in batches
        of 4, no keyword early stop) vs ours as `python -m landscape` runs it (`Perturbation.set`, points from the
        centre outwards, `sweeps.scoring.generate.generate` in batches of 64 with the early stop on refusal keywords
        and the nearest computed point's answers as drafts), same prompts, same direction, same max_new_tokens
        (capped so prompt + new tokens ≤ max_position_embeddings); also ours without drafts and ours without the early
        stop, to separate what drafts, early stopping and batching each buy.

Prints a small table per part, then one line `JSON {...}` with every number.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `sweeps`, `landscape` importable

from landscape import directions as D
from landscape.perturb import Perturbation, checksum
from landscape.run import axis
from sweeps.config import EvalConfig
from sweeps.formatting import IGNORE_INDEX, Encoded, PromptFormatter
from sweeps.scoring.generate import generate, left_pad
from sweeps.scoring.judges import KeywordJudge
from sweeps.scoring.nll import per_example_nll
from sweeps.scoring.scorer import EvalSets, Scorer
from sweeps.toyworld import World, WorldConfig, ensure_world, toy_examples

try:
    import loss_landscapes.main as ll_main
    from loss_landscapes.metrics import Metric
    from loss_landscapes.model_interface.model_wrapper import ModelWrapper
except ImportError:  # pragma: no cover - the benchmark needs it; the project does not
    sys.exit("bench_landscape needs PyPI loss-landscapes: .venv/bin/pip install loss-landscapes==3.0.6")


# ----------------------------------------------------------------------------------------------- helpers


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def grad_flags(model: nn.Module) -> int:
    return sum(p.requires_grad for p in model.parameters())


def load_toy(path: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


class MeanRefusalNLL(Metric):
    """loss_landscapes Metric: exactly what our Scorer's `safety_loss` computes (mean of per_example_nll)."""

    def __init__(self, data: Sequence[Encoded], pad_id: int, batch_size: int) -> None:
        super().__init__()
        self.data, self.pad_id, self.batch_size = data, pad_id, batch_size
        self.seconds = 0.0

    def value(self, model: nn.Module) -> float:
        start = time.perf_counter()
        values = per_example_nll(model, self.data, pad_id=self.pad_id, batch_size=self.batch_size)
        self.seconds += time.perf_counter() - start
        return sum(values) / len(values)

    def __call__(self, model_wrapper: ModelWrapper) -> float:
        return self.value(model_wrapper.modules[0])


class WalkAudit(Metric):
    """Records where random_plane really evaluates: (α, β) in its own step units and the off-plane residual."""

    def __init__(self, theta0: torch.Tensor, captured: dict[str, Any], nll: MeanRefusalNLL) -> None:
        super().__init__()
        self.theta0, self.captured, self.nll = theta0, captured, nll
        self.points: list[tuple[float, float, float]] = []  # (alpha, beta, residual / ‖step‖)
        self.origin_loss: tuple[float, float, float] | None = None  # (alpha, beta, loss) at the nominal origin
        self._basis: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None

    def basis(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        if self._basis is None:  # the direction objects are final (scaled in place) before the first evaluation
            d1, d2 = flat(self.captured["d1"].parameters), flat(self.captured["d2"].parameters)
            gram = np.array([[float(d1 @ d1), float(d1 @ d2)], [float(d1 @ d2), float(d2 @ d2)]])
            self._basis = (d1, d2, gram)
        return self._basis

    def coords(self, model: nn.Module) -> tuple[float, float, float]:
        d1, d2, gram = self.basis()
        diff = flat(list(model.parameters())) - self.theta0
        a, b = np.linalg.solve(gram, np.array([float(d1 @ diff), float(d2 @ diff)]))
        resid = float((diff - a * d1 - b * d2).norm() / d1.norm())
        return float(a), float(b), resid

    def __call__(self, model_wrapper: ModelWrapper) -> float:
        model = model_wrapper.modules[0]
        a, b, resid = self.coords(model)
        self.points.append((a, b, resid))
        if abs(a) < 0.25 and abs(b) < 0.25:
            self.origin_loss = (a, b, self.nll.value(model))
        return float(len(self.points) - 1)  # the evaluation index: random_plane's matrix maps back to (α, β)


# ----------------------------------------------------------------------------------------------- part 1


def run_theirs(model: nn.Module, metric: Metric, steps: int, distance: float, seed: int) -> np.ndarray:
    torch.manual_seed(seed)  # their directions come from the global RNG (torch.rand)
    return ll_main.random_plane(model, metric, distance=distance, steps=steps, normalization="filter")


def audit_theirs(model0: nn.Module, steps: int, distance: float, seed: int, nll: MeanRefusalNLL) -> dict[str, Any]:
    """Re-run random_plane with recording hooks on its direction factories (not timed)."""
    model = copy.deepcopy(model0)
    params = list(model.parameters())
    theta0 = flat(params)
    captured: dict[str, Any] = {}
    orig_rand, orig_orth = ll_main.rand_u_like, ll_main.orthogonal_to

    def rec_rand(example: Any) -> Any:
        out = orig_rand(example)
        raw = flat(out.parameters)
        captured.update(d1=out, raw_min=float(raw.min()), raw_max=float(raw.max()), raw_mean=float(raw.mean()))
        return out

    def rec_orth(vector: Any) -> Any:
        captured["d2"] = out = orig_orth(vector)
        return out

    audit = WalkAudit(theta0, captured, nll)
    ll_main.rand_u_like, ll_main.orthogonal_to = rec_rand, rec_orth
    try:
        index = run_theirs(model, audit, steps, distance, seed).astype(int)
    finally:
        ll_main.rand_u_like, ll_main.orthogonal_to = orig_rand, orig_orth
    d1, d2, _ = audit.basis()
    pts = np.array(audit.points)
    a, b = pts[:, 0], pts[:, 1]
    lattice = np.abs(pts[:, :2] * 2 - np.round(pts[:, :2] * 2)) / 2  # distance to the nearest half-step
    even = np.array([i % 2 == 0 for i in range(steps) for _ in range(steps)])
    a_mat, b_mat = a[index], b[index]  # the (α, β) behind each entry of the array random_plane returns
    one_d = [(p, w) for p, w in zip(captured["d1"].parameters, params, strict=True) if p.dim() == 1]
    cos_abs_w = [float(cos_flat(p, theta0_part(w, params, theta0).abs())) for p, w in one_d]
    end = audit.coords(model)
    step_len = float(d1.norm())
    return {
        "steps": steps,
        "raw_uniform_min": captured["raw_min"],
        "raw_uniform_max": captured["raw_max"],
        "raw_uniform_mean": captured["raw_mean"],
        "d1_frac_positive": float((d1 > 0).double().mean()),
        "d2_frac_positive": float((d2 > 0).double().mean()),
        "cos_d1_d2": float(d1 @ d2 / (d1.norm() * d2.norm())),
        "one_d_tensors": len(one_d),
        "min_cos_1d_dir_vs_abs_w": min(cos_abs_w) if cos_abs_w else float("nan"),
        "alpha_steps": [float(x) + 0.0 for x in np.unique(np.round(a, 3))],
        "beta_steps_even_cols": [float(x) + 0.0 for x in np.unique(np.round(b[even], 3))],
        "beta_steps_odd_cols": [float(x) + 0.0 for x in np.unique(np.round(b[~even], 3))],
        "returned_row_alpha_spread_steps": float(np.ptp(a_mat, axis=1).max()),
        "returned_col_beta_spread_steps": float(np.ptp(b_mat, axis=0).max()),
        "returned_col0_beta_steps": [float(x) + 0.0 for x in np.round(b_mat[:, 0], 3)],
        "origin_in_grid": bool(np.any((np.abs(a) < 1e-3) & (np.abs(b) < 1e-3))),
        "nearest_to_origin_steps": float(np.min(np.hypot(a, b))),
        "max_lattice_error_steps": float(lattice.max()),
        "max_offplane_residual_steps": float(pts[:, 2].max()),
        "origin_point": audit.origin_loss,
        "left_at_steps": end[:2],
        "left_at_rel_dist": float((flat(params) - theta0).norm() / theta0.norm()),
        "step_over_theta_norm": step_len / float(theta0.norm()),
        "expected_1_over_distance_steps": 1 / (distance * steps),
    }


def theta0_part(w: torch.Tensor, params: list[torch.Tensor], theta0: torch.Tensor) -> torch.Tensor:
    """The slice of the flat starting vector that belongs to parameter `w`."""
    start = 0
    for p in params:
        if p is w:
            return theta0[start : start + p.numel()].view(p.shape)
        start += p.numel()
    raise KeyError("parameter not found")


def cos_flat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.reshape(-1).double(), y.reshape(-1).double()
    return x @ y / (x.norm() * y.norm())


def run_ours(
    model: nn.Module, scorer: Scorer, points: int, radius: float, seed: int
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """landscape/run.py's random mode (dims=2, filter, one repeat), every parameter in scope, no disk I/O."""
    metric_s = 0.0
    params = D.select_parameters(model, D.Scope(exclude=None))
    d1 = D.random_direction(params, seed, "filter")
    d2 = D.orthogonalise(d1, D.random_direction(params, seed + 1, "filter"))
    xs = axis(-radius, radius, points)
    grid = np.zeros((points, points))
    with Perturbation(params, [d1, d2]) as pert:
        for i, a in enumerate(xs):
            for j, b in enumerate(xs):
                pert.set(float(a), float(b))
                start = time.perf_counter()
                grid[i, j] = scorer.score(model, ["safety_loss"]).metrics["safety_loss"]
                metric_s += time.perf_counter() - start
    fd1 = flat(d1)
    info = {
        "d1_frac_positive": float((fd1 > 0).double().mean()),
        "cos_d1_d2": D.cosine(d1, d2),
        "perturbed_values": int(sum(p.numel() for _, p in params)),
        "origin_index": int(np.argmin(np.abs(xs))),
        "axis": [round(float(x), 6) for x in xs],
    }
    return grid, metric_s, info


def part1(args: argparse.Namespace, root: Path, world: World) -> dict[str, Any]:
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    model0 = load_toy(root / "aligned")
    fmt = PromptFormatter(tok)
    cfg = EvalConfig()
    scorer = Scorer(tok, fmt, EvalSets(refusal=toy_examples("refusal", world)), cfg, max_length=256)
    data = scorer._refusal  # the very same encoded (prompt → refusal) pairs our safety_loss uses
    centre = scorer.score(copy.deepcopy(model0), ["safety_loss"]).metrics["safety_loss"]  # also warms up
    metric = MeanRefusalNLL(data, scorer.pad_id, cfg.nll_batch_size)
    their_centre = metric.value(copy.deepcopy(model0))

    # timed runs on fresh copies, ABBA order over --repeats; what each run leaves behind
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    grids: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        for tool in ("theirs", "ours") if rep % 2 == 0 else ("ours", "theirs"):
            m = copy.deepcopy(model0)
            cs0, rg0, th0 = checksum(m), grad_flags(m), flat(list(m.parameters()))
            start = time.perf_counter()
            if tool == "theirs":
                metric.seconds = 0.0
                grid = run_theirs(m, metric, args.points, args.distance, args.seed)
                metric_s, info = metric.seconds, {}
            else:
                grid, metric_s, info = run_ours(m, scorer, args.points, 0.5 / args.distance, args.seed)
            seconds = time.perf_counter() - start
            grids[tool] = grid
            runs[tool].append({"seconds": seconds, "metric_s": metric_s, "checksum_changed": checksum(m) != cs0,
                               "requires_grad_before": rg0, "requires_grad_after": grad_flags(m),
                               "rel_dist_after": float((flat(list(m.parameters())) - th0).norm() / th0.norm()),
                               **info})  # fmt: skip
    best = {tool: min(r, key=lambda x: x["seconds"]) for tool, r in runs.items()}
    ours, theirs = grids["ours"], grids["theirs"]
    t_ours, t_theirs = best["ours"]["seconds"], best["theirs"]["seconds"]
    our_metric_s, their_metric_s = best["ours"]["metric_s"], best["theirs"]["metric_s"]
    o = best["ours"]["origin_index"]
    our_res = {**best["ours"], "origin_loss": float(ours[o, o]), "origin_minus_centre": float(ours[o, o] - centre),
               "grid_min": float(ours.min()), "grid_max": float(ours.max()), "runs": runs["ours"]}  # fmt: skip
    th_res = {**best["theirs"], "grid_min": float(theirs.min()), "grid_max": float(theirs.max()),
              "shape": list(theirs.shape), "runs": runs["theirs"]}  # fmt: skip

    # audits of their walk (not timed): the same grid size, and the next even size (whose grid nominally has 0)
    even = args.points if args.points % 2 == 0 else args.points - 1
    audits = {n: audit_theirs(model0, n, args.distance, args.seed, metric) for n in dict.fromkeys((args.points, even))}
    for a in audits.values():
        if a["origin_point"] is not None:
            a["origin_loss_minus_centre"] = a["origin_point"][2] - centre

    n_pts = args.points**2
    print(
        f"\n[1] random_plane {args.points}x{args.points}, filter norm, extent ±{0.5 / args.distance:g} "
        f"filter units, toy aligned Llama {sum(p.numel() for p in model0.parameters())} params, "
        f"metric = mean refusal NLL over {len(data)} examples (centre {centre:.6f}; their Metric at centre "
        f"{their_centre:.6f})"
    )
    print(f"{'':<34}{'ours':>14}{'loss-landscapes':>18}")
    rows = [
        ("wall s (whole landscape)", f"{t_ours:.2f}", f"{t_theirs:.2f}"),
        ("  of which metric s", f"{our_metric_s:.2f}", f"{their_metric_s:.2f}"),
        (
            "  outside metric ms / point",
            f"{1000 * (t_ours - our_metric_s) / n_pts:.2f}",
            f"{1000 * (t_theirs - their_metric_s) / n_pts:.2f}",
        ),
        ("weights changed after run", str(our_res["checksum_changed"]), str(th_res["checksum_changed"])),
        ("‖θ_after−θ₀‖/‖θ₀‖", f"{our_res['rel_dist_after']:.3g}", f"{th_res['rel_dist_after']:.3g}"),
        (
            "params requires_grad before→after",
            f"{our_res['requires_grad_before']}→{our_res['requires_grad_after']}",
            f"{th_res['requires_grad_before']}→{th_res['requires_grad_after']}",
        ),
        (
            "direction entries > 0",
            f"{our_res['d1_frac_positive']:.3f}",
            f"{audits[args.points]['d1_frac_positive']:.3f}",
        ),
        ("cos(d1, d2) as used", f"{our_res['cos_d1_d2']:.1e}", f"{audits[args.points]['cos_d1_d2']:.3f}"),
        ("grid min / max loss", f"{ours.min():.3f}/{ours.max():.3f}", f"{theirs.min():.3f}/{theirs.max():.3f}"),
    ]
    for name, x, y in rows:
        print(f"{name:<34}{x:>14}{y:>18}")
    all_s = {tool: [round(r["seconds"], 2) for r in rs] for tool, rs in runs.items()}
    print(
        f"time ratio ours/theirs = {t_ours / t_theirs:.3f} (best of {args.repeats} each, ABBA…; goal ≤ 1.0);"
        f" all runs s: ours {all_s['ours']}, theirs {all_s['theirs']}"
    )
    over = (t_ours - our_metric_s) / (t_theirs - their_metric_s)
    print(f"landscape machinery outside the (identical) metric: ours/theirs = {over:.2f}")
    print(f"ours: axis (filter units, both directions) = {our_res['axis']}")
    print(f"ours: origin is grid point ({o},{o}); loss there − centre loss = {our_res['origin_minus_centre']:.3g}")
    for n, a in audits.items():
        print(f"theirs, steps={n}: α (steps) = {a['alpha_steps']}")
        print(f"   β (steps) even columns = {a['beta_steps_even_cols']}")
        print(f"   β (steps) odd columns  = {a['beta_steps_odd_cols']}")
        print(
            f"   returned array: β behind column j=0 down the rows = {a['returned_col0_beta_steps']};"
            f" max β spread within one column {a['returned_col_beta_spread_steps']:.3f} steps,"
            f" max α spread within one row {a['returned_row_alpha_spread_steps']:.3f} steps"
        )
        print(
            f"   origin in grid: {a['origin_in_grid']} (nearest point {a['nearest_to_origin_steps']:.3f} steps away);"
            f" max off-lattice {a['max_lattice_error_steps']:.2e} steps,"
            f" off-plane {a['max_offplane_residual_steps']:.2e} steps;"
            f" model left at (α, β) = ({a['left_at_steps'][0]:.3f}, {a['left_at_steps'][1]:.3f}) steps"
        )
        if a["origin_point"] is not None:
            print(
                f"   value at their nominal origin ({a['origin_point'][0]:.1e}, {a['origin_point'][1]:.1e}) − true "
                f"centre loss = {a['origin_loss_minus_centre']:.3g}"
            )
        print(
            f"   raw direction draw: torch.rand, min {a['raw_uniform_min']:.3f} max {a['raw_uniform_max']:.3f} mean "
            f"{a['raw_uniform_mean']:.3f}; {a['one_d_tensors']} 1-D tensors, min cos(direction, |w|) "
            f"{a['min_cos_1d_dir_vs_abs_w']:.6f}; ‖step‖/‖θ₀‖ = {a['step_over_theta_norm']:.4f}"
            f" (1/(distance·steps) = {a['expected_1_over_distance_steps']:.4f})"
        )
    return {
        "centre_loss": centre,
        "their_metric_at_centre": their_centre,
        "ours": our_res,
        "theirs": th_res,
        "ratio_ours_over_theirs": t_ours / t_theirs,
        "overhead_ratio_ours_over_theirs": (t_ours - our_metric_s) / (t_theirs - their_metric_s),
        "audits": {str(k): v for k, v in audits.items()},
    }


# ----------------------------------------------------------------------------------------------- part 2


def peak_matmul(n: int, repeats: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def part2(args: argparse.Namespace) -> dict[str, Any]:
    peak = peak_matmul(args.matmul_n, args.matmul_repeats)
    torch.manual_seed(args.seed)
    heads = args.big_hidden // 64
    config = LlamaConfig(
        vocab_size=args.big_vocab,
        hidden_size=args.big_hidden,
        intermediate_size=args.big_inter,
        num_hidden_layers=args.big_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(args.big_seq, 128),
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))  # lm_head included (tied)
    gen = torch.Generator().manual_seed(args.seed)
    half = args.big_seq // 2
    data = []
    for _ in range(args.big_batch * args.big_batches):
        ids = torch.randint(3, args.big_vocab, (args.big_seq,), generator=gen).tolist()
        data.append(Encoded(ids, [IGNORE_INDEX] * half + ids[half:]))  # prompt half masked, response half scored
    per_example_nll(model, data[: args.big_batch], pad_id=0, batch_size=args.big_batch)  # warm-up
    batch_s = []  # each batch timed on its own: on a shared machine the best batch is the least disturbed one
    for start in range(0, len(data), args.big_batch):
        t0 = time.perf_counter()
        per_example_nll(model, data[start : start + args.big_batch], pad_id=0, batch_size=args.big_batch)
        batch_s.append(time.perf_counter() - t0)
    peak = max(peak, peak_matmul(args.matmul_n, args.matmul_repeats))  # again after, best of both
    seconds = min(batch_s)
    tokens = args.big_batch * args.big_seq  # per batch; every position's logits are computed
    flops = 2 * linear * tokens
    attn = 4 * args.big_layers * args.big_seq * args.big_hidden * tokens  # QKᵀ and AV over the full T×T
    res = {
        "peak_flops": peak,
        "params": n_params,
        "linear_params": linear,
        "tokens_per_batch": tokens,
        "batch_seconds": batch_s,
        "best_batch_s": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_mean": tokens * len(batch_s) / sum(batch_s),
        "achieved_flops": flops / seconds,
        "fraction_of_peak": flops / seconds / peak,
        "fraction_of_peak_mean": flops * len(batch_s) / sum(batch_s) / peak,
        "fraction_incl_attention": (flops + attn) / seconds / peak,
    }
    print(f"\n[2] NLL eval throughput vs fp32 matmul peak ({args.threads} threads)")
    print(
        f"{f'peak: one {args.matmul_n}x{args.matmul_n} fp32 matmul, best of 2x{args.matmul_repeats}':<52}"
        f"{peak / 1e9:>10.1f} GFLOP/s"
    )
    print(
        f"{f'Llama h{args.big_hidden} L{args.big_layers} ff{args.big_inter} V{args.big_vocab} tied, params':<52}"
        f"{n_params / 1e6:>10.1f} M   (nn.Linear incl. lm_head {linear / 1e6:.1f} M)"
    )
    print(
        f"{f'per_example_nll, best of {args.big_batches} batches of {args.big_batch}x{args.big_seq}':<52}"
        f"{seconds:>10.2f} s, {tokens / seconds:.0f} tokens/s (all batches s: {[round(x, 2) for x in batch_s]})"
    )
    print(
        f"{'achieved (2 x linear params x tokens)':<52}{flops / seconds / 1e9:>10.1f} GFLOP/s = "
        f"{100 * res['fraction_of_peak']:.1f}% of peak (goal ≥ 50%); mean over batches"
        f" {100 * res['fraction_of_peak_mean']:.1f}%"
    )
    print(
        f"{'  counting full-T×T attention products too':<52}{(flops + attn) / seconds / 1e9:>10.1f} GFLOP/s = "
        f"{100 * res['fraction_incl_attention']:.1f}% of peak"
    )
    return res


# ----------------------------------------------------------------------------------------------- part 3


@torch.no_grad()
def llm_landscape_generate(
    model: nn.Module, tok: Any, prompts: Sequence[list[int]], batch_size: int, max_new_tokens: int
) -> tuple[list[str], list[int]]:
    """forward_llama: batches in dataset order, left-padded, HF generate greedy with the KV cache, no stop criteria."""
    texts, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], tok.pad_token_id)
        seqs = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tok.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new = seqs[:, ids.shape[1] :]
        texts += tok.batch_decode(new, skip_special_tokens=True)
        for row in new.tolist():
            lengths.append(row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row))
    return texts, lengths


def part3(args: argparse.Namespace, root: Path, world: World) -> dict[str, Any]:
    tok = AutoTokenizer.from_pretrained(root / "aligned")
    fmt = PromptFormatter(tok)
    judge = KeywordJudge()
    prompts = [fmt.encode_prompt(e.prompt) for e in toy_examples("harmful", world)[: args.asr_prompts]]
    theirs_model, ours_model = load_toy(root / "aligned"), load_toy(root / "aligned")
    limit = theirs_model.config.max_position_embeddings - max(len(p) for p in prompts)
    max_new = min(args.max_new_tokens, limit)
    alphas = axis(-args.asr_radius, args.asr_radius, args.asr_points).tolist()
    order = sorted(range(len(alphas)), key=lambda i: abs(alphas[i]))  # landscape.run's order: centre outwards

    params = D.select_parameters(ours_model, D.Scope())  # default scope: norms and biases fixed
    direction = D.random_direction(params, args.seed, "filter")
    # llm-landscape's dirs cover every state_dict key; keys outside our scope get zeros (tied keys share the tensor's)
    by_name = {n: d for (n, _), d in zip(params, direction, strict=True)}
    name_of = {p.data_ptr(): n for n, p in theirs_model.named_parameters()}  # tied state_dict keys → one name
    state = theirs_model.state_dict()
    origin = {k: v.detach().clone() for k, v in state.items()}
    dirs = {k: by_name.get(name_of.get(v.data_ptr(), k), torch.zeros_like(v)) for k, v in state.items()}
    moved = sum(int(bool(d.any())) for d in dirs.values())
    cs_ours = checksum(ours_model)

    llm_landscape_generate(theirs_model, tok, prompts, args.their_batch, max_new)  # warm-up both, untimed
    generate(ours_model, tok, prompts, max_new_tokens=max_new, batch_size=args.our_batch)
    arms = ("theirs", "ours", "nodraft", "nostop")
    times: dict[str, list[list[float]]] = {arm: [[] for _ in alphas] for arm in arms}
    texts: dict[str, list[list[str]]] = {arm: [[] for _ in alphas] for arm in arms}  # from the last sweep
    lengths: dict[str, list[float]] = {arm: [0.0] * len(alphas) for arm in arms}
    drafted = [0.0] * len(alphas)
    with Perturbation(params, [direction]) as pert:
        for _ in range(args.asr_repeats):  # whole sweeps, interleaved per point; the best time per point is kept
            weights = {k: v.clone() for k, v in origin.items()}  # llm-landscape's walk starts afresh
            previous = 0.0
            answers: dict[float, list[list[int]]] = {}  # ours: answers of the points computed so far
            for i in order:
                alpha = alphas[i]
                start = time.perf_counter()  # theirs: walk the state_dict copy, reload it, generate, verdicts
                for k in weights:
                    weights[k] += (alpha - previous) * dirs[k]
                previous = alpha
                theirs_model.load_state_dict(weights)
                their_texts, their_len = llm_landscape_generate(theirs_model, tok, prompts, args.their_batch, max_new)
                judge.refused([], their_texts)
                times["theirs"][i].append(time.perf_counter() - start)
                texts["theirs"][i], lengths["theirs"][i] = their_texts, sum(their_len) / len(prompts)

                start = time.perf_counter()  # ours: set from the stored centre, drafts from the nearest done point
                pert.set(alpha)
                near = min(answers, key=lambda a: abs(a - alpha)) if answers else None
                gens = generate(ours_model, tok, prompts, max_new_tokens=max_new, batch_size=args.our_batch,
                                stop_when=judge.settled, drafts=answers.get(near))  # fmt: skip
                judge.refused([], [g.text for g in gens])
                times["ours"][i].append(time.perf_counter() - start)
                answers[alpha] = [g.tokens for g in gens]
                drafted[i] = sum(g.drafted for g in gens) / max(1, sum(g.new_tokens for g in gens))

                for arm, stop in (("nodraft", judge.settled), ("nostop", None)):  # ours without drafts / early stop
                    start = time.perf_counter()
                    pert.set(alpha)
                    plain = generate(ours_model, tok, prompts, max_new_tokens=max_new, batch_size=args.our_batch,
                                     stop_when=stop)  # fmt: skip
                    judge.refused([], [g.text for g in plain])
                    times[arm][i].append(time.perf_counter() - start)
                    texts[arm][i], lengths[arm][i] = (
                        [g.text for g in plain],
                        sum(g.new_tokens for g in plain) / len(prompts),
                    )
                texts["ours"][i], lengths["ours"][i] = (
                    [g.text for g in gens],
                    sum(g.new_tokens for g in gens) / len(prompts),
                )
    rows = []
    for i, alpha in enumerate(alphas):
        best = {arm: min(times[arm][i]) for arm in arms}
        verdicts = {arm: judge.refused([], texts[arm][i]) for arm in arms}
        rows.append({"alpha": alpha, **{f"{arm}_s": best[arm] for arm in arms},
                     "speedup": best["theirs"] / best["ours"], "all_s": {arm: times[arm][i] for arm in arms},
                     "refusals_theirs": sum(verdicts["theirs"]), "refusals_ours": sum(verdicts["ours"]),
                     **{f"mismatches_{arm}": sum(x != y for x, y in zip(verdicts["theirs"], verdicts[arm], strict=True))
                        for arm in arms[1:]},
                     "text_diffs_draft": sum(x != y for x, y in zip(texts["ours"][i], texts["nodraft"][i],
                                                                    strict=True)),
                     "drafted_share": drafted[i],
                     **{f"new_tokens_{arm}": lengths[arm][i] for arm in arms}})  # fmt: skip
    mean = {arm: sum(r[f"{arm}_s"] for r in rows) / len(rows) for arm in arms}
    res = {
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "max_prompt_tokens": max(len(p) for p in prompts),
        "their_batch": args.their_batch,
        "state_dict_keys_moved": moved,
        "state_dict_keys": len(dirs),
        "our_batch": args.our_batch,
        "points": rows,
        **{f"{arm}_s_per_point": mean[arm] for arm in arms},
        "speedup": mean["theirs"] / mean["ours"],
        "speedup_nodraft": mean["theirs"] / mean["nodraft"],
        "total_mismatches": sum(r["mismatches_ours"] for r in rows),
        "total_text_diffs_draft": sum(r["text_diffs_draft"] for r in rows),
        "ours_restored": checksum(ours_model) == cs_ours,
    }
    print(
        f"\n[3] ASR landscape cost per point: {len(prompts)} toy harmful prompts (≤{res['max_prompt_tokens']} tokens),"
        f" max_new_tokens={max_new} (capped: prompt + new ≤ {theirs_model.config.max_position_embeddings}),"
        f" one filter-normalised direction ({moved}/{len(dirs)} state_dict keys move; norms fixed), {len(alphas)}"
        f" points α ∈ [{-args.asr_radius}, {args.asr_radius}]"
    )
    print(
        f"{'alpha':>6}{'llm-landscape s':>17}{'ours s':>9}{'speedup':>9}{'refusals':>10}{'mismatch':>10}"
        f"{'drafted':>9}{'new tok':>13}{'no-draft s':>12}{'no-stop s':>11}{'mismatch':>10}   (refusals, new tok:"
        f" theirs/ours; mismatch: verdicts vs theirs, ours / no-stop; best of {args.asr_repeats})"
    )
    for r in rows:
        print(
            f"{r['alpha']:>6g}{r['theirs_s']:>17.3f}{r['ours_s']:>9.3f}{r['speedup']:>8.1f}x"
            f"{r['refusals_theirs']:>5}/{r['refusals_ours']:<4}{r['mismatches_ours']:>10}{r['drafted_share']:>8.0%} "
            f"{r['new_tokens_theirs']:>7.1f}/{r['new_tokens_ours']:<5.1f}{r['nodraft_s']:>12.3f}{r['nostop_s']:>11.3f}"
            f"{r['mismatches_nostop']:>10}"
        )
    print(
        f"mean s/point: llm-landscape recipe {mean['theirs']:.3f}, ours {mean['ours']:.3f} → {res['speedup']:.1f}x"
        f" (goal ≥ 10x); ours without drafts {mean['nodraft']:.3f} ({res['speedup_nodraft']:.1f}x), without drafts or"
        f" early stop {mean['nostop']:.3f}; verdict mismatches {res['total_mismatches']}/{len(prompts) * len(rows)};"
        f" answers changed by drafts {res['total_text_diffs_draft']}; ours restored the weights:"
        f" {res['ours_restored']}"
    )
    return res


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="1,2,3", help="comma-separated subset of 1,2,3")
    ap.add_argument("--points", type=int, default=11, help="[1] grid points per axis (both tools)")
    ap.add_argument("--repeats", type=int, default=3, help="[1] timed runs per tool, ABBA order; best is reported")
    ap.add_argument("--distance", type=float, default=1.0, help="[1] their `distance`; ours uses radius 0.5/distance")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--matmul-repeats", type=int, default=5)
    ap.add_argument("--big-hidden", type=int, default=768)
    ap.add_argument("--big-layers", type=int, default=12)
    ap.add_argument("--big-inter", type=int, default=2048)
    ap.add_argument("--big-vocab", type=int, default=32000)
    ap.add_argument("--big-batch", type=int, default=8)
    ap.add_argument("--big-seq", type=int, default=128)
    ap.add_argument("--big-batches", type=int, default=3)
    ap.add_argument("--asr-prompts", type=int, default=40)
    ap.add_argument("--asr-points", type=int, default=21, help="[3] grid points (llm-landscape: 21)")
    ap.add_argument("--asr-radius", type=float, default=0.5, help="[3] α ∈ [-radius, radius] (llm-landscape: 0.5)")
    ap.add_argument("--asr-repeats", type=int, default=3, help="[3] interleaved sweeps; best time per point")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--their-batch", type=int, default=4)
    ap.add_argument("--our-batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    parts = {int(p) for p in args.parts.split(",")}

    world = World(WorldConfig())
    root = ensure_world(world.cfg, args.cache_dir)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, loss-landscapes "
        f"{importlib.metadata.version('loss-landscapes')}, threads={args.threads}"
    )
    out: dict[str, Any] = {"args": vars(args), "loadavg_start": list(os.getloadavg())}
    print(f"load average at start: {out['loadavg_start']} (other jobs on these cores skew every number)")
    start = time.perf_counter()
    if 1 in parts:
        out["part1"] = part1(args, root, world)
    if 2 in parts:
        out["part2"] = part2(args)
    if 3 in parts:
        out["part3"] = part3(args, root, world)
    out["total_s"] = time.perf_counter() - start
    out["loadavg_end"] = list(os.getloadavg())
    print(f"\ntotal {out['total_s']:.1f} s; load average at end: {out['loadavg_end']}")
    print("JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
