"""`python -m doremi_jax.train --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR`."""

from __future__ import annotations

import os

from doremi_jax import cli, config, sharding
from doremi_jax.train import loop


def run(files, bindings, rest):
    workdir, other = cli.parse_workdir(rest, "train")
    if other:
        raise config.ConfigError(f"unknown arguments {other}")
    if workdir is None:
        raise config.ConfigError("--workdir=DIR is required")
    sharding.initialize_distributed()
    config.parse(files, [f"MODEL_DIR = '{workdir}'"] + list(bindings))
    loop.check_writable(workdir)
    config_path = os.path.join(workdir, "config.gin")
    if not os.path.exists(config_path):  # never overwrite another run's record up front
        config.write_file(config_path, config.config_str())
    config.configurable("train")(workdir)
    # The operative config: what this run actually used (T5X writes the same).
    config.write_file(config_path, config.operative_config())


if __name__ == "__main__":
    cli.main(run)
