"""The test suite's own layout: the fast tier (`make test-fast`) holds no workflow test, and test modules share
helpers through tests/helpers.py instead of importing each other."""

import ast
import re

from helpers import REPO

TESTS = REPO / "tests"


def fast_tier_expression() -> str:
    """The marker expression `make test-fast` passes to pytest -m."""
    match = re.search(r"^FAST_TIER\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no FAST_TIER := <marker expression> for `make test-fast`"
    return match.group(1).strip()


def test_the_fast_tier_selects_no_test_that_runs_snakemake(pytester):
    arguments = [str(TESTS), "--collect-only", "-q", "-p", "no:cacheprovider", "-m", fast_tier_expression()]
    items = pytester.inline_run(*arguments).getcall("pytest_collection_finish").session.items  # after `-m`
    assert items, "the fast tier collects no test"
    runs_snakemake = [item.nodeid for item in items if "run_workflow" in item.fixturenames]
    assert not runs_snakemake, f"tests in the fast tier that run Snakemake (mark them `workflow`): {runs_snakemake}"


def test_no_test_module_imports_another_test_module_or_conftest():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} imports {name}" for name in names if _is_test_module(name)]
    assert not offenders, "shared test code belongs in tests/helpers.py (fixtures in conftest.py): " + str(offenders)


def _is_test_module(name: str) -> bool:
    first = name.split(".")[0]
    return first.startswith("test_") or first == "conftest" or name.startswith("tests.")
