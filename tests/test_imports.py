"""The core imports without tensorflow or seqio (an accelerator host may have neither)."""

import subprocess
import sys

from conftest import REPO


def test_core_does_not_import_tensorflow_or_seqio():
    code = (
        "import sys\n"
        "import doremi_jax.models, doremi_jax.dro, doremi_jax.train, doremi_jax.train.loop, "
        "doremi_jax.train.steps, doremi_jax.sharding, doremi_jax.checkpoints, doremi_jax.bench, "
        "doremi_jax.eval.downstream, doremi_jax.eval.decoding, doremi_jax.fileio, doremi_jax.pipeline, "
        "doremi_jax.losses, doremi_jax.aot.compile, doremi_jax.aot.plan\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio', 'tensorflow_datasets'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]
