"""`python -m doremi_jax.train --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR`."""

from __future__ import annotations

from doremi_jax import cli, config, sharding


def run(files, bindings, rest):
    workdir, other = cli.parse_workdir(rest, "train")
    if other:
        raise config.ConfigError(f"unknown arguments {other}")
    if workdir is None:
        raise config.ConfigError("--workdir=DIR is required")
    sharding.initialize_distributed()
    config.train_with_gin(workdir, files, bindings)


if __name__ == "__main__":
    cli.main(run)
