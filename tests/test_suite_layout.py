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


#: a plugin for the collecting subprocess: each selected test with the fixtures it uses
FIXTURE_REPORT = """
def pytest_collection_finish(session):
    for item in session.items:
        print("SELECTED", item.nodeid, *getattr(item, "fixturenames", ()))
"""


def test_the_fast_tier_selects_no_test_that_runs_snakemake(pytester):
    # in a subprocess: an in-process run would unload the modules it imports (numpy's C extensions cannot reload)
    pytester.makepyfile(fixture_report=FIXTURE_REPORT)
    arguments = [str(TESTS), "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "fixture_report"]
    result = pytester.runpytest_subprocess(*arguments, "-m", fast_tier_expression())
    selected = [line.split()[1:] for line in result.outlines if line.startswith("SELECTED ")]
    assert selected, "the fast tier collects no test:\n" + "\n".join(result.outlines[-20:])
    runs_snakemake = [nodeid for nodeid, *fixtures in selected if "run_workflow" in fixtures]
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
