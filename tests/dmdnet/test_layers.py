"""dmdnet stands alone: every module imports without film_restore, none imports it even lazily,
and dmdnet's own imports form no circle."""
import ast
import subprocess
import sys

from tests.assets import REPO

BLOCK_FILM_RESTORE = """
import importlib.abc, pkgutil, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "film_restore" or name.startswith("film_restore."):
            raise ImportError(f"{name} is blocked: dmdnet must not import it")

sys.meta_path.insert(0, Blocker())
import dmdnet
names = [m.name for m in pkgutil.walk_packages(dmdnet.__path__, "dmdnet.") if not m.name.endswith("__main__")]
for name in names:
    __import__(name)
assert not [m for m in sys.modules if m.startswith("film_restore")]
print(len(names))
"""


def test_every_dmdnet_module_imports_with_film_restore_unimportable():
    result = subprocess.run([sys.executable, "-c", BLOCK_FILM_RESTORE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 20  # every module was imported, the train package's too


def _imports(path, package: str) -> set[str]:
    """The modules a source file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module if not node.level else f"{package}.{node.module}")
    return found


def _is_in(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def test_dmdnet_imports_nothing_above_it_and_has_no_circle():
    root = REPO / "dmdnet"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imports = _imports(path, ".".join(parts[:-1]))
        upward = sorted(i for i in imports if _is_in(i, "film_restore") or _is_in(i, "jobs"))
        assert not upward, f"{name} imports {', '.join(upward)}"
        modules[name] = {i for i in imports if _is_in(i, "dmdnet")}
    assert "dmdnet.train.driver" in modules and "dmdnet.face_stack" in modules

    def circle_from(name, trail):
        if name in trail:
            return trail[trail.index(name):] + [name]
        for imported in sorted(modules.get(name, ())):
            found = circle_from(imported, trail + [name])
            if found:
                return found
        return None

    for name in sorted(modules):
        circle = circle_from(name, [])
        assert circle is None, " -> ".join(circle)
