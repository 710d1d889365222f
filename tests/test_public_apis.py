"""Issue 20 item 7, public APIs and packages: ``flows`` is an installed package (no ``sys.path``
edits anywhere), prefect.yaml's entrypoints load as a worker loads them, the CLI's stage dispatch
names each stage module it runs, the stack's modules share no private name and import no cycle,
and an older MLflow schema is migrated by ``mlflow db upgrade``."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SYS_PATH_EDIT = "sys.path." + "insert"  # spelled apart so that this file does not find itself


def test_flows_is_an_installed_package(tmp_path):
    """Importable from any directory, as the library is: from this checkout's flows/."""
    proc = subprocess.run([sys.executable, "-c", "import flows.stack, flows.experiment, flows.names, flows; "
                           "print(flows.__file__)"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == REPO / "flows" / "__init__.py"


def _sys_path_edits(path: Path, root: Path = REPO) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = node.func if isinstance(node, ast.Call) else None
        if isinstance(target, ast.Attribute) and target.attr in ("insert", "append", "extend") and \
                ast.unparse(target.value) == "sys.path":
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    if SYS_PATH_EDIT in path.read_text() and not found:  # in code a test writes for a child process
        found.append(f"{path.relative_to(root)}: {SYS_PATH_EDIT} in a string")
    return found


def test_no_module_edits_sys_path():
    files = [*sorted((REPO / "flows").rglob("*.py")), *sorted((REPO / "tests").glob("*.py")),
             *sorted((REPO / "src").rglob("*.py"))]
    edits = [hit for path in files for hit in _sys_path_edits(path)]
    assert not edits, edits


def test_the_checker_finds_a_sys_path_edit(tmp_path):
    (tmp_path / "a.py").write_text(f"import sys\n{SYS_PATH_EDIT}(0, 'x')\n")
    (tmp_path / "b.py").write_text(f"SCRIPT = 'import sys; {SYS_PATH_EDIT}(0, 1)'\n")
    (tmp_path / "c.py").write_text("import sys\nprint(sys.path)\n")
    found = [hit for name in ("a.py", "b.py", "c.py") for hit in _sys_path_edits(tmp_path / name, tmp_path)]
    assert found == ["a.py:2", f"b.py: {SYS_PATH_EDIT} in a string"]


def test_prefect_entrypoints_load_as_a_worker_loads_them():
    """Prefect's own loader, in a fresh process whose working directory is the checkout (the
    deployments' pull step), for every entrypoint of prefect.yaml; each flow names its runs."""
    entrypoints = [d["entrypoint"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    script = ("import json, sys\nfrom prefect.flows import load_flow_from_entrypoint\n"
              "out = {}\nfor ep in sys.argv[1:]:\n    f = load_flow_from_entrypoint(ep)\n"
              "    out[ep] = [f.name, f.flow_run_name.__module__ if callable(f.flow_run_name) else None]\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, *entrypoints], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {
        "flows/train_nir.py:train_nir": ["train-nir", "flows.names"],
        "flows/train_expression.py:train_expression": ["train-expression", "flows.names"],
        "flows/generate_nir.py:generate_nir": ["generate-nir", "flows.names"],
    }


def test_the_cli_dispatch_imports_each_stage_module_by_name():
    from nirgan.cli import STAGES, _stage

    # every stage module of both families is a CLI stage: the NIR family's by its name, the
    # expression family's (nirgan.expression.stages) as <name>_expression
    def stage_modules(folder: Path, package: str, suffix: str) -> dict[str, str]:
        return {f"{p.stem}{suffix}": f"{package}.{p.stem}"
                for p in folder.glob("*.py") if p.stem != "__init__"}

    src = REPO / "src" / "nirgan"
    modules = {**stage_modules(src / "stages", "nirgan.stages", ""),
               **stage_modules(src / "expression" / "stages", "nirgan.expression.stages", "_expression")}
    assert sorted(STAGES) == sorted(modules)
    for name, module in modules.items():
        assert _stage(name).__module__ == module
    with pytest.raises(KeyError, match="nope"):
        _stage("nope")


# ----------------------------------------------------------------------- the stack's modules
def _flows_imports() -> dict[str, list[tuple[str, str]]]:
    """flows module -> (flows module it imports from, name) for every import, type-only ones
    (under ``if TYPE_CHECKING:``) included: a reader follows those too."""
    out: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((REPO / "flows").glob("*.py")):
        found = out.setdefault(path.stem, [])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flows":
                base = node.module.split(".")[1] if "." in node.module else None
                found += [(base or a.name, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(a.name.split(".")[1], "*") for a in node.names if a.name.startswith("flows.")]
    return out


def test_no_private_name_crosses_a_flows_module():
    crossing = [f"{module} imports {name} from flows.{source}" for module, imports in _flows_imports().items()
                for source, name in imports if name.startswith("_") and source != name]
    assert not crossing, crossing


def test_the_flows_modules_import_no_cycle():
    graph = {m: {s for s, _ in imports if s != m} for m, imports in _flows_imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles, f"import cycles through {cycles}"


# ------------------------------------------------------------------------ MLflow schema upgrade
def _migrations(uri: str):
    """Alembic's view of MLflow's own migration scripts for the store at ``uri``: (config, head, the
    revision before head)."""
    import mlflow
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations"
    cfg = Config(str(migrations / "alembic.ini"))
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", uri)
    scripts = ScriptDirectory.from_config(cfg)
    head = scripts.get_current_head()
    return cfg, head, scripts.get_revision(head).down_revision


def _revision(uri: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as conn:
        revision = conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar_one()
    engine.dispose()
    return revision


def test_an_older_mlflow_schema_is_upgraded(tmp_path):
    """A store at the schema one migration before this MLflow's (an older MLflow's store), made
    with MLflow's own migration scripts, is at the newest schema after ``ensure_store``."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    from nirgan.tracking import ensure_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, head, previous = _migrations(uri)
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)  # what MLflow's first migration starts from
    engine.dispose()
    command.upgrade(cfg, previous)
    assert _revision(uri) == previous
    assert ensure_store(uri) == uri
    assert _revision(uri) == head
    # the check holds no connection: the stack's `up` runs it in long-lived processes
    assert not [fd for fd in os.listdir("/proc/self/fd") if _points_to(fd, tmp_path / "mlflow.db")]


def _points_to(fd: str, path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def test_a_failed_schema_upgrade_is_one_line_from_mlflow_db_upgrade(tmp_path):
    """A store that says it is older than it is (all of the newest tables, an older revision):
    MLflow refuses to open it as out of date, and ``mlflow db upgrade`` then fails on the table that
    is already there. The command's own error comes back as one line naming the store."""
    from alembic import command
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from nirgan.tracking import TrackingUnavailable, ensure_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg, head, previous = _migrations(uri)
    SqlAlchemyStore(uri, str(tmp_path / "mlartifacts"))  # a store at the newest schema
    command.stamp(cfg, previous, purge=True)
    with pytest.raises(TrackingUnavailable) as failed:
        ensure_store(uri)
    message = str(failed.value)
    assert "\n" not in message and uri in message and "`mlflow db upgrade` failed" in message, message
    assert "already exists" in message, message  # the migration's own error, from the command's stderr
    assert _revision(uri) == previous
