"""Issue 25: no test module imports another; shared cases live in `cases/` (read by the tests and `make verify`)."""

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names]
            out |= {name.rpartition(".")[2] for name in names if name}
        elif isinstance(node, ast.Import):
            out |= {a.name.rpartition(".")[2] for a in node.names}
    return out


def test_no_module_imports_a_test_module():
    offenders = {
        str(path.relative_to(HERE)): sorted(m for m in _imported_modules(path) if m.startswith("test_"))
        for path in HERE.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
