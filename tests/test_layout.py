"""The layout rule: root files are the remote code shipped with every checkpoint; the `tinygiant/` tools never ship
and no shipped file imports them."""

import ast
from pathlib import Path

from tinygiant.publish import ROOT_SCRIPTS, SHIPPED_CODE
from tinygiant.web_app import SPACE_CODE

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_root_module_is_shipped_remote_code_or_a_known_script():
    root_modules = {p.name for p in ROOT.glob("*.py")}
    assert root_modules - set(ROOT_SCRIPTS) == set(SHIPPED_CODE)


def test_shipped_code_imports_only_siblings_and_installed_libraries():
    siblings = {name.removesuffix(".py") for name in SHIPPED_CODE}
    for name in SHIPPED_CODE:
        imports = imported_modules(ROOT / name)
        assert "tinygiant" not in imports, name
        text = (ROOT / name).read_text()
        for sibling in imports & siblings:
            # The loader finds siblings by the relative form only, and copies them with the checkpoint.
            assert f"from .{sibling} import" in text, (name, sibling)


def test_tools_are_a_package_that_is_not_shipped():
    assert (ROOT / "tinygiant" / "__init__.py").is_file()
    assert not {p.name for p in (ROOT / "tinygiant").glob("*.py")} & set(SHIPPED_CODE)


def test_the_web_app_runs_without_the_tools():
    """A Space holds `app.py` and the siblings it imports, never the `tinygiant` package."""
    imports = imported_modules(ROOT / "app.py")
    assert "tinygiant" not in imports
    siblings = {name.removesuffix(".py") for name in (*SHIPPED_CODE, *ROOT_SCRIPTS)}
    assert {f"{name}.py" for name in imports & siblings} == set(SPACE_CODE) - {"app.py"}
