"""dvc.yaml is complete: each stage lists every project module it imports (directly or through
other modules) in its deps, and every params section or key it reads in its params."""

import ast
import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_ROOT = "params"  # the name scripts give the whole params dict
SETTINGS_ROOT = "settings"  # the name the stages and the library give the typed Settings
# paths reach dvc.yaml as deps and outs (template variables), not params; as_params() is the
# whole file as MLflow logs it and the checkpoint key hashes it, not an input of an output
NOT_PARAMS = {"paths", "as_params"}


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a third-party module."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(tree: ast.AST) -> list[str]:
    """Every module name an import statement of the tree may load (absolute imports)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def import_closure(module: str) -> set[Path]:
    """The project files that importing `module` loads, packages' __init__ files included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            found = module_file(".".join(parts[:depth]))
            if found and found not in seen:
                seen.add(found)
                todo += imported_names(ast.parse(found.read_text()))
    return seen


def _key(node: ast.AST) -> tuple[ast.AST, str] | None:
    """(container, key) for `x["key"]` or `x.get("key", ...)`, else None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return node.value, str(node.slice.value)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return node.func.value, str(node.args[0].value)
    return None


def settings_read(tree: ast.AST) -> set[str]:
    """Dotted params read from the Settings: `settings.train` gives "train",
    `settings.base.seed` gives "base.seed" (a section used as a whole gives the section)."""
    reads: set[str] = set()
    inner: set[int] = set()  # section reads that a key read refines
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            root = node.value.value
            if isinstance(root, ast.Name) and root.id == SETTINGS_ROOT:
                reads.add(f"{node.value.attr}.{node.attr}")
                inner.add(id(node.value))
    for node in ast.walk(tree):
        is_root = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if is_root and node.value.id == SETTINGS_ROOT and id(node) not in inner:
            reads.add(node.attr)
    return reads


def params_read(tree: ast.AST) -> set[str]:
    """Dotted params read from the whole-params dict or the Settings: `params["train"]` or
    `settings.train` gives "train", `params["base"]["seed"]` or `settings.base.seed` gives
    "base.seed" (a section used as a whole gives the section)."""
    reads: set[str] = settings_read(tree)
    inner: set[int] = set()  # section reads that a key read refines
    for node in ast.walk(tree):
        outer = _key(node)
        if outer is None:
            continue
        container, key = outer
        section = _key(container)
        if section and isinstance(section[0], ast.Name) and section[0].id == PARAMS_ROOT:
            reads.add(f"{section[1]}.{key}")
            inner.add(id(container))
    for node in ast.walk(tree):
        outer = _key(node)
        is_root = outer and isinstance(outer[0], ast.Name) and outer[0].id == PARAMS_ROOT
        if is_root and id(node) not in inner:
            reads.add(outer[1])
    return {read for read in reads if read.split(".")[0] not in NOT_PARAMS}


def used_names(tree: ast.AST) -> set[str]:
    """Every name or attribute the tree mentions (a call of f or m.f mentions f)."""
    return {
        node.id if isinstance(node, ast.Name) else node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Name | ast.Attribute)
    }


def stage_reads(files: set[Path]) -> set[str]:
    """The params a stage reads: module-level reads, and the reads of every function that some
    file of the stage mentions (a library function that no file of the stage uses reads nothing)."""
    trees = [ast.parse(f.read_text()) for f in files]
    mentioned = set().union(*(used_names(tree) for tree in trees))
    reads: set[str] = set()
    for tree in trees:
        for node in tree.body:
            is_function = isinstance(node, ast.FunctionDef | ast.ClassDef)
            if not is_function or node.name in mentioned:
                reads |= params_read(node)
    return reads


def expand(entry: str, paths: dict[str, str]) -> str:
    """A dvc.yaml dep with its ${paths.x} template variables filled in."""
    for key, value in paths.items():
        entry = entry.replace(f"${{paths.{key}}}", str(value))
    return entry


def stage_gaps(stages: dict, paths: dict[str, str]) -> list[str]:
    """Each missing module or params entry, as 'stage: what'."""
    gaps = []
    for name, stage in stages.items():
        module = stage["cmd"].split(" -m ", 1)[1].split()[0]
        files = import_closure(module)
        deps = {(ROOT / expand(dep, paths)).resolve() for dep in stage.get("deps", [])}
        listed = set(stage.get("params", []))
        for path in sorted(files):
            if path.name != "__init__.py" and path.resolve() not in deps:
                gaps.append(f"{name}: dep {path.relative_to(ROOT)}")
        reads = stage_reads(files)
        for read in sorted(reads):
            if read not in listed and read.split(".")[0] not in listed:
                gaps.append(f"{name}: params {read}")
    return gaps


@pytest.fixture(scope="module")
def pipeline() -> tuple[dict, dict[str, str]]:
    """The stages of dvc.yaml and the paths section of params.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = yaml.safe_load((ROOT / "params.yaml").read_text())["paths"]
    return stages, paths


def test_every_stage_lists_what_it_imports_and_reads(pipeline):
    stages, paths = pipeline
    assert stage_gaps(stages, paths) == []


def test_a_removed_dep_is_found(pipeline):
    stages, paths = copy.deepcopy(pipeline)
    stages["train"]["deps"].remove("sarcoma_seg/model.py")
    stages["evaluate"]["params"] = [p for p in stages["evaluate"]["params"] if p != "evaluate"]
    assert stage_gaps(stages, paths) == [
        "train: dep sarcoma_seg/model.py",
        "evaluate: params evaluate.engine",
        "evaluate: params evaluate.figure_slices",
    ]


def test_params_read_known_answers():
    tree = ast.parse(
        "tp = params['train']\n"
        "seed = params.get('base', {}).get('seed')\n"
        "size = params['base']['image_size']\n"
        "raw = params['paths']['raw']\n"
        "other['data']\n"
        "settings.inference.threshold\n"
        "tp = settings.evaluate\n"
        "out = settings.paths.model\n"
        "logged = settings.as_params()\n"
        "other.split.val\n"
    )
    expected = {"train", "base.seed", "base.image_size", "inference.threshold", "evaluate"}
    assert params_read(tree) == expected
