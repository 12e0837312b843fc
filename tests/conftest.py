"""Test set-up: 8 fake CPU devices (before jax is imported) and a private cache."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One demo corpus and token cache for the whole session, away from the user's.
os.environ.setdefault("DOREMI_CACHE", tempfile.mkdtemp(prefix="doremi-test-cache-"))

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_dir():
    from doremi_jax.data import demo

    return demo.build_demo_corpus()


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.default_backend()})"


def pytest_configure(config):
    # An asynchronous writer thread (orbax / clu) can call into an asyncio loop that is
    # already closed at teardown. pytest turns that into an "unraisable" warning, and on
    # Python 3.11.7 formatting it in the summary has crashed pytest itself after every
    # test had passed. The warning says nothing about the code under test.
    config.addinivalue_line("filterwarnings", "ignore::pytest.PytestUnraisableExceptionWarning")
