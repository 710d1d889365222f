"""The code's structure, checked statically (ast, no imports run):

- the deps of dvc.yaml and of pipelines/expression/dvc.yaml cover each stage's import closure
  inside src/, so a change to any module a stage runs makes ``dvc repro`` rerun that stage, and
  every declared code dep is in it (a folder dep: every .py file under it), so no change reruns a
  stage for nothing (tests/test_stage_params.py does the same for params);
- imports run only downward through the layers of the design, and none is hidden from this
  check (importlib / __import__), the CLI's dispatch to the stages included.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from nirgan.training.fingerprint import runtime_nodes

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "nirgan"

# Lower number = lower layer; a module may import the base layer, anything below its own
# layer and its own package, and nothing above or beside it (training and metrics are peers).
# The longest matching prefix decides: the auxiliary networks' training loops sit below both
# the trainer and the measures, which use them (they import only models and augmentation).
LAYERS: dict[str, float] = {
    "nirgan": 0, "nirgan.config": 0, "nirgan.io": 0, "nirgan.labels": 0, "nirgan.losses": 0,
    "nirgan.devices": 0, "nirgan.tracking": 0, "nirgan.safe_read": 0, "nirgan.iqr": 0,
    "nirgan.models": 1, "nirgan.augmentation": 1, "nirgan.detection": 1, "nirgan.twin": 1,
    "nirgan.splitting": 1,
    "nirgan.training.auxiliary": 1.5, "nirgan.training.identity": 1.5,
    "nirgan.training": 2, "nirgan.metrics": 2, "nirgan.generation": 2,
    "nirgan.stages": 3,
    "nirgan.cli": 4,
    # the expression family, beside the NIR one layer by layer (its twin films the NIR twin's
    # subjects and its sources read that twin; its trainer runs the shared training loop)
    "nirgan.expression": 1, "nirgan.expression.artifacts": 1.1,
    "nirgan.expression.twin": 1.2, "nirgan.expression.sources": 1.4,
    "nirgan.expression.step": 2.05, "nirgan.expression.session": 2.1, "nirgan.expression.trainer": 2.2,
    "nirgan.expression.measures": 2.05, "nirgan.expression.audit": 2.1, "nirgan.expression.figures": 2.05,
    "nirgan.expression.stages": 3,
}


# ---------------------------------------------------------------------------- import graph
def module_file(name: str) -> Path | None:
    base = SRC / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``nirgan`` module the file imports, at module level or inside functions (not under
    ``if TYPE_CHECKING:``, which never runs)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from pkg import sub`` imports the submodule when there is one
            found.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m)}


def with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(start: str) -> set[Path]:
    seen: set[str] = set()
    pending = with_parents(start)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imported_modules(module_file(name)):
            pending.extend(with_parents(imported))
    return {module_file(n) for n in seen}


def stage_modules() -> dict[str, str]:
    """``nirgan stage <name>`` -> the module cli.py dispatches it to: ``STAGES[name]`` calls
    ``_stage("<case>")``, whose ``case "<case>":`` imports the stage module."""
    tree = ast.parse((SRC / PACKAGE / "cli.py").read_text())
    dispatch = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_stage")
    modules = {}
    for case in (c for n in ast.walk(dispatch) if isinstance(n, ast.Match) for c in n.cases):
        imports = [b for b in case.body if isinstance(b, ast.ImportFrom)]
        if isinstance(case.pattern, ast.MatchValue) and imports:
            modules[case.pattern.value.value] = f"{imports[0].module}.{imports[0].names[0].name}"
    table = next(n.value for n in ast.walk(tree)
                 if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, ast.Dict)
                 and any(isinstance(t, ast.Name) and t.id == "STAGES"
                         for t in (n.targets if isinstance(n, ast.Assign) else [n.target])))
    out = {}
    for key, value in zip(table.keys, table.values, strict=True):
        calls = [c for c in ast.walk(value) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                 and c.func.id == "_stage"]
        assert len(calls) == 1, f"cli.STAGES[{key.value!r}]: expected one _stage(...) call"
        out[key.value] = modules[calls[0].args[0].value]
    return out


# Both pipelines: the NIR one at the root and the expression one, whose stages run in its folder
# (its code deps point up at ../../src).
DVC_FILES = ("dvc.yaml", "pipelines/expression/dvc.yaml")


def dvc_deps(dvc_file: str = "dvc.yaml") -> dict[str, list[str]]:
    """Each stage's deps as paths relative to the repository root."""
    path = ROOT / dvc_file
    stages = yaml.safe_load(path.read_text())["stages"]
    return {
        name: [os.path.relpath(os.path.normpath(path.parent / str(d)), ROOT) for d in stage.get("deps", [])]
        for name, stage in stages.items()
    }


DVC_STAGES = [(f, stage) for f in DVC_FILES for stage in sorted(dvc_deps(f))]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in deps)


# ----------------------------------------------------------------------------------- tests
def test_every_dvc_stage_is_a_cli_stage():
    assert set(dvc_deps()) | set(dvc_deps(DVC_FILES[1])) == set(stage_modules())
    assert set(dvc_deps()) <= set(stage_modules())


@pytest.mark.parametrize(("dvc_file", "stage"), DVC_STAGES)
def test_dvc_deps_cover_the_stages_import_closure(dvc_file, stage):
    deps = dvc_deps(dvc_file)[stage]
    files = sorted(str(p.relative_to(ROOT)) for p in import_closure(stage_modules()[stage]))
    missing = [f for f in files if not covered(f, deps)]
    assert not missing, (f"{dvc_file} stage {stage!r} runs code it does not declare as deps (a change there "
                         f"would leave stale outputs that `dvc repro` calls up to date): {missing}")


