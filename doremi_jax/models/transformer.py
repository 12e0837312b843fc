"""A decoder-only transformer (Llama-style blocks) with logical axis names.

Every parameter is created through `nn.with_logical_partitioning`, and the main
activations carry `nn.with_logical_constraint`, so a short list of rules
(`doremi_jax.sharding`) decides how the model is split over a device mesh.

Inputs are packed: several documents per row, told apart by `segment_ids`
(0 = padding) and restarted `positions`; attention never crosses a segment.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax.errors import InputError

# Logical names of activations. They differ from the parameter names so that,
# under FSDP, `embed` of a weight can be split over `fsdp` while the batch of an
# activation is split over the same axis (the MaxText convention).
BATCH, LENGTH = "activation_batch", "activation_length"
ACT_EMBED, ACT_HEADS, ACT_MLP, ACT_VOCAB = (
    "activation_embed",
    "activation_heads",
    "activation_mlp",
    "activation_vocab",
)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "pallas_interpret")
PALLAS = ("pallas", "pallas_interpret")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and numerics of the model; bound by gin/models/*.gin."""

    vocab_size: int = 384  # seqio.ByteVocabulary (256 bytes + pad, eos, unk), padded to 128s
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 32
    mlp_dim: int = 512
    max_length: int = 256
    tied_embeddings: bool = True
    dtype: str = "float32"  # compute dtype of activations ("bfloat16" on TPU/GPU)
    param_dtype: str = "float32"
    remat_policy: str = "none"  # one of REMAT_POLICIES
    scan_layers: bool = False
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    embed_init_std: float = 0.02
    # Causal attention in query blocks of this size, each against only the keys it can
    # see (0: one call over the whole sequence). Skips the masked half of the scores;
    # faster on CPU, where no fused kernel exists (BENCHMARKS.md).
    attention_block_size: int = 0
    # Embedding lookup as a one-hot matmul: a dense gradient instead of a scatter-add
    # (faster on CPU and TPU for small vocabularies).
    one_hot_embed: bool = False
    # Kernel of the one-call attention (attention_block_size=0): "xla" (any platform,
    # every score matrix written to memory); "cudnn" (cuDNN flash attention on NVIDIA
    # GPUs; bfloat16/float16 only; the document mask travels as a bias; 1.28x on a 1B
    # step on an H200, BENCHMARKS.md); "pallas" (splash attention, jax's Pallas TPU
    # kernel, as MaxText uses it: causal and document masks applied in the kernel, no
    # score matrix in HBM; TPU only); "pallas_interpret" (the same kernel in Pallas'
    # interpreter, on any platform: for tests, slow).
    attention_implementation: str = "xla"
    # Query and key blocks of the Pallas kernel (a multiple of 128 on TPU, dividing the
    # sequence; capped at the sequence length). MaxText's default is 512.
    pallas_block_size: int = 512
    # Token losses (the model called with targets) in this many tiles along the sequence,
    # each tile's logits recomputed in the backward pass instead of kept: MaxText's
    # vocabulary tiling (`num_vocab_tiling`). The logits of a 50k vocabulary are most of a
    # small model's activations; tiled, only one tile's are live, for one more
    # unembedding matmul a step. 1: the whole sequence at once.
    vocab_tiles: int = 1

    def make(self, decode: bool = False) -> "nn.Module":
        """The Flax module this config describes. Everything that builds a model (the
        loop, set-up, evaluation, decoding, bench, aot) calls this, so another module
        plugs in by gin through a config class of its own with a `make`."""
        return Transformer(self, decode=decode)

    def __post_init__(self):
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise InputError(
                f"TransformerConfig.attention_implementation={self.attention_implementation!r}: "
                f"expected one of {list(ATTENTION_IMPLEMENTATIONS)}"
            )
        if self.attention_implementation == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise InputError(
                f"TransformerConfig.attention_implementation='cudnn' needs dtype bfloat16 or float16, got {self.dtype!r}"
            )
        if self.vocab_tiles <= 0:
            raise InputError(f"TransformerConfig.vocab_tiles={self.vocab_tiles}: expected a positive integer")
        if self.pallas_block_size <= 0:
            raise InputError(f"TransformerConfig.pallas_block_size={self.pallas_block_size}: expected a positive integer")
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(
                f"TransformerConfig.remat_policy={self.remat_policy!r}: expected one of "
                f"{sorted(REMAT_POLICIES)}"
            )

    def check_platform(self, platform: str) -> None:
        """Refuse, in one line, a kernel the devices of `platform` cannot run (the
        trainer calls this before tracing; `aot` compiles for TPUs from a CPU host)."""
        needs = {"cudnn": "gpu", "pallas": "tpu"}.get(self.attention_implementation)
        if needs and platform != needs:
            raise InputError(
                f"TransformerConfig.attention_implementation={self.attention_implementation!r} needs a "
                f"{needs.upper()}; this run's devices are {platform}"
                + (" ('pallas_interpret' runs the same kernel anywhere, slowly)" if needs == "tpu" else "")
            )

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)


