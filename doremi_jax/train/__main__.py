"""`python -m doremi_jax.train --gin_file=... [--gin.NAME=VALUE ...] --workdir=DIR`."""

from __future__ import annotations

from doremi_jax import cli, config, sharding


def run(files, bindings, rest):
    workdir = cli.require_workdir(rest)
    sharding.initialize_distributed()
    config.train_with_gin(workdir, [], [], files, bindings)


if __name__ == "__main__":
    cli.main(run)
