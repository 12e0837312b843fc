"""`python -m doremi_jax.aot --gin_file=... --topology=v5p:2x2x2 [--json PATH]`.

Compiles every step an experiment would run (reference LM step, proxy DoReMi step with
its reference forward, main LM step, and each stage's evaluation step) for a TPU
topology, on this host, from shapes only; reports memory per chip against the chip's
HBM (FITS / DOES NOT FIT), FLOPs, collectives, a roofline bound on the step time and
MFU, and the days the experiment would take. MaxText's `train_compile.py` idea.

  --topology=v5p:4x4x4            every stage on this slice
  --topology=main=v5p:8x8x8       one stage kind (reference, proxy, main, main_odm, regmix) on another
  --slices=2                      multislice: that many slices joined over DCN
  --num_domains=22                k (The Pile's by default; only sizes a few vectors)
  --search                        per stage, compile a bounded grid (every gin/sharding file x
                                  remat policy, the fewest microbatches that fit) and print the
                                  configuration with the best roofline bound as gin bindings
  --stage=NAME                    only this stage (repeatable)

Exit status 0 when every step fits, 1 when one does not (the table still prints).
Needs libtpu (`pip install -e '.[tpu]'`); runs with JAX_PLATFORMS=cpu, set here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

# Compile-only TPU devices need no TPU backend: keep jax on the CPU, and libtpu from
# probing for a TPU at start-up.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from doremi_jax import cli, config  # noqa: E402


def parse_args(rest):
    """--topology (repeatable, optionally `kind=`), --slices, --num_domains, --json."""
    topologies, options = {}, {"slices": 1, "num_domains": 22, "json": None, "search": False, "stages": []}
    args = list(rest)
    while args:
        a = args.pop(0)
        name, eq, value = a.partition("=")
        if not eq and name in ("--topology", "--slices", "--num_domains", "--json", "--stage") and args:
            value = args.pop(0)
        if name == "--topology":
            kind, sep, topo = value.partition("=")
            topologies[kind if sep else "*"] = topo if sep else value
        elif name in ("--slices", "--num_domains"):
            try:
                options[name[2:]] = int(value)
            except ValueError:
                raise config.ConfigError(f"{name}={value!r}: expected an integer") from None
        elif name == "--json":
            options["json"] = value
        elif name == "--search" and not eq:
            options["search"] = True
        elif name == "--stage":
            options["stages"].append(value)
        else:
            raise config.ConfigError(
                f"unknown argument {a!r} (expected --gin_file, --gin.NAME=VALUE, --topology, --slices, "
                "--num_domains, --json, --search, --stage)"
            )
    if not topologies:
        raise config.ConfigError("--topology=NAME is required (for example v5p:2x2x2, v4:4x4x4, v5e:16x16)")
    return topologies, options


def run(files, bindings, rest):
    from doremi_jax.aot import compile as aot_compile, plan as aot_plan, report, search, topology

    topologies, options = parse_args(rest)
    plans, kind = aot_plan.plans(files, bindings)
    unknown = sorted(set(topologies) - {"*"} - {p.name for p in plans})
    if unknown:
        raise config.ConfigError(
            f"--topology for {unknown}: this {kind} has stages {[p.name for p in plans]}"
        )
    for plan in plans:
        if plan.mesh.dcn_data != options["slices"]:
            raise config.ConfigError(
                f"--slices={options['slices']} but the {plan.name} stage has MeshConfig.dcn_data="
                f"{plan.mesh.dcn_data}: the mesh's DCN axis spans the slices "
                f"(--gin.MeshConfig.dcn_data={options['slices']})"
            )
    unknown = sorted(set(options["stages"]) - {p.name for p in plans})
    if unknown:
        raise config.ConfigError(f"--stage {unknown}: this {kind} has stages {[p.name for p in plans]}")
    if options["stages"]:
        plans = [p for p in plans if p.name in options["stages"]]
    chips, names, reports, searches = {}, {}, [], []
    for plan in plans:
        name = topologies.get(plan.name, topologies.get("*"))
        if name is None:
            raise config.ConfigError(f"no --topology for stage {plan.name!r} (give --topology=NAME for all)")
        try:
            devices, chip = topology.devices(name, options["slices"])
        except topology.TopologyError as e:
            raise config.ConfigError(str(e)) from None
        names[plan.name] = name + (f" x{options['slices']}" if options["slices"] > 1 else "")
        hosts = sorted({d.process_index for d in devices})
        if plan.one_host and len(hosts) > 1:
            # Shared out between the hosts: each run compiles for (and runs on) one host's chips.
            devices = [d for d in devices if d.process_index == hosts[0]]
            plans[plans.index(plan)] = plan = dataclasses.replace(plan, side_by_side=len(hosts))
            names[plan.name] = f"one host of {names[plan.name]}"
        chips[plan.name] = chip
        print(f"[{plan.name}] compiling for {names[plan.name]} ({len(devices)} chips): "
              f"{plan.model.num_layers} layers, d={plan.model.embed_dim}, batch {plan.config.batch_size} x "
              f"{plan.config.sequence_length}", flush=True)
        if options["search"]:
            searches.append(search.search_stage(plan, devices, chip, options["num_domains"],
                                                log=lambda line: print(line, flush=True)))
            continue
        reports += aot_compile.compile_stage(plan, devices, chip, options["num_domains"])
    if options["search"]:
        return _print_search(searches, options["json"])
    result = report.to_json(plans, reports, chips, names)
    print(report.format_table(result), flush=True)
    if options["json"]:
        with open(options["json"], "w") as f:
            json.dump(result, f, indent=2)
    if not result["fits"]:
        worst = [f"{st['stage']}/{s['step']} needs {s['memory']['total'] / 2**30:.1f} GiB of "
                 f"{s['hbm_bytes'] / 2**30:.0f} GiB"
                 for st in result["stages"] for s in st["steps"] if not s["fits"]]
        config.fail("DOES NOT FIT: " + "; ".join(worst))


def _print_search(searches, json_path):
    from doremi_jax.aot import search

    print("", flush=True)
    for result in searches:
        print(search.format_result(result), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(searches, f, indent=2)
    missing = [r["stage"] for r in searches if r["best"] is None]
    if missing:
        config.fail(f"DOES NOT FIT: nothing in the search grid fits stage(s) {missing}")


if __name__ == "__main__":
    cli.main(run, sys.argv[1:])