def param_count(cfg: TransformerConfig) -> int:
    """Number of parameters, from the sizes alone (no initialisation)."""
    attn = 4 * cfg.embed_dim * cfg.num_heads * cfg.head_dim
    mlp = 3 * cfg.embed_dim * cfg.mlp_dim
    per_layer = attn + mlp + 2 * cfg.embed_dim
    embed = cfg.vocab_size * cfg.embed_dim * (1 if cfg.tied_embeddings else 2)
    return cfg.num_layers * per_layer + embed + cfg.embed_dim


def model_flops_per_step(cfg: TransformerConfig, batch: int, length: int, causal_savings: bool = True) -> dict[str, float]:
    """Training FLOPs of one LM step and one DoReMi step (MaxText's count), and the
    evaluation step's forward.

    Weights: 6·N·tokens (forward 2, backward 4), N without the input embedding lookup
    (the tied output projection is a real matmul and counts once). Attention scores and
    values: 4·B·S²·H·D per layer forward, halved for the causal mask (unless
    `causal_savings` is off: what a dense attention executes), ×3 for training.
    The DoReMi step adds one reference forward: 2·N·tokens plus forward attention.
    """
    tokens = batch * length
    n = param_count(cfg) - (0 if cfg.tied_embeddings else cfg.vocab_size * cfg.embed_dim)
    attn_fwd = 4 * batch * length**2 * cfg.num_heads * cfg.head_dim * cfg.num_layers / (2 if causal_savings else 1)
    forward = 2 * n * tokens + attn_fwd
    lm = 3 * forward
    return {"lm_step": lm, "doremi_step": lm + forward, "eval_step": forward, "tokens": tokens}


def _dense_init(fan_in: int):
    return nn.initializers.normal(stddev=fan_in**-0.5)


def _weight(module: nn.Module, name: str, shape, names, fan_in: int, cast: bool = True) -> jax.Array:
    """A matmul weight of `module` with logical axis names, initialised for `fan_in`
    inputs, stored in the weight dtype and returned in the compute dtype (unless not `cast`)."""
    init = nn.with_logical_partitioning(_dense_init(fan_in), names)
    w = module.param(name, init, shape, module.cfg.weight_dtype)
    return w.astype(module.cfg.compute_dtype) if cast else w


class RMSNorm(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.cfg.weight_dtype,
        )
        return rms_norm(x, scale, self.cfg.norm_eps, self.cfg.compute_dtype)


# The norm and the MLP's gated product with hand-written backward passes that keep only
# their inputs (and the norm's reciprocal RMS, one number a row): differentiated by jax,
# the norm keeps two float32 copies of its input for the backward pass and the gated
# product three more arrays as wide as the MLP. Without remat they were most of a
# 120M layer's memory (BENCHMARKS.md, fourteenth session); in float32 the results are
# the same to rounding (tests/test_models.py).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x, scale, eps, dtype):
    """x / RMS(x) * scale, computed in float32, returned in `dtype`."""
    return _rms_norm_fwd(x, scale, eps, dtype)[0]


def _rms_norm_fwd(x, scale, eps, dtype):
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * inv_rms * scale.astype(jnp.float32)).astype(dtype), (x, scale, inv_rms)


