"""The layout rule: root files are the remote code shipped with every checkpoint; the `tinygiant/` tools never ship
and no shipped file imports them; and no two of the project's files import each other, directly or round a circle."""

import ast
import re
from pathlib import Path

from tinygiant.hub.publish import ROOT_SCRIPTS, SHIPPED_CODE
from tinygiant.serving.web_app import SPACE_CODE

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
    # The naming rule pyproject's warning filters rely on: every shipped module, and nothing else, is `*_tinygiant`.
    assert {name for name in root_modules if name.endswith("_tinygiant.py")} == set(SHIPPED_CODE)


def test_pyproject_installs_exactly_the_shipped_modules():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["py-modules"] == [name.removesuffix(".py") for name in SHIPPED_CODE]


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
    assert not {p.name for p in (ROOT / "tinygiant").rglob("*.py")} & set(SHIPPED_CODE)


def test_the_web_app_runs_without_the_tools():
    """A Space holds `app.py` and the siblings it imports, never the `tinygiant` package."""
    imports = imported_modules(ROOT / "app.py")
    assert "tinygiant" not in imports
    siblings = {name.removesuffix(".py") for name in (*SHIPPED_CODE, *ROOT_SCRIPTS)}
    assert {f"{name}.py" for name in imports & siblings} == set(SPACE_CODE) - {"app.py"}


def test_the_vllm_plugin_runs_the_checkpoints_own_code():
    """The plugin (its own distribution, installed next to vLLM) imports neither the tools nor the root files: the
    model's equations and output format come from each checkpoint's remote code."""
    root_modules = {name.removesuffix(".py") for name in (*SHIPPED_CODE, *ROOT_SCRIPTS)}
    for path in (ROOT / "vllm_plugin" / "tinygiant_vllm").glob("*.py"):
        imports = imported_modules(path)
        assert not imports & (root_modules | {"tinygiant"}), path.name


def project_files():
    """`{module name: path}` of the project's Python files, tests aside: root files by their name, the tools by their
    dotted name in every room (`tinygiant.hub.publish`; a room's `__init__.py` as `tinygiant.hub`), the benchmarks as
    `benchmarks/NAME` (their scripts import each other as siblings)."""
    files = {p.stem: p for p in ROOT.glob("*.py")}
    for p in (ROOT / "tinygiant").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    files.update({f"benchmarks/{p.stem}": p for p in (ROOT / "benchmarks").glob("*.py")})
    return files


def project_imports(name, path, files):
    """The project modules that the file `name` imports anywhere in it (function-level imports too)."""
    if path.name == "__init__.py":
        package = name
    else:
        package = name.rpartition(".")[0] if name.startswith("tinygiant.") else ""
    siblings = "benchmarks/" if name.startswith("benchmarks/") else ""

    def resolve(dotted):  # the longest leading part of `dotted` that is a project module
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            for key in (siblings + candidate, candidate):
                if key in files:
                    return key
        return None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: root files import siblings as `.name`, the tools as `.name` in `tinygiant`
                base = ".".join(filter(None, [package, base]))
            found |= {resolve(f"{base}.{alias.name}" if base else alias.name) for alias in node.names}
    return found - {None, name}


def import_circles():
    """Every circle of imports among the project's files, each as the list of its paths, first path repeated last."""
    files = project_files()
    graph = {name: project_imports(name, path, files) for name, path in files.items()}
    circles, seen = [], set()
    for start in sorted(graph):
        # The shortest way back to `start`, breadth first; each circle is reported once, from its first member.
        paths, queue = {start: [start]}, [start]
        while queue:
            node = queue.pop(0)
            for target in sorted(graph[node]):
                if target == start:
                    circle = paths[node] + [start]
                    if not set(circle) <= seen:
                        circles.append([str(files[m].relative_to(ROOT)) for m in circle])
                        seen |= set(circle)
                    queue = []
                    break
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return circles


def test_no_import_circles():
    circles = import_circles()
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in circles)


def test_the_circle_finder_sees_function_level_imports(tmp_path, monkeypatch):
    (tmp_path / "tinygiant").mkdir()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "tinygiant" / "a.py").write_text("from tinygiant.b import x\n")
    (tmp_path / "tinygiant" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "benchmarks" / "one.py").write_text("import two\n")
    (tmp_path / "benchmarks" / "two.py").write_text("def g():\n    from one import h\n")
    (tmp_path / "tinygiant" / "__init__.py").write_text("from . import c\n")
    (tmp_path / "tinygiant" / "c.py").write_text("import tinygiant\n")
    (tmp_path / "tool.py").write_text("import tinygiant.a\n")
    (tmp_path / "tinygiant" / "room").mkdir()  # a room of the tools: its modules, relative imports resolved in it
    (tmp_path / "tinygiant" / "room" / "__init__.py").write_text("")
    (tmp_path / "tinygiant" / "room" / "d.py").write_text("def f():\n    from .e import g\n")
    (tmp_path / "tinygiant" / "room" / "e.py").write_text("from tinygiant.room.d import f\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert import_circles() == [["benchmarks/one.py", "benchmarks/two.py", "benchmarks/one.py"],
                                ["tinygiant/__init__.py", "tinygiant/c.py", "tinygiant/__init__.py"],
                                ["tinygiant/a.py", "tinygiant/b.py", "tinygiant/a.py"],
                                ["tinygiant/room/d.py", "tinygiant/room/e.py", "tinygiant/room/d.py"]]


def test_the_readme_is_a_landing_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 180
    # It opens with the two commands (after the title, and the docs test's marker that the suite does not run them).
    opening = [line for line in readme.splitlines()[1:] if line.strip() and not line.startswith("<!--")]
    assert opening[0].startswith("```") and "bash install.sh" in readme.split("```")[1]
    pages = sorted((ROOT / "docs").glob("*.md"))
    for page in pages:
        assert f"(docs/{page.name})" in readme, page.name
    for document in [ROOT / "README.md", *pages]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", document.read_text()):
            if not re.match(r"[a-z]+://", target):
                assert (document.parent / target).exists(), (document.name, target)


def untyped_public_functions(path: Path) -> list[str]:
    """`file:line name` of each public function or method in `path` with a parameter or return left unannotated."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            bare = [a.arg for a in arguments if a.annotation is None and a.arg not in ("self", "cls")]
            if bare or node.returns is None:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {bare or ''}".strip())
    return found


def test_public_functions_of_the_shipped_code_and_the_tools_are_typed():
    files = [*(ROOT / name for name in SHIPPED_CODE), *sorted((ROOT / "tinygiant").rglob("*.py"))]
    assert [entry for path in files for entry in untyped_public_functions(path)] == []


def test_ruff_finds_nothing():
    """The repository within the project's lint rules (pyproject's [tool.ruff]), as CI checks it."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]
