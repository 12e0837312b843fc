"""Pallas splash attention (`TransformerConfig.attention_implementation='pallas'`): the
TPU kernel run in Pallas' interpreter on this CPU host against the XLA path, forward
and gradients, alone, in the model, under a device mesh, and from the command line.

Tolerances: float32 inputs agree to 2e-5 (the kernel's online softmax sums in another
order); bfloat16 ones to 2% of the largest value (bfloat16 keeps 8 bits: 0.4% a rounding,
and the two paths round the probabilities and the output at different points).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import sharding
from doremi_jax.models import TransformerConfig
from doremi_jax.models.transformer import causal_attention, pallas_attention

LENGTH, BLOCK = 256, 128  # two blocks: the kernel skips the one above the diagonal
TOLERANCE = {"float32": dict(rtol=2e-5, atol=2e-5), "bfloat16": dict(rtol=0, atol=0.02)}


def segments(batch=2):
    """Two packed documents and trailing padding (segment 0) in one row, one document in the other."""
    seg = np.ones((batch, LENGTH), np.int32)
    seg[0, 100:230] = 2
    seg[0, 230:] = 0
    return jnp.asarray(seg)


def close(a, b, dtype):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    tol = TOLERANCE[dtype]
    scale = 1.0 if dtype == "float32" else max(np.abs(b).max(), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, **tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_matches_the_xla_path_forward_and_gradients(dtype):
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, LENGTH, 2, 64), dtype) for i in range(3))
    seg = segments()
    heads_first = lambda f: lambda *qkv: jnp.swapaxes(f(*(jnp.swapaxes(t, 1, 2) for t in qkv)), 1, 2)  # noqa: E731
    paths = {
        "xla": lambda q, k, v: causal_attention(q, k, v, seg),
        # The kernel's layout: [batch, heads, length, head_dim].
        "pallas": heads_first(lambda q, k, v: pallas_attention(q, k, v, seg, BLOCK, interpret=True)),
    }
    outs = {name: f(q, k, v) for name, f in paths.items()}
    assert outs["pallas"].dtype == q.dtype and outs["pallas"].shape == q.shape
    close(outs["pallas"], outs["xla"], dtype)
    # A loss that weighs every output differently, so that every gradient entry is tested.
    weights = jax.random.normal(jax.random.PRNGKey(9), q.shape, jnp.float32)
    grads = {name: jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v).astype(jnp.float32) * weights), (0, 1, 2))(q, k, v)
             for name, f in paths.items()}
    for mine, theirs in zip(grads["pallas"], grads["xla"]):
        close(mine, theirs, dtype)


def test_padding_and_documents_are_masked_inside_the_kernel():
    """A token's output depends on its own document's earlier tokens only."""
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 2, LENGTH, 64)) for i in range(3))
    seg = segments()
    base = pallas_attention(q, k, v, seg, BLOCK, interpret=True)
    # Change the first document and everything after position 150 in the second one.
    k2 = k.at[0, :, :100].set(0.0).at[0, :, 150:].multiply(-1.0)
    moved = pallas_attention(q, k2, v, seg, BLOCK, interpret=True)
    np.testing.assert_allclose(moved[0, :, 100:150], base[0, :, 100:150], rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved[0, :, 150:230], base[0, :, 150:230])


MODEL = TransformerConfig(vocab_size=384, embed_dim=64, num_layers=2, num_heads=4, head_dim=16, mlp_dim=128,
                          max_length=LENGTH, pallas_block_size=BLOCK)


def model_loss(cfg, params, tokens, seg):
    positions = jnp.asarray(np.where(np.asarray(seg) == 2, np.arange(LENGTH) - 100, np.arange(LENGTH)))
    logits = cfg.make().apply(params, tokens, positions, seg)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_model_with_pallas_attention_computes_the_same_loss_and_gradient(dtype):
    xla = dataclasses.replace(MODEL, dtype=dtype)
    pallas = dataclasses.replace(xla, attention_implementation="pallas_interpret")
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, LENGTH), 0, 384)
    seg = segments()
    params = xla.make().init(jax.random.PRNGKey(1), tokens)
    (l1, g1), (l2, g2) = (jax.value_and_grad(lambda p, c=c: model_loss(c, p, tokens, seg))(params) for c in (xla, pallas))
    close(l2, l1, dtype)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        close(a, b, dtype)


def test_under_a_mesh_each_device_runs_the_kernel_on_its_shard():
    """FSDP x tensor over 8 CPU devices: batch split over data and fsdp, heads over
    tensor (shard_map); the same loss and gradients as the XLA path on one device."""
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:8])
    pallas = dataclasses.replace(MODEL, attention_implementation="pallas_interpret")
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, LENGTH), 0, 384)
    seg = segments(4)
    params = MODEL.make().init(jax.random.PRNGKey(1), tokens)
    expected = jax.value_and_grad(lambda p: model_loss(MODEL, p, tokens, seg))(params)
    with sharding.activate(mesh, mesh_cfg.rules):
        step = jax.jit(jax.value_and_grad(lambda p: model_loss(pallas, p, tokens, seg)))
        text = step.lower(params).as_text()
        got = step(params)
    assert "shard_map" in text or "manual" in text  # the kernel ran per shard
    close(got[0], expected[0], "float32")
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(expected[1])):
        close(a, b, "float32")


def test_bad_pallas_settings_are_one_line_errors():
    q = jnp.zeros((1, 2, 384, 64))
    seg = jnp.ones((1, 384), jnp.int32)
    with pytest.raises(ValueError, match="pallas_block_size=256 must divide it"):
        pallas_attention(q, q, q, seg, 256, interpret=True)
    with pytest.raises(ValueError, match="pallas_block_size=0"):
        TransformerConfig(pallas_block_size=0)
    with pytest.raises(ValueError, match="'pallas' needs a TPU; this run's devices are cpu"):
        TransformerConfig(attention_implementation="pallas").check_platform("cpu")
    TransformerConfig(attention_implementation="pallas").check_platform("tpu")
    TransformerConfig(attention_implementation="pallas_interpret").check_platform("cpu")


def test_training_from_the_command_line_with_the_kernel(tmp_path, capsys):
    """`python -m doremi_jax.train` on a written corpus with the interpreted kernel (and the
    loss in vocabulary tiles); the TPU kernel on this CPU host is a one-line error before
    anything is written."""
    from doremi_jax import cli
    from doremi_jax.train import __main__ as train_main
    from helpers import write_three_domain_corpus

    data = write_three_domain_corpus(str(tmp_path / "corpus"), docs_per_domain=40)
    args = ["--gin_file=gin/runs/main.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
            "--gin.SEQUENCE_LENGTH=128", "--gin.TrainConfig.eval_tokens_per_domain=256", "--gin.TRAIN_STEPS=2",
            f"--gin.DATA_DIR='{data}'"]
    refused = tmp_path / "refused"
    with pytest.raises(SystemExit) as e:
        cli.main(train_main.run, [*args, "--gin.TransformerConfig.attention_implementation='pallas'",
                                  f"--workdir={refused}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "'pallas' needs a TPU" in err, err
    assert not refused.exists() or not any(refused.iterdir())
    workdir = tmp_path / "run"
    # With the loss in vocabulary tiles too (what the Pile experiments run on TPU).
    cli.main(train_main.run, [*args, "--gin.TransformerConfig.attention_implementation='pallas_interpret'",
                              "--gin.TransformerConfig.vocab_tiles=4", f"--workdir={workdir}"])
    run = json.load(open(workdir / "run.json"))
    assert run["model"]["attention_implementation"] == "pallas_interpret" and run["model"]["vocab_tiles"] == 4
    assert json.load(open(workdir / "summary.json"))["step"] == 2
