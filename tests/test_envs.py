"""Each rule's conda env lists every third-party package that the rule's code imports (checked statically).

Snakemake's script preamble puts the main process's whole ``sys.path`` on the job's path, so a package missing
from an env is silently taken from the developer's venv and only fails on a clean conda host. This test maps
every rule to its ``conda:`` env and ``script:``, follows the script's imports (module- and function-level)
through ``kicl`` transitively, and compares the third-party top-level names with the env's packages.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: import name -> the names a conda-forge or pip entry may have (first: the one to add)
DISTRIBUTIONS = {
    "sklearn": ("scikit-learn",),
    "yaml": ("pyyaml",),
    "sentence_transformers": ("sentence-transformers",),
    "torch": ("pytorch", "torch", "pytorch-cpu", "pytorch-gpu"),
    "matplotlib": ("matplotlib-base", "matplotlib"),
    "huggingface_hub": ("huggingface_hub", "huggingface-hub"),
    "PIL": ("pillow",),
    "snakemake": ("snakemake-minimal", "snakemake"),
}
#: imports that are part of another package (never listed on their own)
PROVIDED_BY = {"mpl_toolkits": "matplotlib"}


def rule_blocks(smk_text: str) -> dict[str, str]:
    """rule name -> the text of its block."""
    starts = [(m.group(1), m.start()) for m in re.finditer(r"^rule (\w+):", smk_text, flags=re.M)]
    ends = [start for _, start in starts[1:]] + [len(smk_text)]
    return {name: smk_text[start:end] for (name, start), end in zip(starts, ends)}


def directive(block: str, name: str) -> str | None:
    """The string value of a one-string directive (``conda:``, ``script:``) of a rule block, or None."""
    match = re.search(rf"^\s+{name}:\s*\n?\s*\"([^\"]+)\"", block, flags=re.M)
    return match.group(1) if match else None


def rules_with_scripts(root: Path = ROOT) -> dict[str, tuple[Path | None, Path]]:
    """rule -> (env file or None, script file) for every rule with a ``script:``."""
    found = {}
    for smk in sorted((root / "rules").glob("*.smk")):
        for rule, block in rule_blocks(smk.read_text()).items():
            script = directive(block, "script")
            if script is None:
                continue
            env = directive(block, "conda")
            found[rule] = ((smk.parent / env).resolve() if env else None, (smk.parent / script).resolve())
    return found


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a kicl module (package __init__ or module), or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Dotted names imported anywhere in a file (``from a.b import c`` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def third_party_imports(script: Path, root: Path = ROOT) -> dict[str, str]:
    """Top-level third-party import name -> the file that first imports it, following kicl transitively."""
    seen_files, queue, found = set(), [script], {}
    while queue:
        path = queue.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        for name in sorted(imported_names(path)):
            top = name.split(".")[0]
            if top == "kicl":
                # every package on the way is imported too (kicl/__init__, kicl/x/__init__)
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):
                    target = module_file(".".join(parts[:depth]), root)
                    if target is not None:
                        queue.append(target)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(PROVIDED_BY.get(top, top), str(path.relative_to(root)))
    return found


def env_packages(env_file: Path) -> set[str]:
    """Lower-case package names of a conda env file (conda dependencies and its pip section)."""
    spec = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in spec.get("dependencies", []):
        entries = dep.get("pip", []) if isinstance(dep, dict) else [dep]
        for entry in entries:
            names.add(re.split(r"[\s=<>!~\[]", entry.strip(), maxsplit=1)[0].lower())
    return names


def missing_packages(env_file: Path, script: Path, root: Path = ROOT) -> dict[str, str]:
    """Import name -> importing file, for each third-party import the env does not list."""
    listed = env_packages(env_file)
    return {
        name: where
        for name, where in third_party_imports(script, root).items()
        if not {alias.lower() for alias in DISTRIBUTIONS.get(name, (name, name.replace("_", "-")))} & listed
    }


RULES = rules_with_scripts()


def test_the_rules_were_found():
    assert {"build_prompts", "forward_pass", "theory_table3", "table2", "embed_prompt_texts"} <= set(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_env_lists_every_imported_package(rule):
    env_file, script = RULES[rule]
    assert env_file is not None, f"rule {rule} runs {script.name} without a conda: env"
    assert env_file.is_file() and script.is_file(), (env_file, script)
    missing = missing_packages(env_file, script)
    assert not missing, (
        f"rule {rule} ({script.relative_to(ROOT)}) imports packages that {env_file.relative_to(ROOT)} does not list: "
        + ", ".join(
            f"{name} (imported by {where}; add {DISTRIBUTIONS.get(name, (name,))[0]})"
            for name, where in sorted(missing.items())
        )
    )


def test_the_check_catches_a_missing_package(tmp_path):
    """Negative case: a script whose kicl module imports pandas lazily, with an env that lacks pandas."""
    (tmp_path / "kicl" / "sub").mkdir(parents=True)
    (tmp_path / "kicl" / "__init__.py").write_text("import importlib.metadata\n")
    (tmp_path / "kicl" / "sub" / "__init__.py").write_text("")
    (tmp_path / "kicl" / "sub" / "mod.py").write_text(
        "import numpy as np\n\ndef f():\n    import pandas\n    from sklearn.linear_model import Ridge\n"
    )
    script = tmp_path / "script.py"
    script.write_text("from kicl.sub.mod import f\nimport json\n")
    env = tmp_path / "env.yaml"
    env.write_text("dependencies:\n  - python =3.11\n  - numpy =2.4\n  - pip:\n    - scikit-learn==1.8\n")
    assert third_party_imports(script, tmp_path) == {
        "numpy": "kicl/sub/mod.py",
        "pandas": "kicl/sub/mod.py",
        "sklearn": "kicl/sub/mod.py",
    }
    assert missing_packages(env, script, tmp_path) == {"pandas": "kicl/sub/mod.py"}
    env.write_text("dependencies:\n  - numpy\n  - pandas =3.1\n  - scikit-learn\n")
    assert missing_packages(env, script, tmp_path) == {}


def test_rule_blocks_read_conda_and_script():
    text = (
        'rule a:\n    conda:\n        "../envs/x.yaml"\n    script:\n        "../scripts/a.py"\n\n\n'
        'rule b:\n    shell:\n        "true"\n'
    )
    blocks = rule_blocks(text)
    assert directive(blocks["a"], "conda") == "../envs/x.yaml" and directive(blocks["a"], "script") == "../scripts/a.py"
    assert directive(blocks["b"], "script") is None
