"""The transformer: shapes, causality, packed documents, logical axis names, options."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax.models import Transformer, TransformerConfig, param_count

CFG = TransformerConfig(vocab_size=67, embed_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64, max_length=32)


def init(cfg, length=16):
    tokens = jnp.zeros((2, length), jnp.int32)
    return nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"])


@pytest.fixture(scope="module")
def params():
    return init(CFG)


def apply(params, tokens, positions=None, segments=None, cfg=CFG):
    return Transformer(cfg).apply({"params": params}, tokens, positions, segments)


def test_shapes_dtype_and_count(params):
    tokens = jnp.ones((3, 16), jnp.int32)
    logits = apply(params, tokens)
    assert logits.shape == (3, 16, CFG.vocab_size) and logits.dtype == jnp.float32
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == param_count(CFG)


def test_causal(params):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (1, 16))
    base = apply(params, tokens)
    for j in (3, 9, 15):
        changed = tokens.copy()
        changed[0, j] = (changed[0, j] + 1) % CFG.vocab_size
        out = apply(params, changed)
        np.testing.assert_allclose(out[0, :j], base[0, :j], atol=1e-5)
        assert np.abs(out[0, j] - base[0, j]).max() > 1e-4


def test_packed_documents_are_independent(params):
    rng = np.random.default_rng(1)
    a = rng.integers(0, CFG.vocab_size, 7)
    b = rng.integers(0, CFG.vocab_size, 9)
    packed = np.concatenate([a, b])[None]
    segments = np.asarray([[1] * 7 + [2] * 9])
    positions = np.asarray([list(range(7)) + list(range(9))])
    out = apply(params, packed, positions, segments)
    alone_b = apply(params, b[None])
    alone_a = apply(params, a[None])
    np.testing.assert_allclose(out[0, 7:], alone_b[0], atol=1e-5)
    np.testing.assert_allclose(out[0, :7], alone_a[0], atol=1e-5)
    # Without segment ids the second document does see the first.
    joined = apply(params, packed, positions)
    assert np.abs(joined[0, 7:] - alone_b[0]).max() > 1e-4


def test_every_parameter_has_logical_names():
    boxed = jax.eval_shape(
        lambda: Transformer(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    )
    specs = nn.get_partition_spec(boxed)
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(leaves) == len(jax.tree.leaves(nn.meta.unbox(boxed)))
    names = {n for spec in leaves for n in spec}
    assert {"embed", "mlp", "heads", "kv", "vocab", "norm"} <= names


def test_scan_and_remat_compute_the_same_function(params):
    tokens = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 16))
    base = apply(params, tokens)
    remat = dataclasses.replace(CFG, remat_policy="full")
    np.testing.assert_allclose(apply(params, tokens, cfg=remat), base, atol=1e-5)
    scanned = dataclasses.replace(CFG, scan_layers=True, remat_policy="dots")
    p = init(scanned)
    assert p["layers"]["mlp"]["up"]["kernel"].shape == (CFG.num_layers, CFG.embed_dim, CFG.mlp_dim)
    # Stack the unrolled layers' params into the scanned layout: same outputs.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layer_{i}"] for i in range(CFG.num_layers)])
    p = {k: v for k, v in params.items() if not k.startswith("layer_")} | {"layers": stacked}
    np.testing.assert_allclose(apply(p, tokens, cfg=scanned), base, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    p = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    out = apply(p, jnp.ones((1, 8), jnp.int32), cfg=cfg)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_untied_embeddings_add_an_unembedding():
    cfg = dataclasses.replace(CFG, tied_embeddings=False)
    p = init(cfg)
    assert p["unembed"]["kernel"].shape == (CFG.embed_dim, CFG.vocab_size)
    assert sum(x.size for x in jax.tree.leaves(p)) == param_count(cfg)


def test_bad_remat_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="remat_policy"):
        TransformerConfig(remat_policy="sometimes")


def test_blocked_attention_equals_one_call():
    """The CPU path (query blocks, einsum softmax) computes the same function and gradient
    as one `dot_product_attention` call, with packed documents and padding."""
    from doremi_jax.models.transformer import causal_attention

    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 64, 4, 16)) for i in range(3))
    seg = jnp.concatenate([jnp.ones((2, 40), jnp.int32), 2 * jnp.ones((2, 20), jnp.int32), jnp.zeros((2, 4), jnp.int32)], 1)
    one, blocked = (lambda q, k, v, b=b: jnp.sum(jnp.sin(causal_attention(q, k, v, seg, b))) for b in (0, 16))
    np.testing.assert_allclose(one(q, k, v), blocked(q, k, v), rtol=1e-5)
    for g1, g2 in zip(jax.grad(one, (0, 1, 2))(q, k, v), jax.grad(blocked, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g1, g2, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of attention_block_size=24"):
        causal_attention(q, k, v, seg, 24)


def test_rotary_tables_are_exact_and_relative():
    from doremi_jax.models.transformer import rotary, rotary_tables

    head_dim, theta, rows = 16, 10_000.0, 64
    positions = jnp.asarray(np.random.default_rng(0).integers(0, rows, (2, 12)), jnp.int32)
    sin, cos = rotary_tables(positions, head_dim, theta, rows)
    angle = np.asarray(positions, np.float64)[..., None] * theta ** (-np.arange(8) / 8)
    np.testing.assert_allclose(np.asarray(sin[:, :, 0]), np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cos[:, :, 0]), np.cos(angle), atol=1e-6)
    # Rotary's point: q·k depends only on how far apart the positions are.
    q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1, head_dim))

    def score(pq, pk):
        at = lambda p: rotary_tables(jnp.full((1, 1), p, jnp.int32), head_dim, theta, rows)  # noqa: E731
        return float(jnp.sum(rotary(q, at(pq)) * rotary(k, at(pk))))

    assert score(40, 33) == pytest.approx(score(7, 0), rel=1e-5)
    assert score(40, 33) != pytest.approx(score(40, 34), rel=1e-3)
    # A position past the table is NaN, not a wrapped or clipped angle.
    assert np.isnan(rotary_tables(jnp.full((1, 1), rows, jnp.int32), head_dim, theta, rows)[0]).all()


def test_the_norm_and_gated_product_backward_passes_match_autodiff():
    """The hand-written VJPs against jax's autodiff of the plain formulas."""
    from doremi_jax.models.transformer import gated_product, rms_norm

    rng = np.random.default_rng(3)
    x, w = (jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32) for _ in range(2))
    scale = jnp.asarray(rng.normal(size=16), jnp.float32)

    def plain_norm(x, scale):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale

    def loss(norm):
        return lambda x, scale: jnp.sum(w * norm(x, scale))

    ours = jax.grad(loss(lambda x, s: rms_norm(x, s, 1e-6, jnp.float32)), (0, 1))(x, scale)
    for a, b in zip(ours, jax.grad(loss(plain_norm), (0, 1))(x, scale)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    g, u = x, x[::-1] + 0.5
    ours = jax.grad(lambda g, u: jnp.sum(w * gated_product(g, u)), (0, 1))(g, u)
    for a, b in zip(ours, jax.grad(lambda g, u: jnp.sum(w * nn.silu(g) * u), (0, 1))(g, u)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # In bfloat16, the backward computes in float32: as close as bfloat16 holds it.
    bf = [t.astype(jnp.bfloat16) for t in (g, u)]
    ours = jax.grad(lambda g, u: jnp.sum(w * gated_product(g, u)), (0, 1))(*bf)
    exact = jax.grad(lambda g, u: jnp.sum(w * nn.silu(g) * u), (0, 1))(*(t.astype(jnp.float32) for t in bf))
    for a, b in zip(ours, exact):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=2e-2, atol=2e-2)


def test_a_layer_keeps_no_float32_copy_of_its_input_for_the_backward_pass(capsys):
    """Without remat, a layer's backward pass reads what its forward pass saved. The norm
    and the gated product keep only their inputs: nothing as wide as the model in float32
    (jax's own backward of the norm kept two such copies per norm) and two arrays as wide
    as the MLP besides the down projection's input (it kept five)."""
    from jax import ad_checkpoint

    from doremi_jax.models.transformer import Block

    cfg = dataclasses.replace(CFG, dtype="bfloat16", mlp_dim=96)  # sizes no other array shares
    block = Block(cfg)
    x = jnp.ones((2, 8, cfg.embed_dim), jnp.bfloat16)  # 8 x 8 scores: not as many as 8 x embed_dim
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    segments = jnp.ones((2, 8), jnp.int32)
    p = block.init(jax.random.PRNGKey(0), x, positions, segments)
    ad_checkpoint.print_saved_residuals(lambda p, x: block.apply(p, x, positions, segments), p, x)
    saved = capsys.readouterr().out.splitlines()
    sizes = [(line.split("[")[0], math.prod(int(d) for d in line.split("[")[1].split("]")[0].split(",") if d))
             for line in saved if "[" in line]
    tokens = x.shape[0] * x.shape[1]
    assert ("f32", tokens * cfg.embed_dim) not in sizes, "\n".join(saved)
    assert sum(size == tokens * cfg.mlp_dim for _, size in sizes) <= 3, "\n".join(saved)


@pytest.mark.parametrize("tied", [True, False])
def test_vocab_tiles_give_the_same_losses_and_gradients(tied):
    """The model called with targets: per-token cross-entropy, tiled or not, equal to the
    cross-entropy of its logits; gradients equal to float32 rounding."""
    from doremi_jax.models.transformer import cross_entropy

    cfg = dataclasses.replace(CFG, tied_embeddings=tied)
    p = init(cfg)
    rng = np.random.default_rng(4)
    tokens, targets = (jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 16))) for _ in range(2))
    weights = jnp.asarray(rng.random((2, 16)), jnp.float32)

    def loss(p, tiles):
        tl = Transformer(dataclasses.replace(cfg, vocab_tiles=tiles)).apply({"params": p}, tokens, targets=targets)
        return jnp.sum(tl * weights), tl

    from_logits = cross_entropy(apply(p, tokens, cfg=cfg), targets)
    (_, tl1), g1 = jax.value_and_grad(loss, has_aux=True)(p, 1)
    (_, tl4), g4 = jax.value_and_grad(loss, has_aux=True)(p, 4)
    np.testing.assert_allclose(tl1, from_logits, rtol=1e-6)
    np.testing.assert_allclose(tl4, tl1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="vocab_tiles=3"):
        loss(p, 3)
    with pytest.raises(ValueError, match="vocab_tiles=0"):
        TransformerConfig(vocab_tiles=0)


def test_vocab_tiles_keep_one_tiles_logits_live():
    """Compiled (XLA:CPU) training gradient of a model whose logits are most of its
    memory: tiled 8 ways, the step's temporary memory is under half the untiled one's.
    (Scanned layers, as the Pile experiments run: the tiles are a loop then.)"""
    cfg = dataclasses.replace(CFG, vocab_size=4096, scan_layers=True)
    p = init(cfg)
    tokens = jnp.zeros((4, 256), jnp.int32)

    def temp_bytes(tiles):
        model = Transformer(dataclasses.replace(cfg, vocab_tiles=tiles))
        grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens, targets=tokens))))
        return grad.lower(p).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4 * 256 * 4096 * 4
    untiled, tiled = temp_bytes(1), temp_bytes(8)
    assert untiled > logits_bytes and tiled < untiled / 2, (untiled, tiled)
