"""A mixture method is one folder behind one registry: a method written here, outside the
package, runs through the pipeline, the comparison, the report and `aot`'s plan; the
temperature method's rates; and no module outside a method's folder names a method."""

import ast
import json
import os
import textwrap

import numpy as np
import pytest

from doremi_jax.methods.temperature import temperature_rates

from conftest import REPO
from helpers import write_three_domain_corpus
from test_command_line import SHRINK, one_line_error, run_entry

TOY = '''
"""A toy method: a test's own, registered from outside the package."""
import dataclasses
import os

from doremi_jax import methods
from doremi_jax.data import weights as weights_lib
from doremi_jax.stages import file_hash


@methods.register
@dataclasses.dataclass(frozen=True)
class FirstDomainHeavy(methods.Method):
    name = "toy"
    label = "Toy"
    cost = "none (a test's method)"

    share: float = 0.5  # the first domain's; the rest share the remainder equally

    def search(self, ctx, search):
        domains, _ = ctx.training_tokens
        rest = (1.0 - self.share) / (len(domains) - 1)
        mixture = dict(zip(domains, [self.share] + [rest] * (len(domains) - 1)))
        path = os.path.join(ctx.workdir, "toy", "domain_weights.json")
        weights_lib.write_weights(path, list(mixture), list(mixture.values()))
        return methods.Found(path, file_hash(path), mixture, record={"share": self.share})

    def combine(self, ctx, found, domains):
        return {"toy_share": self.share}

    def report(self, workdir, evaluation, found, domains):
        return ["## The toy's section", "", f"First domain's share: {self.share}.", ""]
'''


@pytest.fixture
def toy(tmp_path):
    """The toy's module on a folder of its own, and a gin file that imports it."""
    folder = tmp_path / "toy_package"
    folder.mkdir()
    (folder / "toy_mixture.py").write_text(TOY)
    gin_file = tmp_path / "toy.gin"
    gin_file.write_text("import toy_mixture\n\nrun_pipeline.methods = ['temperature', 'toy', 'doremi_matched']\n"
                        "FirstDomainHeavy.share = 0.6\n")
    return str(folder), str(gin_file)


def test_temperature_rates_go_from_natural_to_uniform():
    tokens = np.asarray([800.0, 150.0, 50.0])
    np.testing.assert_allclose(temperature_rates(tokens, 1.0), tokens / tokens.sum())
    np.testing.assert_allclose(temperature_rates(tokens, 1e6), np.full(3, 1 / 3), atol=1e-5)
    expected = tokens ** 0.5 / (tokens ** 0.5).sum()
    np.testing.assert_allclose(temperature_rates(tokens, 2.0), expected)
    # The Pile's counts to a power stay finite; an empty domain gets nothing.
    np.testing.assert_allclose(temperature_rates([1e12, 1e12, 0.0], 0.1), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(temperature_rates(tokens / tokens.sum(), 2.0), expected)  # shares work as counts


@pytest.mark.slow
def test_a_method_written_in_a_test_runs_through_the_pipeline_comparison_report_and_aot(toy, tmp_path, monkeypatch):
    folder, toy_gin = toy
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    workdir = str(tmp_path / "w")
    args = ["--gin_file=gin/experiments/demo.gin", f"--gin_file={toy_gin}", *SHRINK, f"--gin.DATA_DIR='{data}'",
            "--gin.TRAIN_STEPS=6", "--gin.main/DownstreamConfig.tasks=[]", "--gin.TrainConfig.tensorboard=False",
            "--gin.TemperatureSampling.temperature=2.0", "--gin.DoReMiStepMatched.reference_every=2",
            f"--workdir={workdir}"]
    env = {"PYTHONPATH": os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")])}

    # A bad setting of a method is refused before anything is written.
    bad = run_entry("pipeline", *args[:-1], "--gin.TemperatureSampling.temperature=0", f"--workdir={workdir}",
                    env=env)
    assert bad.returncode == 2, bad.stderr[-2000:]
    one_line_error(bad.stderr, "TemperatureSampling.temperature=0: expected > 0")
    assert not os.path.exists(workdir)

    done = run_entry("pipeline", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.load(open(os.path.join(workdir, "eval.json")))
    domains = evaluation["domains"]
    # The toy's mixture, chosen by its gin setting, is what its main model sampled by.
    toy_summary = json.load(open(os.path.join(workdir, "main_toy", "summary.json")))
    assert toy_summary["sampling_weights"][domains[0]] == pytest.approx(0.6, abs=1e-6)
    assert evaluation["toy_share"] == 0.6 and evaluation["toy"]["label"] == "Toy"
    assert evaluation["toy"]["verdicts"]["method"] == "toy"
    # The temperature method's: p ∝ n^(1/τ) of the corpus's training tokens, τ from the command line.
    natural = np.asarray([evaluation["baseline_weights"][d] for d in domains])
    temperature = json.load(open(os.path.join(workdir, "main_temperature", "summary.json")))["sampling_weights"]
    np.testing.assert_allclose([temperature[d] for d in domains], temperature_rates(natural, 2.0), atol=1e-6)
    comparison = evaluation["comparison"]
    assert list(comparison["methods"]) == ["baseline", "doremi", "temperature", "toy", "doremi_matched"]
    assert comparison["methods"]["toy"]["weights"][domains[0]] == pytest.approx(0.6, abs=1e-6)
    assert comparison["methods"]["toy"]["search_flops"] == 0
    report = open(os.path.join(workdir, "report.md")).read()
    assert "## The toy's section" in report and "| Toy |" in report and "| temperature |" in report
    assert "0 (none (τ = 2))" in report and "0 (none (a test's method))" in report
    assert "## DoReMi (step-matched)" in report

    # The step-matched DoReMi: its reference kept every second step, and its proxy scored
    # step t against the checkpoint nearest t (ties to the earlier), where DoReMi's scored
    # every step against the finished reference. Same data and start: same first losses.
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "doremi_matched/round_1/reference/checkpoints")))
    assert saved == [2, 4, 6]

    def proxy_rows(folder):
        rows = [json.loads(line) for line in open(os.path.join(workdir, folder, "metrics.jsonl"))]
        return [r for r in rows if "loss" in r]

    matched, plain = proxy_rows("doremi_matched/round_1/proxy"), proxy_rows("round_1/proxy")
    assert [r["reference_step"] for r in matched] == [2, 2, 2, 2, 4, 4]
    assert [r["reference_step"] for r in plain] == [6] * 6
    first = f"domain_loss/{domains[0]}"
    assert matched[0][first] == pytest.approx(plain[0][first], rel=1e-6)
    assert matched[0][f"reference_{first}"] != pytest.approx(plain[0][f"reference_{first}"], rel=1e-6)
    assert evaluation["doremi_matched"]["weights"] != evaluation["doremi_weights"]

    # aot's plan counts the toy's and the temperature's main models among the fixed mixtures.
    monkeypatch.syspath_prepend(folder)
    monkeypatch.chdir(REPO)
    from doremi_jax.aot import plan

    plans, kind = plan.plans(["gin/experiments/demo.gin", toy_gin], ["run_pipeline.main_seeds = [0, 1]"])
    assert kind == "pipeline"
    assert {p.name: p.runs for p in plans} == {"reference": 1, "proxy": 1, "doremi_matched/reference": 1,
                                                  "doremi_matched/proxy": 1, "main": 2 * 5}


