"""The layout rule: root files are the remote code shipped with every checkpoint; the `tinygiant/` tools never ship
and no shipped file imports them."""

import ast
from pathlib import Path

from tinygiant.publish import SHIPPED_CODE

ROOT = Path(__file__).resolve().parents[1]
# Root scripts that are not remote code: the TRL-style training script, run from a clone.
ROOT_SCRIPTS = {"train_sft.py"}


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
    assert root_modules - ROOT_SCRIPTS == set(SHIPPED_CODE)


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
