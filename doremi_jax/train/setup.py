"""What the loop builds before its first step, and what the benchmark and the
ahead-of-time compile build the same way: parameter and train-state shapes with their
shardings (no array made, so compile-only devices serve too), the state initialised
directly sharded, and the jitted steps with explicit shardings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax import sharding
from doremi_jax.jit_cache import memoized
from doremi_jax.models import TransformerConfig
from doremi_jax.train.state import TrainState


# A PRNG key as a shape: no array is made, so these run on compile-only devices too.
_KEY_SHAPE = jax.ShapeDtypeStruct((2,), jnp.uint32)


@memoized
def abstract_params(model_cfg: TransformerConfig, mesh, rules):
    """Shapes and shardings of a model's parameters, without allocating them."""
    dummy = np.zeros((1, min(8, model_cfg.max_length)), np.int32)  # numpy: no device array
    init = lambda r: model_cfg.make().init(r, dummy)["params"]  # noqa: E731
    with sharding.activate(mesh, rules):
        boxed = jax.eval_shape(init, _KEY_SHAPE)
        shardings = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh, rules)
    # Unboxed without a sharding constraint: these are shapes, not traced values.
    shapes = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False), boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return abstract, shardings


def _init_fn(model_cfg, tx, method):
    """rng, initial weights -> a fresh TrainState (traced under jit or eval_shape, never
    eagerly); the mixture `method` gives its own state."""
    model = model_cfg.make()
    dummy = np.zeros((1, min(8, model_cfg.max_length)), np.int32)  # numpy: no device array

    def init_fn(rng, alpha):
        params = nn.meta.unbox(model.init(rng, dummy)["params"])
        return TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            domain_weights=alpha,
            method_state=method.init_state(alpha),
            nonfinite_steps=jnp.zeros([], jnp.int32),
        )

    return init_fn


@memoized
def abstract_state(model_cfg, tx, num_domains, mesh, rules, method):
    """The train state as shapes with their shardings (nothing allocated), its
    shardings and the parameters' shardings: what `init_state` would build, and what
    the ahead-of-time compile (`doremi_jax.aot`) lowers the steps against."""
    _, param_shardings = abstract_params(model_cfg, mesh, rules)
    alpha = jax.ShapeDtypeStruct((num_domains,), jnp.float32)
    with sharding.activate(mesh, rules):
        shapes = jax.eval_shape(_init_fn(model_cfg, tx, method), _KEY_SHAPE, alpha)
        # Optimizer moments follow their parameters; everything else is replicated.
        state_shardings = _state_shardings(shapes, param_shardings, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shardings
    )
    return abstract, state_shardings, param_shardings


def init_state(model_cfg, tx, weights, rng, mesh, rules, method):
    """The train state, initialised directly sharded (never materialised whole)."""
    _, state_shardings, param_shardings = abstract_state(
        model_cfg, tx, len(weights), mesh, rules, method
    )
    with sharding.activate(mesh, rules):
        state = _jit_init(model_cfg, tx, method, state_shardings)(rng, jnp.asarray(weights, jnp.float32))
    return state, state_shardings, param_shardings


@memoized
def _jit_init(model_cfg, tx, method, state_shardings):
    return jax.jit(_init_fn(model_cfg, tx, method), out_shardings=state_shardings)


def _state_shardings(abstract: TrainState, param_shardings, mesh):
    replicated = sharding.replicated(mesh)
    param_paths = {
        path: s for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
    }

    def opt_leaf(path, leaf):
        # Adam's mu/nu mirror the params tree: match them by the path's tail.
        for n in range(len(path), 0, -1):
            s = param_paths.get(tuple(path[-n:]))
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return replicated

    opt_shardings = jax.tree_util.tree_map_with_path(opt_leaf, abstract.opt_state)
    rest = jax.tree.map(lambda _: replicated, abstract)
    return rest.replace(params=param_shardings, opt_state=opt_shardings)


@memoized
def jit_step(model, tx, method, num_domains, microbatches, mesh, state_shardings, reference=None):
    """The mixture `method`'s step, jitted with explicit shardings and the state donated,
    not yet bound to data: (state, batch) -> (state, metrics); or, with `reference` =
    (reference model, its params' shardings), (state, batch, reference params) ->
    (state, metrics). The trainer, the benchmark and the ahead-of-time compile all
    compile this one; equal arguments give the same function (`jit_cache`), so stages of
    one shape in one process compile it once."""
    batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    reference_model, ref_shardings = reference if reference is not None else (None, None)
    step = method.step_fn(
        model=model, tx=tx, num_domains=num_domains, microbatches=microbatches, reference_model=reference_model
    )
    in_shardings = (state_shardings, batch_shard) + ((ref_shardings,) if reference is not None else ())
    return jax.jit(
        step, in_shardings=in_shardings, out_shardings=(state_shardings, replicated), donate_argnums=(0,)
    )


def compile_step(model, tx, method, num_domains, microbatches, mesh, state_shardings, reference=None):
    """`run_step(state, batch) -> (state, metrics)`: `jit_step`, with `reference` (its
    `model`, `shardings` and current `params`, `workdir.Reference`) passed to every call."""
    if reference is None:
        return jit_step(model, tx, method, num_domains, microbatches, mesh, state_shardings)
    step_fn = jit_step(
        model, tx, method, num_domains, microbatches, mesh, state_shardings, (reference.model, reference.shardings),
    )
    return lambda s, b: step_fn(s, b, reference.params)