def _rms_norm_bwd(eps, dtype, residuals, dy):
    x, scale, inv_rms = residuals
    normed = x.astype(jnp.float32) * inv_rms
    dy = dy.astype(jnp.float32)
    g = dy * scale.astype(jnp.float32)
    dx = inv_rms * (g - normed * jnp.mean(g * normed, axis=-1, keepdims=True))
    dscale = jnp.sum(dy * normed, axis=tuple(range(x.ndim - 1)))
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def gated_product(g, u):
    """silu(g) * u, the gated MLP's hidden activation."""
    return nn.silu(g) * u


def _gated_product_fwd(g, u):
    return gated_product(g, u), (g, u)


def _gated_product_bwd(residuals, dh):
    g, u = residuals
    g32, u32, dh32 = g.astype(jnp.float32), u.astype(jnp.float32), dh.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    dg = dh32 * u32 * sig * (1.0 + g32 * (1.0 - sig))
    return dg.astype(g.dtype), (dh32 * g32 * sig).astype(u.dtype)


gated_product.defvjp(_gated_product_fwd, _gated_product_bwd)


def rotary_tables(positions: jax.Array, head_dim: int, theta: float, num_positions: int):
    """sin and cos of the rotary angles, float32[batch, length, 1, head_dim // 2], looked up in
    a table of positions 0 .. num_positions-1 that numpy computes while tracing.

    Computed in the graph instead, XLA fuses the sin and cos into every layer's q and k
    fusions and evaluates them once per head and layer, forward and backward (8 rotaries
    of the bench model: 116-134 ms -> 41-52 ms with the table, BENCHMARKS.md). The angles
    are float64 before rounding, as exact as float32 holds them. A position outside the
    table (which callers never pass: a position never exceeds its index in the row or
    the cache) gives NaN, not a silently wrong angle.
    """
    half = head_dim // 2
    angle = np.arange(num_positions, dtype=np.float64)[:, None] * theta ** (-np.arange(half) / half)

    def lookup(table):
        rows = jnp.take(jnp.asarray(table, jnp.float32), positions, axis=0, mode="fill", fill_value=jnp.nan)
        return rows[:, :, None, :]

    return lookup(np.sin(angle)), lookup(np.cos(angle))


