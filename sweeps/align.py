"""`python -m sweeps.align [overrides]`: build (or find) θ_aligned for the configured model and print its folder.

Same config tree and validator as `sweeps.train`; the alignment stage itself is sweeps.alignment.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from sweeps.config import ConfigError
from sweeps.validate import to_train_config, validate


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dcfg: DictConfig) -> None:
    from sweeps.resolve import resolve_model  # heavy imports after config errors had their chance to fail fast

    try:
        cfg = to_train_config(dcfg)
        validate(cfg)
        if not cfg.model.align.enabled:
            raise ConfigError("model.align.enabled: false — pick a model config with an alignment stage, "
                              "e.g. model=smollm2_aligned")  # fmt: skip
        _, _, aligned = resolve_model(cfg.model, cfg.data, cfg.world, cfg.cache_dir)  # toy / pkg: / HF, aligned
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no aligned model written (a partial build is removed)", file=sys.stderr)
        sys.exit(130)
    print(f"aligned model: {aligned.name_or_path}")


if __name__ == "__main__":
    main()
