"""The benchmark: its FLOP count against XLA's, and its command line (gin, JSON, errors)."""

import json

import jax
import jax.numpy as jnp
import pytest

from doremi_jax import bench
from doremi_jax.models import Transformer, TransformerConfig, model_flops_per_step, param_count

TINY = TransformerConfig(vocab_size=256, embed_dim=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=512, max_length=512)


def test_model_flops_match_xla_count_of_the_forward():
    """The weight and attention terms of the count, checked against what XLA counts for
    the compiled forward (which computes the full, unhalved attention and adds a little
    element-wise work): a missing or unhalved attention term is 16% off here."""
    batch, length = 4, 512  # long enough that attention is a third of the forward
    flops = model_flops_per_step(TINY, batch, length)
    forward = flops["doremi_step"] - flops["lm_step"]  # the DoReMi step adds one reference forward
    assert flops["lm_step"] == pytest.approx(3 * forward)  # training: forward + backward (2x)
    # XLA computes the masked half of the causal scores too: QK^T and PV, 2 FLOPs per MAC.
    masked_half = 2 * batch * length**2 * TINY.num_heads * TINY.head_dim * TINY.num_layers
    model = Transformer(TINY)
    tok = jnp.zeros((batch, length), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tok)["params"]
    compiled = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(params, tok).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    expected = forward + masked_half
    assert abs(xla - expected) / expected < 0.05, (xla, expected)  # 2% here
    assert flops["tokens"] == batch * length


def test_bench_command_applies_gin_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main([
        "--gin_file=gin/models/tiny.gin",
        "--gin.BenchConfig.batch_size=8",
        "--gin.BenchConfig.sequence_length=64",
        "--gin.BenchConfig.warmup_steps=1",
        "--gin.BenchConfig.timed_steps=2",
        "--gin.BenchConfig.matmul_size=128",
        "--gin.BenchConfig.data=False",
        "--json", str(out),
    ])
    r = json.loads(out.read_text())
    tiny_embed_dim = 64  # gin/models/tiny.gin replaces every size of gin/bench.gin
    assert r["batch_size"] == 8 and r["sequence_length"] == 64
    assert r["params"] == param_count(TransformerConfig(
        vocab_size=384, embed_dim=tiny_embed_dim, num_layers=2, num_heads=4, head_dim=16, mlp_dim=256,
    ))
    assert r["lm_step_s"] > 0 and r["doremi_step_s"] > 0
    assert r["doremi_over_lm_time"] == pytest.approx(r["doremi_step_s"] / r["lm_step_s"])
    assert r["lm_step_flops_per_s"] == pytest.approx(r["lm_step_model_flops"] / r["lm_step_s"])
    # The 8 CPU test devices share this host's cores, which the peak matmul already used.
    assert r["devices"] == jax.device_count() == 8 and r["measured_peak_units"] == 1
    assert r["lm_step_mfu_measured_peak"] == pytest.approx(r["lm_step_flops_per_s"] / r["measured_peak_flops_per_s"])
    assert "input_tokens_per_s" not in r  # BenchConfig.data=False was applied
    table = capsys.readouterr().out
    assert "lm_step" in table and "doremi / lm step time" in table


def test_bench_bad_argument_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--gin_file=gin/models/tiny.gin", "--jsn", "x.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--jsn" in err


def test_cudnn_attention_off_gpu_is_a_clear_error():
    cfg = TransformerConfig(**{**TINY.__dict__, "dtype": "bfloat16", "attention_implementation": "cudnn"})
    model = Transformer(cfg)
    with pytest.raises(ValueError, match="needs a GPU"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        TransformerConfig(attention_implementation="cudnn")
    with pytest.raises(ValueError, match="attention_implementation='flash'"):
        TransformerConfig(attention_implementation="flash")