def rotary(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary position embedding of x[..., head_dim] (heads and length in either order,
    the tables broadcast as x's: `rotary_tables`, or its axes swapped likewise).

    In x's dtype, as Hugging Face's Llama computes it (sin and cos cast to the
    activations' dtype): in float32, XLA:TPU writes q and k in float32 out of their
    matmuls and reads them back, 38% more bytes than this for a projection and its
    rotation, forward and backward (the halves swapped by a reverse instead: 22% more;
    BENCHMARKS.md, thirteenth session)."""
    sin, cos = (t.astype(x.dtype) for t in tables)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def on_rows(fn, x: jax.Array, features: int = 1) -> jax.Array:
    """fn applied to x[batch, length, *features] flattened to [batch*length, prod(features)];
    the result gets the leading dims back.

    Every projection goes through this because XLA:CPU computes the weight gradient of a
    3-D activation (a contraction over batch and length) by first writing the activation
    gradient transposed; a 2-D one it does not: the bench MLP's forward + backward
    490 -> 283 ms (BENCHMARKS.md). On TPU and GPU the reshapes are free (row-major bitcasts).
    """
    rows = x.shape[: x.ndim - features]
    y = fn(x.reshape(math.prod(rows), -1))
    return y.reshape(*rows, *y.shape[1:])


def project(x: jax.Array, kernel: jax.Array, contract: int) -> jax.Array:
    """x[batch, length, *in] @ kernel[*in, *out], the last `contract` dims of x against the
    first of kernel, as one 2-D matmul (`on_rows`)."""
    ins, outs = kernel.shape[:contract], kernel.shape[contract:]
    flat = on_rows(lambda rows: rows @ kernel.reshape(math.prod(ins), -1), x, contract)
    return flat.reshape(*flat.shape[:-1], *outs)


def causal_attention(q, k, v, segment_ids, block_size: int = 0, implementation: str = "xla"):
    """Attention within documents, causal. q, k, v: [batch, length, heads, head_dim].

    Through `jax.nn.dot_product_attention`, so that platforms with a fused kernel use it
    (`implementation="cudnn"`: cuDNN flash attention, GPU only). Pallas' splash attention
    (TPU) takes heads before length: `pallas_attention`, which the model calls itself.
    Padding (segment 0) attends only to padding, so no softmax row is empty.
    """
    length = q.shape[1]
    if not block_size or block_size >= length:
        if implementation == "cudnn" and jax.default_backend() != "gpu":
            raise InputError(
                f"TransformerConfig.attention_implementation='cudnn' needs a GPU; this run's backend is {jax.default_backend()}"
            )
        same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
        return jax.nn.dot_product_attention(
            q, k, v, mask=same_doc[:, None], is_causal=True,
            implementation="cudnn" if implementation == "cudnn" else None,
        )
    if length % block_size:
        raise InputError(f"sequence length {length} is not a multiple of attention_block_size={block_size}")
    index = jnp.arange(length)
    # Heads next to batch once, so that every block's matmuls are batched over leading
    # dims (XLA:CPU would otherwise transpose each block's keys and values again).
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # [batch, heads, length, head_dim]
    outs = []
    for start in range(0, length, block_size):
        end = start + block_size  # queries [start, end) see keys [0, end)
        mask = (segment_ids[:, start:end, None] == segment_ids[:, None, :end]) & (
            index[start:end, None] >= index[None, :end]
        )
        outs.append(_softmax_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask[:, None]))
    return jnp.swapaxes(jnp.concatenate(outs, axis=2), 1, 2)


HEADS_FIRST = (BATCH, ACT_HEADS, LENGTH, None)  # the Pallas kernel's layout of q, k, v
_LANES = 128  # the TPU vector unit's lane count: the kernel's tiles are multiples of it


def pallas_attention(q, k, v, segment_ids, block_size: int = 512, interpret: bool = False):
    """Splash attention: jax's Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.
    splash_attention`, MaxText's TPU attention), causal and within documents (segment
    ids), scores kept in VMEM block by block instead of written to HBM; blocks wholly
    above the diagonal are skipped. q, k, v and the result: [batch, heads, length,
    head_dim], the kernel's layout (the model projects into it: no transposes).

    A Pallas kernel is opaque to the SPMD partitioner, so under a mesh each device runs
    it on its own shard of batch and heads (`jax.shard_map` with the activations'
    logical sharding); the sequence must not be split. `interpret` runs the same kernel
    in Pallas' interpreter, on any platform (the tests' CPU check against the XLA path).
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    length, head_dim = q.shape[2], q.shape[3]
    if length < _LANES:
        # Shorter than one of the kernel's tiles: only initialisation's 8-token input (its
        # shapes) and short tests; the XLA path computes the same attention.
        q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
        return jnp.swapaxes(causal_attention(q, k, v, segment_ids), 1, 2)
    block = min(block_size, length)
    if length % block or block % _LANES:
        raise InputError(
            f"sequence length {length}: TransformerConfig.pallas_block_size={block_size} must divide it "
            f"(or exceed it) and be a multiple of {_LANES}"
        )
    mesh = jax.sharding.get_abstract_mesh()
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
    )

    def per_device(q, k, v, segment_ids):  # [batch, heads, length, head_dim] of one shard
        mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * q.shape[1])
        kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)
        ids = splash.SegmentIds(q=segment_ids, kv=segment_ids)
        return jax.vmap(kernel)(q, k, v, segment_ids=ids)

    q = q * jnp.asarray(head_dim**-0.5, q.dtype)  # the kernel's scores are not scaled
    segment_ids = segment_ids.astype(jnp.int32)
    if not mesh.empty:
        batch, heads, seq, _ = nn.logical_to_mesh_axes(HEADS_FIRST)
        if seq is not None:
            raise InputError(f"Pallas attention cannot split the sequence ({LENGTH} -> {seq!r} in MeshConfig.rules)")

        def splittable(axes, size):  # a dimension the mesh cannot split (a 1-row batch) stays whole
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            return axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None

        batch, heads = splittable(batch, q.shape[0]), splittable(heads, q.shape[1])
        spec = jax.sharding.PartitionSpec(batch, heads, None, None)
        per_device = jax.shard_map(
            per_device, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(batch, None)), out_specs=spec,
            check_vma=False,
        )
    return per_device(q, k, v, segment_ids)


def _softmax_attention(q, k, v, mask):
    """Plain einsum-softmax attention on [batch, heads, length, head_dim], scores in
    float32. The blocked path is for CPU, where no fused kernel exists; written out,
    XLA:CPU runs its backward faster than that of `jax.nn.dot_product_attention`
    (0.19 vs 0.24 s per bench layer, BENCHMARKS.md)."""
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v)


def cached_attention(q, k, v, segment_ids, cache, index):
    """Attention of a chunk of new queries against a key/value cache (decoding).

    q, k, v: [batch, chunk, heads, head_dim] for positions index .. index+chunk-1 of the
    cache; cache: dict of key, value [batch, cache_len, heads, head_dim] and segment_ids
    [batch, cache_len]. Returns (out, updated cache). Same masking as `causal_attention`:
    causal in cache order and within a segment, so left padding (segment 0) is never
    attended to by real tokens.
    """
    chunk = q.shape[1]
    keys = jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), (0, index, 0, 0))
    values = jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), (0, index, 0, 0))
    segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, index))
    query_index = index + jnp.arange(chunk)
    key_index = jnp.arange(keys.shape[1])
    mask = (segment_ids[:, :, None] == segments[:, None, :]) & (key_index[None, :] <= query_index[:, None])
    out = jax.nn.dot_product_attention(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask[:, None])
    return out, {"key": keys, "value": values, "segment_ids": segments}


class Attention(nn.Module):
    cfg: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        cfg = self.cfg
        # Explicit 3-D kernels (not DenseGeneral, which initialises a flat 2-D matrix and
        # so cannot carry three logical axis names under an active mesh).
        shape, names = (cfg.embed_dim, cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv")
        kernels = [_weight(self, n, shape, names, cfg.embed_dim) for n in ("query", "key", "value")]
        # Positions index the row, or in decoding the cache (as long as `init`'s input).
        cache = self.get_variable("cache", "key") if self.decode and self.has_variable("cache", "key") else None
        num_positions = cache.shape[1] if cache is not None else x.shape[1]
        tables = rotary_tables(positions, cfg.head_dim, cfg.rope_theta, num_positions)
        if cfg.attention_implementation in PALLAS and not self.decode:
            return self._heads_first(x, kernels, tables, segment_ids)
        q, k, v = (project(x, kernel, 1) for kernel in kernels)
        q, k = rotary(q, tables), rotary(k, tables)
        act_names = (BATCH, LENGTH, ACT_HEADS, None)
        q, k, v = (nn.with_logical_constraint(t, act_names) for t in (q, k, v))
        if self.decode:
            out = self._decode(q, k, v, segment_ids)
        else:
            out = causal_attention(q, k, v, segment_ids, cfg.attention_block_size, cfg.attention_implementation)
        out = nn.with_logical_constraint(out, act_names)
        return project(out, self._out_kernel(), 2)

    def _out_kernel(self):
        cfg = self.cfg
        return _weight(self, "out", (cfg.num_heads, cfg.head_dim, cfg.embed_dim), ("heads", "kv", "embed"),
                       cfg.num_heads * cfg.head_dim)

    def _heads_first(self, x, kernels, tables, segment_ids):
        """Attention through the Pallas kernel, in its layout: q, k and v come out of their
        matmuls as [batch, heads, length, head_dim], and the output projection reads the
        kernel's result as it is. Through the [batch, length, heads, head_dim] path,
        XLA:TPU transposes q, k, v and the result, forward and backward; from one stacked
        matmul it copies each of them out (BENCHMARKS.md, thirteenth session)."""
        cfg = self.cfg
        q, k, v = (nn.with_logical_constraint(jnp.einsum("bld,dhk->bhlk", x, w), HEADS_FIRST) for w in kernels)
        tables = tuple(jnp.swapaxes(t, 1, 2) for t in tables)  # [batch, 1, length, head_dim // 2]
        q, k = rotary(q, tables), rotary(k, tables)
        out = pallas_attention(q, k, v, segment_ids, cfg.pallas_block_size,
                               interpret=cfg.attention_implementation == "pallas_interpret")
        out = nn.with_logical_constraint(out, HEADS_FIRST)
        return jnp.einsum("bhlk,hkd->bld", out, self._out_kernel())

    def _decode(self, q, k, v, segment_ids):
        """Decoding with a cache in the `cache` collection. Its length is the length of the
        input `init` was called with; each call appends its chunk (prefill, then 1 token)."""
        initializing = not self.has_variable("cache", "key")
        cache = {
            "key": self.variable("cache", "key", jnp.zeros, k.shape, k.dtype),
            "value": self.variable("cache", "value", jnp.zeros, v.shape, v.dtype),
            "segment_ids": self.variable("cache", "segment_ids", jnp.zeros, segment_ids.shape, jnp.int32),
        }
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if initializing:  # shapes only: attend as in training
            return causal_attention(q, k, v, segment_ids)
        out, updated = cached_attention(q, k, v, segment_ids, {n: c.value for n, c in cache.items()}, index.value)
        for name, c in cache.items():
            c.value = updated[name]
        index.value = index.value + q.shape[1]
        return out


class Kernel(nn.Module):
    """A matmul's weight as `nn.Dense` holds it (`<name>/kernel`), for a caller that joins
    several weights into one matmul (or tiles one); returned in the compute dtype, or the
    weight dtype when not `cast`."""

    cfg: TransformerConfig
    shape: tuple[int, ...]
    names: tuple[str, ...]
    cast: bool = True

    @nn.compact
    def __call__(self):
        return _weight(self, "kernel", self.shape, self.names, self.shape[0], self.cast)


class GatedMLP(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate, up = (Kernel(cfg, (cfg.embed_dim, cfg.mlp_dim), ("embed", "mlp"), name=n)() for n in ("gate", "up"))
        if cfg.attention_implementation in PALLAS:
            # The TPU path: gate and up as one matmul, x read once, forward and for the
            # weights' gradient, and x's gradient one matmul with no sum of two. Stacked on
            # an axis of their own, not concatenated along `mlp` (which the mesh may split),
            # and leading: between rows and mlp, or through `on_rows`, XLA:TPU moved 13-21%
            # more bytes a step. (On CPU this 3-D matmul is 1.4x slower: see `on_rows`.)
            both = jnp.einsum("bld,tdm->tblm", x, jnp.stack([gate, up]))  # [2, batch, length, mlp]
            g, u = both[0], both[1]
        else:
            g, u = project(x, gate, 1), project(x, up, 1)
        h = nn.with_logical_constraint(gated_product(g, u), (BATCH, LENGTH, ACT_MLP))
        down = Kernel(cfg, (cfg.mlp_dim, cfg.embed_dim), ("mlp", "embed"), name="down")()
        return project(h, down, 1)


class Block(nn.Module):
    cfg: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, positions, segment_ids):
        x = x + Attention(self.cfg, self.decode, name="attention")(
            RMSNorm(self.cfg, name="attention_norm")(x), positions, segment_ids
        )
        x = x + GatedMLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x))
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        if self.cfg.scan_layers:
            return x, None
        return x


class Transformer(nn.Module):
    """tokens, positions, segment_ids: int32[batch, length] -> logits float32[batch, length, vocab];
    with `targets` (int32[batch, length]), the per-token cross-entropy instead, float32[batch,
    length], tiled along the sequence by `vocab_tiles` (the full logits never exist).

    With `decode=True` attention reads and appends to a key/value cache (the `cache`
    collection, made by `init` on an input as long as the cache): see eval/decoding.py.
    """

    cfg: TransformerConfig
    decode: bool = False

    @nn.compact
    def __call__(self, tokens, positions=None, segment_ids=None, targets=None):
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=cfg.embed_init_std), ("vocab", "embed")
            ),
            name="embed",
        )
        # Small embeddings (GPT-2 and Llama use std 0.02) make the first prediction nearly
        # uniform: a model at initialisation has no excess loss on a domain with nothing
        # to learn, which DoReMi's λ relies on.
        if cfg.one_hot_embed:
            onehot = jax.nn.one_hot(tokens, cfg.vocab_size, dtype=cfg.compute_dtype)
            x = jnp.einsum("blv,ve->ble", onehot, embed.embedding.astype(cfg.compute_dtype))
        else:
            x = embed(tokens)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))

        block = Block
        policy = REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            # One compiled block, run num_layers times: compile time stays flat in depth.
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, self.decode, name="layers")(x, positions, segment_ids)
        else:
            for i in range(cfg.num_layers):
                x = block(cfg, self.decode, name=f"layer_{i}")(x, positions, segment_ids)

        x = RMSNorm(cfg, name="final_norm")(x)
        # The output projection as a weight in the parameter dtype, [embed, vocab]: cast in
        # each tile, so that the tiles' gradients add up in the parameter dtype.
        if cfg.tied_embeddings:
            unembed = embed.embedding.T
        else:
            unembed = Kernel(cfg, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), cast=False, name="unembed")()

        def logits_of(x):
            logits = project(x, unembed.astype(cfg.compute_dtype), 1)
            return nn.with_logical_constraint(logits, (BATCH, LENGTH, ACT_VOCAB)).astype(jnp.float32)

        if targets is None:
            return logits_of(x)
        # The tiles in a loop when the layers are (compile time flat); unrolled with them,
        # which is also how `aot` counts a step's FLOPs and bytes (XLA's cost analysis
        # counts a loop's body once).
        return tiled_losses(lambda x, targets: cross_entropy(logits_of(x), targets), x, targets, cfg.vocab_tiles,
                            unroll=not cfg.scan_layers)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats of logits[..., vocab] against integer labels.

    log Σ exp(logits) − the label's logit, the label's picked by a masked sum rather than
    a gather (optax's softmax_cross_entropy_with_integer_labels): XLA then fuses both
    reductions over the vocabulary into the logits' consumers and never writes a float32
    copy of them. On a 256k vocabulary that is most of a step's memory traffic: the
    280M model's step compiled for TPU v4 moves 21% fewer bytes (BENCHMARKS.md). Same
    value to float32 rounding.
    """
    vocab = jnp.arange(logits.shape[-1], dtype=labels.dtype)
    label_logit = jnp.sum(jnp.where(vocab == labels[..., None], logits, 0.0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - label_logit


def tiled_losses(losses_of, x: jax.Array, targets: jax.Array, tiles: int, unroll: bool = False) -> jax.Array:
    """losses_of(x, targets) -> float32[batch, length], computed over `tiles` slices of the
    sequence one at a time (a `jax.lax.map`, or a Python loop if `unroll`), each
    rematerialised in the backward pass: only one slice's logits are ever live. The batch
    axis keeps its sharding."""
    if tiles == 1:
        return losses_of(x, targets)
    batch, length = targets.shape
    if length % tiles:
        raise InputError(f"sequence length {length} is not a multiple of TransformerConfig.vocab_tiles={tiles}")
    # Unrolled, XLA would merge a tile's recomputation with its forward (keeping the logits)
    # unless told not to; in a loop it cannot.
    tile = jax.checkpoint(lambda xt: losses_of(*xt), prevent_cse=unroll)
    if unroll:
        size = length // tiles
        return jnp.concatenate([tile((x[:, i:i + size], targets[:, i:i + size])) for i in range(0, length, size)], 1)

    def split(t):  # [batch, length, ...] -> [tiles, batch, length // tiles, ...]
        return jnp.swapaxes(t.reshape(batch, tiles, length // tiles, *t.shape[2:]), 0, 1)

    losses = jax.lax.map(tile, (split(x), split(targets)))
    return jnp.swapaxes(losses, 0, 1).reshape(batch, length)
