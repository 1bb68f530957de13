"""The layout shows the architecture: imports run one way, Dagster layer -> resources -> core.

Read from the source (every import statement, also inside functions), so a lazy import that runs
upward is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(folder: Path) -> dict[str, set[str]]:
    """module path -> top two levels of every module it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path.relative_to(REPO).as_posix()] = names
    return out


def test_the_core_imports_neither_dagster_nor_the_layers_above_it():
    # dagster_pipes is allowed: the standalone client the Spark job reports through, not Dagster.
    offending = {
        module: sorted(n for n in names if n.split(".")[0] in ("dagster", "dagster_aws", "dagster_dbt", "dagster_pyspark",
                                                               "resources", "demo", "bench", "tests")
                       or (n.startswith("lake_assets.") and not n.startswith("lake_assets.core")))
        for module, names in imports(REPO / "lake_assets" / "core").items()
    }
    assert {m: n for m, n in offending.items() if n} == {}


def test_resources_import_the_core_only():
    offending = {
        module: sorted(n for n in names if n.startswith("lake_assets.") and not n.startswith("lake_assets.core"))
        for module, names in imports(REPO / "resources").items()
    }
    assert {m: n for m, n in offending.items() if n} == {}


def test_the_product_package_does_not_import_the_demo_or_the_benches():
    offending = {
        module: sorted(n for n in names if n.split(".")[0] in ("demo", "bench", "tests"))
        for module, names in imports(REPO / "lake_assets").items()
    }
    assert {m: n for m, n in offending.items() if n} == {}
