"""Test set-up: 8 fake CPU devices (before jax is imported) and a private cache.

pytest.ini runs the suite on two xdist workers (one per core here), a test file per
worker at a time so that a module's shared runs are made once. The workers inherit
this process's environment: one demo corpus, token cache and compilation cache for all.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One demo corpus and token cache for the whole session, away from the user's (made by
# the controller, or by a lone pytest process; removed by whoever made it).
_OWN_CACHE = "DOREMI_CACHE" not in os.environ
os.environ.setdefault("DOREMI_CACHE", tempfile.mkdtemp(prefix="doremi-test-cache-"))
# Compiled programs shared by every test and entry process of the session (the entries'
# default place, set here for the in-process runs too), the small ones included: most
# of a tiny run's time is compiling steps that an earlier run compiled already.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["DOREMI_CACHE"], "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

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
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        # Built once before the workers start, rather than by both at once.
        from doremi_jax.data import demo

        demo.build_demo_corpus()
    # An asynchronous writer thread (orbax / clu) can call into an asyncio loop that is
    # already closed at teardown. pytest turns that into an "unraisable" warning, and on
    # Python 3.11.7 formatting it in the summary has crashed pytest itself after every
    # test had passed. The warning says nothing about the code under test.
    config.addinivalue_line("filterwarnings", "ignore::pytest.PytestUnraisableExceptionWarning")


# Every test here must run where the project is installed: a skip (a planted
# `importorskip`, a broken optional import) would silently shrink the suite. The session
# fails when any test was skipped; DOREMI_ALLOW_SKIPS=1 allows it for a local partial run.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_collectreport(report):
    if report.skipped:  # a whole module skipped at import (`importorskip` at the top)
        _SKIPPED.append(report.nodeid)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["DOREMI_CACHE"], ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED and os.environ.get("DOREMI_ALLOW_SKIPS") != "1" and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED:
        verdict = "allowed (DOREMI_ALLOW_SKIPS=1)" if os.environ.get("DOREMI_ALLOW_SKIPS") == "1" else "the run fails"
        terminalreporter.write_line(f"{len(_SKIPPED)} test(s) skipped, {verdict}:", red=True)
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  {nodeid}")
