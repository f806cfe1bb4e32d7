"""CONTRIBUTING.md stays true: the files it names exist, its layer list is the one the import test
enforces, its worked example is the real file, and every training method is covered by the tests
that mutation testing runs."""
import re
from pathlib import Path

from test_imports import LAYERS

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "CONTRIBUTING.md").read_text()


def test_every_file_it_names_exists():
    named = set(re.findall(r"`((?:depthlab|tests|docs|examples|bench|scripts|sweeps)/[\w./-]+\.(?:py|md|yaml|toml))`",
                           TEXT))
    assert named and [n for n in sorted(named) if not (ROOT / n).exists()] == []


def test_its_layer_list_is_the_enforced_one():
    sentence = re.search(r"bottom to top: (.*?)\)\.", TEXT, re.S).group(1)
    groups = [set(re.findall(r"`([\w_]+)`", g)) for g in sentence.split(";")]
    assert groups == LAYERS


def test_its_experiment_helper_list_is_the_real_one():
    from depthlab.experiments import HELPERS

    sentence = re.search(r"helpers in `HELPERS` of `depthlab/experiments/__init__.py`: (.*?) registers", TEXT, re.S)
    assert set(re.findall(r"`(\w+)`", sentence.group(1))) == set(HELPERS)


def test_the_method_example_is_the_real_file():
    block = re.search(r"The real example, `depthlab/methods/clip_grad_norm.py`:\n\n```python\n(.*?)```", TEXT, re.S)
    assert block.group(1) == (ROOT / "depthlab/methods/clip_grad_norm.py").read_text()


def test_every_method_is_named_in_the_mutation_test_selection():
    toml = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; depthlab supports 3.10)
    selection = re.search(r"pytest_add_cli_args_test_selection = \[(.*?)\]", toml, re.S).group(1)
    tests = "".join((ROOT / t).read_text() for t in re.findall(r'"([^"]+)"', selection))
    methods = [p.stem for p in (ROOT / "depthlab/methods").glob("*.py") if p.stem not in ("__init__", "base")]
    assert methods and [m for m in methods if m not in tests] == []


def test_the_docs_mention_every_registered_method_quantity_and_experiment():
    """One home per list (the registries); the guides must name every item in them."""
    from depthlab.diagnostics import DIAGNOSTICS
    from depthlab.experiments import EXPERIMENTS
    from depthlab.methods import METHODS

    def missing(names, *docs):
        text = "".join((ROOT / "docs" / d).read_text() for d in docs)
        return [n for n in names if f"`{n}`" not in text and f"methods.{n}" not in text]

    assert missing([m.name for m in (METHODS.get(n) for n in METHODS)], "methods.md", "usage.md") == []
    assert missing(list(DIAGNOSTICS), "diagnostics.md", "usage.md") == []
    assert missing(list(EXPERIMENTS), "usage.md", "results.md") == []


def test_every_relative_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *ROOT.glob("docs/*.md"), *ROOT.glob("docs/notes/*.md")]
    broken = []
    for page in pages:
        for m in re.finditer(r"\]\(([^)\s#]+)(#[^)]*)?\)", page.read_text()):
            target = m.group(1)
            if not target.startswith(("http:", "https:", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