# Where a method may be named in code: its own folder, the registry that imports the
# built-ins, and two places that name DoReMi's step by what it costs (the FLOPs count's
# key and the benchmark that times it against the LM step).
ALLOWED = {"methods/__init__.py", "models/transformer.py", "bench.py"}
# Words that are also a weights file's names (`natural`, `uniform`): data's, not a method's.
WEIGHT_WORDS = {"uniform"}


def _names_in_code(path):
    """Identifiers, attributes and string constants of a module, docstrings left out."""
    tree = ast.parse(open(path).read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[-1]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield from node.value.replace("/", " ").replace(".", " ").split()


def test_no_module_outside_a_method_folder_names_a_method():
    from doremi_jax import methods

    words = set()
    for name in methods.names():
        method = methods.get(name)
        words |= {type(method).__name__, method.label, name, f"{name}_step"}
        words |= {t.__name__ for t in method.trainers}
    words -= WEIGHT_WORDS
    package = os.path.join(REPO, "doremi_jax")
    found = []
    for root, _, files in os.walk(package):
        for file in files:
            rel = os.path.relpath(os.path.join(root, file), package)
            if not file.endswith(".py") or rel in ALLOWED or rel.split(os.sep)[0] == "methods" and rel.count(os.sep) > 1:
                continue
            named = words & set(_names_in_code(os.path.join(root, file)))
            if named:
                found.append(f"{rel}: {sorted(named)}")
    assert not found, "method names outside their folders: " + "; ".join(found)


def test_the_name_check_can_fail(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(textwrap.dedent('''
        """Docstrings may say DoReMi."""
        LABEL = "RegMix"
    '''))
    assert "RegMix" in set(_names_in_code(str(planted))) and "DoReMi" not in set(_names_in_code(str(planted)))


@pytest.mark.parametrize("method", ["temperature", "doremi_matched"])
def test_each_methods_gin_file_joins_the_demo_experiment(method, monkeypatch):
    """gin/methods/<name>.gin, as its own comment runs it after the demo's experiment:
    the method is planned beside DoReMi's (its own stages, or one more main model a seed)."""
    monkeypatch.chdir(REPO)
    from doremi_jax.aot import plan

    plans, kind = plan.plans(["gin/experiments/demo.gin", f"gin/methods/{method}.gin"], [])
    runs = {p.name: p.runs for p in plans}
    assert kind == "pipeline" and runs["main"] == 3 * 3  # baseline, DoReMi and this method, three seeds
    assert ("doremi_matched/proxy" in runs) == (method == "doremi_matched")
