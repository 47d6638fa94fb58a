"""Functions fit on a screen: at most 80 lines and 8 parameters, unless a ``# shape: <reason>`` line says why."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kicl", "scripts", "benchmarks")
MAX_LINES = 80
MAX_PARAMS = 8


def _n_params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _has_reason(node, lines: list[str]) -> bool:
    """A ``# shape:`` comment on the line directly above the def, or above its first decorator."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    above = lines[first - 2].strip() if first >= 2 else ""
    return above.startswith("# shape:") and len(above) > len("# shape:")


def shape_problems(source: str, name: str) -> list[str]:
    """``file:line function: N lines, M params`` for each function too long or too wide without a reason."""
    lines = source.splitlines()
    problems = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        n_lines = node.end_lineno - node.lineno + 1
        n_params = _n_params(node)
        if (n_lines > MAX_LINES or n_params > MAX_PARAMS) and not _has_reason(node, lines):
            problems.append(f"{name}:{node.lineno} {node.name}: {n_lines} lines, {n_params} params")
    return problems


def test_the_checker_flags_long_and_wide_functions_and_honours_a_reason():
    wide = "def f(a, b, c, d, e, f, g, h, i):\n    pass\n"
    long = "def g():\n" + "    x = 1\n" * 80
    method = "class C:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n"
    assert shape_problems(wide, "w.py") == ["w.py:1 f: 2 lines, 9 params"]
    assert shape_problems(long, "l.py") == ["l.py:1 g: 81 lines, 0 params"]
    assert shape_problems(method, "m.py") == []
    assert shape_problems("# shape: a table of cases\n" + wide, "w.py") == []
    assert shape_problems("# shape: why\n@decorator\n" + long, "l.py") == []
    assert shape_problems("# shape:\n" + wide, "w.py") != []


def test_functions_fit_on_a_screen_or_say_why():
    problems = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            problems += shape_problems(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "functions over 80 lines or 8 parameters without a '# shape: <reason>' line:\n" + "\n".join(
        problems
    )


def _module_names(path: Path) -> tuple[set[str], set[str]]:
    """(module-level names assigned, private names imported from kicl) of one file."""
    tree = ast.parse(path.read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    private = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kicl")
        for alias in node.names
        if alias.name.startswith("_") and alias.name != "__version__"
    }
    return assigned, private


def test_the_papers_numbers_live_in_one_module_and_no_private_name_is_imported():
    homes, private = {}, []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            assigned, imported = _module_names(path)
            name = str(path.relative_to(ROOT))
            homes |= {
                constant: homes.get(constant, []) + [name] for constant in assigned if constant.startswith("PAPER_")
            }
            private += [f"{name}: {n}" for n in sorted(imported)]
    assert {module for modules in homes.values() for module in modules} == {"kicl/tables/paper.py"}, homes
    assert not private, private
