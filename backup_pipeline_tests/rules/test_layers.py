"""The package's layers as folders, and the import rule between them, read from the code with ast.

Bottom to top (STYLE.md, "The shape"): a module imports its own layer and the layers below it,
never one above, so that each can be read, tested and changed alone:

1. rules: the domain (backup_pipeline/rules/): plain Python, no I/O, no Dagster, no adapter.
2. settings: the one reader of the environment (settings.py); imports only rules.
3. adapters: the outside world behind small interfaces: storage/ (object stores), mail/
   (SendGrid and an outbox behind `Mailer`), platform/ (the database: tables, queries, our
   migrations).
4. archive: the zip itself: the file plan, staging, the streaming writer, verify.
5. datasets: one module per workbook (a query and its Spanish columns), rendered and staged.
6. services: what a run and support call (delivery, failures, support actions, housekeeping,
   intake, the export and the archive's assembly); synthetic/ (demo clinics) sits beside them.
   They take a plain Engine, ObjectStore and Mailer, never a Dagster resource.
7. orchestration: Dagster. The modules at the package root (definitions.py, the code location's
   module that pyproject, workspace.yaml and the Helm values name; jobs.py, sensors.py,
   schedules.py, support_jobs.py and their helpers) and resources/, the thin Dagster resources
   over the adapters: the root is where a data engineer opening the package sees the pipeline.
8. entry points: cli.py (`backup-pipeline`) and operations.py (what the CLI runs by hand,
   through Dagster's APIs). Nothing of the package imports them.

Only the last two import Dagster.
"""

from __future__ import annotations

import ast
from pathlib import Path

import backup_pipeline

PACKAGE = Path(backup_pipeline.__file__).parent

# Each layer: the modules or folders it is made of, as dotted names below backup_pipeline.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("rules", ("rules",)),
    ("settings", ("settings",)),
    ("adapters", ("storage", "mail", "platform")),
    ("archive", ("archive",)),
    ("datasets", ("datasets",)),
    ("services", ("services", "synthetic")),
    (
        "orchestration",
        (
            "definitions",
            "jobs",
            "sensors",
            "schedules",
            "support_jobs",
            "step_failure",
            "run_liveness",
            "dagster_compat",
            "instance",
            "resources",
        ),
    ),
    ("entry points", ("cli", "operations")),
]
DAGSTER_LAYERS = {"orchestration", "entry points"}
DAGSTER = {"dagster", "dagster_graphql", "dagster_k8s", "dagster_gcp", "dagster_postgres"}
# What the domain may not touch besides our own adapters: the libraries that do the I/O.
IO_LIBRARIES = {"sqlalchemy", "alembic", "psycopg", "google", "sendgrid", "python_http_client"}
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside the package ('backup_pipeline.rules.quota')."""
    parts = module.split(".")
    if parts[0] != "backup_pipeline" or len(parts) < 2:
        return None
    for name, members in LAYERS:
        if parts[1] in members:
            return name
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (at the top, in a function, under TYPE_CHECKING alike)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from backup_pipeline import platform` names a subpackage, not an attribute.
            if node.module == "backup_pipeline":
                found.extend((node.lineno, f"backup_pipeline.{a.name}") for a in node.names)
    return found


def package_files() -> list[Path]:
    # The migration scripts are Alembic's, loaded by path: they belong to platform/ like the rest.
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def test_every_module_of_the_package_belongs_to_one_layer():
    unplaced = [module_name(p) for p in package_files() if layer_of(module_name(p)) is None]
    assert unplaced == [], "add each to a layer of LAYERS (and its folder)"


def test_no_module_imports_a_layer_above_its_own():
    climbs = []
    for path in package_files():
        here = layer_of(module_name(path))
        for line, imported in imports_of(path):
            there = layer_of(imported)
            if there is not None and RANK[there] > RANK[here]:
                climbs.append(f"{module_name(path)}:{line} ({here}) imports {imported} ({there})")
    assert climbs == []


def test_only_the_orchestration_and_the_entry_points_import_dagster():
    found = []
    for path in package_files():
        here = layer_of(module_name(path))
        if here in DAGSTER_LAYERS:
            continue
        for line, imported in imports_of(path):
            if imported.split(".")[0] in DAGSTER:
                found.append(f"{module_name(path)}:{line} ({here}) imports {imported}")
    assert found == []


def test_the_rules_import_no_adapter_and_no_io_library():
    found = []
    for path in sorted((PACKAGE / "rules").rglob("*.py")):
        for line, imported in imports_of(path):
            ours = layer_of(imported)
            if (ours is not None and ours != "rules") or imported.split(".")[0] in IO_LIBRARIES:
                found.append(f"{module_name(path)}:{line} imports {imported}")
    assert found == []


def test_the_layer_rule_catches_a_climb_and_a_dagster_import(tmp_path):
    # The scan itself, on a module written to break both rules: a rule that reads nothing passes.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import dagster as dg\n"
        "from backup_pipeline.services.delivery import deliver\n"
        "from backup_pipeline import platform as db\n"
    )
    imported = [name for _line, name in imports_of(bad)]
    assert [layer_of(name) for name in imported] == [None, "services", None, "adapters"]
    assert imported[0].split(".")[0] in DAGSTER
    assert RANK["services"] > RANK["rules"] and RANK["adapters"] > RANK["rules"]
