"""`python -m landscape [overrides]`: compute (or resume) a landscape, then write its table, manifest and figures."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from landscape.config import LandscapeAppConfig, validate_landscape
from sweeps.config import ConfigError

log = logging.getLogger("landscape")
ConfigStore.instance().store(name="landscape_schema", node=LandscapeAppConfig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="landscape")
def main(dcfg: DictConfig) -> None:
    from landscape.plots import make_figures
    from landscape.run import run_landscape

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        try:
            cfg = OmegaConf.to_object(dcfg)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{getattr(e, 'full_key', '')}: {str(e).splitlines()[0]}") from None
        validate_landscape(cfg)  # before anything is written into the run dir
        result = run_landscape(cfg, out, config_text=OmegaConf.to_yaml(dcfg, resolve=True))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not result["complete"]:
        print(f"{result['points']} point(s) done so far in {out}; rerun the same command to continue")
        return
    figures = make_figures(out, cfg.landscape.surface3d)
    for metric, entry in result["summaries"].items():
        r = entry["radius"]
        spread = f" ± {r['ci95']:.2g} (95% t" if r["ci95"] is not None else " (no interval from one direction"
        notes = [f"n={r['n']}"] + ([f"{r['censored']} not crossing within the grid"] if r["censored"] else [])
        notes += [f"{entry['non_finite']} non-finite point(s)"] if entry.get("non_finite") else []
        print(f"{metric}: centre {entry['centre']:.4g}, threshold {entry['threshold']:.4g}, basin radius "
              f"{'≥ ' if r['censored'] else ''}{r['mean']:.3g}{spread}, {', '.join(notes)})")  # fmt: skip
    for line in plane_lines(out):
        print(line)
    print(f"landscape: {out}/points.csv, manifest.json, " + ", ".join(p.name for p in figures))


def plane_lines(out: Path) -> list[str]:
    """A plane's defining and projected trials: coordinates, and how far off the plane each lies."""
    import json

    from landscape.plots import point_label

    manifest = json.loads((out / "manifest.json").read_text())
    if "plane" not in manifest:
        return []
    lines = [f"plane ({manifest['plane']['basis']} basis): " + "; ".join(
        f"{point_label({k: v for k, v in p.items() if k != 'residual'})} at ({p['x']:.3g}, {p['y']:.3g})"
        for p in manifest["plane"]["points"])]  # fmt: skip
    lines += [f"  {point_label(m)} at ({m['x']:.3g}, {m['y']:.3g}), ‖θ − proj‖ = {m['off_plane']:.3g} = "
              f"{m['residual']:.2f} of ‖θ − θ_aligned‖" for m in manifest.get("overlay", [])]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
