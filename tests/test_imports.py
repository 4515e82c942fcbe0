"""What `import tinyconv` does and which way the imports point (issue 16's import graph)."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinyconv"


def _tinyconv_imports(path: Path) -> list:
    """The tinyconv modules a source file imports: relative imports and `tinyconv...` ones."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or
                                                 (node.module or "").startswith("tinyconv")):
            found.append(node.module or ".")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tinyconv")]
    return found


def test_import_tinyconv_loads_no_matplotlib():
    code = "import sys, tinyconv; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout.strip()
    assert out == "False", "import tinyconv loaded matplotlib: import plot where it draws"


def test_the_autograd_engine_is_a_leaf():
    assert _tinyconv_imports(PACKAGE / "autograd.py") == []


def test_plot_and_sched_do_not_import_the_learner():
    for name in ("plot.py", "sched.py"):
        assert not [m for m in _tinyconv_imports(PACKAGE / name) if "learner" in m], name