def declared_code(dep: str) -> list[str]:
    """The source files a src/ dep stands for: the file, or every .py file under the folder."""
    path = ROOT / dep
    if path.is_dir():
        return sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))
    return [dep] if path.is_file() else []


@pytest.mark.parametrize(("dvc_file", "stage"), DVC_STAGES)
def test_dvc_code_deps_all_run(dvc_file, stage):
    """A declared src/ dep the stage never imports reruns the stage for nothing (or no longer exists).
    A folder dep is exact: every .py file under it is in the stage's import closure, since a change
    to any file in the folder reruns the stage."""
    files = {str(p.relative_to(ROOT)) for p in import_closure(stage_modules()[stage])}
    code = [d for d in dvc_deps(dvc_file)[stage] if d.startswith("src/")]
    gone = [d for d in code if not declared_code(d)]
    assert not gone, f"{dvc_file} stage {stage!r} declares code that does not exist: {gone}"
    stale = [f for d in code for f in declared_code(d) if f not in files]
    assert not stale, (f"{dvc_file} stage {stage!r} declares code it does not run (list the files it imports "
                       f"instead of their folder): {stale}")


def test_a_folder_dep_counts_every_file_in_it():
    """The checker itself: a folder stands for all of its modules, a file for itself."""
    assert "src/nirgan/twin/render.py" in declared_code("src/nirgan/twin")
    assert "src/nirgan/twin/__init__.py" in declared_code("src/nirgan/twin")
    assert declared_code("src/nirgan/io.py") == ["src/nirgan/io.py"] and declared_code("src/nirgan/nothing.py") == []


def _layer(name: str) -> tuple[float, str]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix], prefix
    raise AssertionError(f"{name}: not in the layer map of tests/test_structure.py")


def test_imports_run_only_downward():
    upward = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name = module_name(path)
        layer, group = _layer(name)
        for imported in imported_modules(path):
            their_layer, their_group = _layer(imported)
            if their_group == group or their_layer < layer or (their_layer == 0 and layer == 0):
                continue
            upward.append(f"{path.relative_to(ROOT)} (layer {layer}) imports {imported} (layer {their_layer})")
    assert not upward, "\n".join(upward)


def test_no_hidden_imports():
    """importlib / __import__ hide a dependency from the import graph (and from dvc.yaml's deps)."""
    hidden = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            if "importlib" in names or (isinstance(node, ast.ImportFrom) and node.module == "importlib") or \
                    (isinstance(node, ast.Name) and node.id == "__import__"):
                hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not hidden, hidden


def test_the_closure_follows_lazy_and_package_imports():
    """The checker itself: a function-level import and the parent packages are in the closure."""
    evaluate = {str(p.relative_to(ROOT)) for p in import_closure("nirgan.stages.evaluate")}
    assert {"src/nirgan/__init__.py", "src/nirgan/stages/__init__.py", "src/nirgan/models/artifacts.py",
            "src/nirgan/augmentation.py", "src/nirgan/training/auxiliary.py"} <= evaluate
    assert "src/nirgan/training/trainer.py" not in evaluate
    # check_config imports the VGG module inside a function
    assert "src/nirgan/models/vgg19.py" in {str(p.relative_to(ROOT)) for p in import_closure("nirgan.training.resume")}


# ----------------------------------------------------------------------- the two families
# The NIR family: the thesis's generator, discriminator, encoder and mapping networks, their
# files and export, the training step, session and trainer around them, generation, and the NIR
# stages that use them. The expression family is the package nirgan.expression. Everything
# else is the neutral core both build on, and it imports neither (tests/test_family_reruns.py
# shows the consequence in DVC's own terms).
NIR_FAMILY = (
    "nirgan.models.networks", "nirgan.models.multinorm", "nirgan.models.encoder_decoder",
    "nirgan.models.latent_encoder", "nirgan.models.style_mapping", "nirgan.models.patch_discriminator",
    "nirgan.models.artifacts", "nirgan.models.export_formats",
    "nirgan.training.core", "nirgan.training.session", "nirgan.training.trainer", "nirgan.training.data",
    "nirgan.training.export", "nirgan.training.resume", "nirgan.training.frozen_networks",
    "nirgan.generation", "nirgan.stages",
)
EXPRESSION_FAMILY = ("nirgan.expression",)


def _in(name: str, family: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in family)


def test_the_neutral_core_imports_neither_family():
    offending = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name = module_name(path)
        if _in(name, NIR_FAMILY) or _in(name, EXPRESSION_FAMILY) or name == "nirgan.cli":
            continue
        offending += [f"{name} imports {m}" for m in sorted(imported_modules(path))
                      if _in(m, NIR_FAMILY) or _in(m, EXPRESSION_FAMILY)]
    assert not offending, "\n".join(offending)


def test_neither_family_imports_the_other():
    crossing = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name = module_name(path)
        for ours, theirs in ((NIR_FAMILY, EXPRESSION_FAMILY), (EXPRESSION_FAMILY, NIR_FAMILY)):
            if _in(name, ours):
                crossing += [f"{name} imports {m}" for m in sorted(imported_modules(path)) if _in(m, theirs)]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize(("dvc_file", "stage"), DVC_STAGES)
def test_each_stage_runs_one_familys_code(dvc_file, stage):
    """A NIR stage runs no expression module and an expression stage no NIR one, so an edit to one
    family never reruns the other's stages (their deps are these closures)."""
    other = NIR_FAMILY if dvc_file.startswith("pipelines/expression") else EXPRESSION_FAMILY
    ran = sorted(module_name(p) for p in import_closure(stage_modules()[stage]))
    assert not [m for m in ran if _in(m, other)], f"{dvc_file} stage {stage!r} runs the other family's code"
