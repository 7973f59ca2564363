"""params.yaml is checked whole against the schema in sarcoma_seg/config.py, and a model's stored
config (model_config.json) the same way when it is loaded: one line naming the key, exit code 1
through a stage, nothing written."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from sarcoma_seg import config
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.model_folder import (
    LEGACY_CONFIG_NAME,
    check_inference,
    read_model_config,
    write_model_config,
)
from sarcoma_seg.params import flatten, load_params
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing
from stages import split
from tests.conftest import ROOT, tiny_params

Mutation = Callable[[dict[str, Any]], None]


def rename(section: list[str], old: str, new: str) -> Mutation:
    """A mutation that renames key old of the nested section to new (a typo)."""

    def mutate(params: dict[str, Any]) -> None:
        target = params
        for name in section:
            target = target[name]
        target[new] = target.pop(old)

    return mutate


def put(section: list[str], key: str, value: object) -> Mutation:
    """A mutation that sets key of the nested section to value."""

    def mutate(params: dict[str, Any]) -> None:
        target = params
        for name in section:
            target = target[name]
        target[key] = value

    return mutate


def drop(section: list[str], key: str) -> Mutation:
    """A mutation that deletes key of the nested section."""

    def mutate(params: dict[str, Any]) -> None:
        target = params
        for name in section:
            target = target[name]
        del target[key]

    return mutate


# every bad params case: the mutation of tiny_params() and the exact one-line message
BAD_PARAMS: dict[str, tuple[Mutation, str]] = {
    "typo data.sorce": (
        rename(["data"], "source", "sorce"),
        "params.yaml: data.sorce: unknown key; did you mean data.source?",
    ),
    "typo split.tset": (
        put(["split"], "tset", 3),
        "params.yaml: split.tset: unknown key; did you mean split.test?",
    ),
    "nested typo affine.scael": (
        rename(["train", "augment", "affine"], "scale", "scael"),
        "params.yaml: train.augment.affine.scael: unknown key; "
        "did you mean train.augment.affine.scale?",
    ),
    "unknown section": (
        put([], "trian", {"epochs": 2}),
        "params.yaml: trian: unknown key; did you mean train?",
    ),
    "unknown key, nothing near": (
        put(["evaluate"], "colour", "red"),
        "params.yaml: evaluate.colour: unknown key; valid keys: figure_slices, engine",
    ),
    "no paths section": (
        drop([], "paths"),
        "params.yaml: paths: missing section",
    ),
    "missing key": (
        drop(["train"], "loss"),
        "params.yaml: train.loss: missing key",
    ),
    "section not a mapping": (
        put([], "split", [2, 1, 1]),
        "params.yaml: split: expected a mapping of keys, got list",
    ),
    "figure_slices negative": (
        put(["evaluate"], "figure_slices", -3),
        "evaluate.figure_slices=-3 is not allowed; it must be an integer >= 1",
    ),
    "figure_slices huge": (
        put(["evaluate"], "figure_slices", 77),
        f"evaluate.figure_slices=77 is not allowed; it must be an integer <= "
        f"{config.MAX_FIGURE_SLICES}",
    ),
    "image_size huge": (
        put(["base"], "image_size", 100000),
        "base.image_size=100000 is not allowed; it must be a multiple of 32 from 32 to "
        f"{config.MAX_IMAGE_SIZE}",
    ),
    "spacing too fine": (
        put(["data"], "spacing", [0.01, 0.01, 0.01]),
        "data.spacing=[0.01, 0.01, 0.01] is not allowed; it must be null or a list of 3 items, "
        f"each a number in [{config.MIN_SPACING_MM:g}, {config.MAX_SPACING_MM:g}]",
    ),
    "spacing too coarse": (
        put(["data"], "spacing", [5, 1, 500]),
        "data.spacing=[5, 1, 500] is not allowed; it must be null or a list of 3 items, "
        f"each a number in [{config.MIN_SPACING_MM:g}, {config.MAX_SPACING_MM:g}]",
    ),
    "string for an int": (
        put(["train"], "epochs", "ten"),
        "train.epochs='ten' is not allowed; it must be an integer >= 1",
    ),
    "bool for an int": (
        put(["train"], "batch_size", True),
        "train.batch_size=True is not allowed; it must be an integer >= 1",
    ),
    "null where not allowed": (
        put(["base"], "seed", None),
        "base.seed=None is not allowed; it must be an integer >= 0",
    ),
    "batch size huge": (
        put(["train"], "batch_size", 100000000),
        f"train.batch_size=100000000 is not allowed; it must be an integer <= "
        f"{config.MAX_BATCH_SIZE}",
    ),
    "epochs huge": (
        put(["train"], "epochs", 100000),
        f"train.epochs=100000 is not allowed; it must be an integer <= {config.MAX_EPOCHS}",
    ),
    "learning rate read as text": (
        put(["train"], "learning_rate", "1e-3"),
        "train.learning_rate='1e-3' is not allowed; it must be a number in (0, 1] "
        "(YAML reads 1e-3 as text: write it with a dot, e.g. 1.0e-3)",
    ),
    "probability above 1": (
        put(["train", "augment", "gamma"], "p", 1.5),
        "train.augment.gamma.p=1.5 is not allowed; it must be a number in [0, 1]",
    ),
    "threshold at 1": (
        put(["inference"], "threshold", 1),
        "inference.threshold=1 is not allowed; it must be a number in (0, 1)",
    ),
    "window reversed": (
        put(["preprocess"], "hu_window", [240, -160]),
        "preprocess.hu_window=[240, -160] is not allowed; give [low, high] with low < high "
        "within [-2000, 4000]",
    ),
    "one of hu_windows reversed": (
        put(["preprocess"], "hu_windows", [[-160, 240], [100, -20], [-1000, 1000]]),
        "preprocess.hu_windows[1]=[100, -20] is not allowed; give [low, high] with low < high "
        "within [-2000, 4000]",
    ),
    "augment range reversed": (
        put(["train", "augment", "affine"], "scale", [1.1, 0.9]),
        "train.augment.affine.scale=[1.1, 0.9] is not allowed; it must be [low, high] with "
        "low <= high, each a number in [0.1, 10]",
    ),
    "postprocess rm -rf": (
        put(["inference"], "postprocess", "rm -rf"),
        "inference.postprocess='rm -rf' is not allowed; choose one of: none, largest_component",
    ),
    "folds of one": (
        put(["split"], "folds", 1),
        "split.folds=1 is not allowed; it must be null or an integer >= 2",
    ),
    "enabled not a bool": (
        put(["train", "augment", "horizontal_flip"], "enabled", "yes please"),
        "train.augment.horizontal_flip.enabled='yes please' is not allowed; it must be true or "
        "false",
    ),
    "path outside the project": (
        put(["paths"], "raw", "../elsewhere"),
        "paths.raw='../elsewhere' is not allowed; it must be a relative path inside the project, "
        "without '..'",
    ),
    "roi not a regular expression": (
        put(["data"], "roi", "GTV("),
        "data.roi='GTV(' is not allowed; it must be a valid regular expression "
        "(missing ), unterminated subpattern at position 3)",
    ),
    "sources entry with an unknown source": (
        put(
            ["data"], "sources", [{"source": "nifti", "path": "a"}, {"source": "ftp", "path": "b"}]
        ),
        "data.sources[1].source='ftp' is not allowed; choose one of: "
        + ", ".join(config.SOURCE_NAMES),
    ),
    "sources entry with a typo": (
        put(["data"], "sources", [{"sorce": "nifti", "path": "a"}]),
        "params.yaml: data.sources[0].sorce: unknown key; did you mean data.sources[0].source?",
    ),
    "sources empty": (
        put(["data"], "sources", []),
        "data.sources=[] is not allowed; it must be null or a list of 1 to "
        f"{config.MAX_SOURCES} items, each a mapping with keys source, path",
    ),
}


def write_params(project: Path, mutate: Mutation | None = None) -> dict[str, Any]:
    """Write tiny params, changed by mutate, as project/params.yaml."""
    params = tiny_params()
    if mutate:
        mutate(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def produced(project: Path, written: tuple[str, ...] = ()) -> list[str]:
    """Everything in the project besides params.yaml and what the test wrote."""
    found = {str(p.relative_to(project)) for p in project.rglob("*")}
    return sorted(found - {"params.yaml", *written})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_the_real_params_yaml_passes() -> None:
    assert load_params(ROOT / "params.yaml")["base"]["image_size"] % 32 == 0


def test_tiny_params_pass() -> None:
    config.check_params(tiny_params(), "params.yaml")


def test_every_key_of_params_yaml_is_in_the_schema_and_back() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    schema = {name: config.section(fields) for name, fields in config.PARAMS.items()}
    assert sorted(flatten(raw)) == sorted(config.schema_keys(schema))


def test_the_schema_holds_no_defaults() -> None:
    assert "default" not in {f.name for f in fields(config.Spec)}


def test_a_multi_source_run_passes() -> None:
    params = tiny_params()
    params["data"]["sources"] = [{"source": "nifti", "path": "a"}, {"source": "hdf5", "path": None}]
    config.check_params(params, "params.yaml")


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_give_one_line_exit_1_and_write_nothing(
    project: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, message = BAD_PARAMS[case]
    write_params(project, mutate)
    with pytest.raises(SarcomaSegError) as refused:
        load_params()
    assert str(refused.value) == message
    with pytest.raises(SystemExit) as exit_info:
        run_cli(split.main)  # a stage: the schema is checked before any stage reads a value
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert produced(project) == []


def run_stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    """python -m stages.<stage> in cwd with the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(cwd))
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("stage", "case"),
    [
        ("download", "typo data.sorce"),
        ("download", "spacing too fine"),
        ("download", "no paths section"),
        ("split", "typo split.tset"),
        ("split", "figure_slices negative"),
        ("split", "image_size huge"),
        ("download", "nested typo affine.scael"),
    ],
)
def test_a_stage_run_prints_the_one_line_and_exits_1(tmp_path: Path, stage: str, case: str) -> None:
    mutate, message = BAD_PARAMS[case]
    write_params(tmp_path, mutate)
    done = run_stage(stage, tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"error: {message}"]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_yaml_that_is_not_a_mapping_is_one_line(project: Path) -> None:
    (project / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SarcomaSegError, match=r"^params\.yaml: expected a mapping of sections"):
        load_params()


# --- the model's stored config (model_config.json) ---------------------------------------------


def stored_config(folder: Path) -> Path:
    """A model folder's config under the legacy name, as older trainings wrote it."""
    pre = Preprocessing((-160.0, 240.0), 32, 3, pet_window=(0.0, 6.0))
    inference = check_inference(tiny_params()["inference"])
    folder.mkdir(parents=True, exist_ok=True)
    write_model_config(folder / LEGACY_CONFIG_NAME, pre, inference)
    return folder / LEGACY_CONFIG_NAME


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a JSON file with change applied."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD_CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown key": (
        lambda c: c.update(contxt=0),
        "contxt: unknown key; did you mean context?",
    ),
    "unknown inference key": (
        lambda c: c["inference"].update(treshold=0.5),
        "inference.treshold: unknown key; did you mean inference.threshold?",
    ),
    "postprocess rm -rf": (
        lambda c: c["inference"].update(postprocess="rm -rf"),
        "inference.postprocess='rm -rf' is not allowed; choose one of: none, largest_component",
    ),
    "threshold out of range": (
        lambda c: c["inference"].update(threshold=5),
        "inference.threshold=5 is not allowed; it must be a number in (0, 1)",
    ),
    "image size as text": (
        lambda c: c.update(image_size="96"),
        "image_size='96' is not allowed; it must be a multiple of 32 from 32 to "
        f"{config.MAX_IMAGE_SIZE}",
    ),
    "channels a bool": (
        lambda c: c.update(channels=True),
        "channels=True is not allowed; it must be an integer >= 1",
    ),
    "pet window reversed": (
        lambda c: c.update(pet_window=[6, 0]),
        "pet_window=[6, 0] is not allowed; give [low, high] with low < high within [0, 100]",
    ),
    "units unknown": (
        lambda c: c.update(units="furlongs"),
        "units='furlongs' is not allowed; choose one of: HU, png8",
    ),
    "missing image size": (
        lambda c: c.pop("image_size"),
        "image_size: missing key",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_stored_config_is_refused_naming_the_file(tmp_path: Path, case: str) -> None:
    change, message = BAD_CONFIGS[case]
    path = stored_config(tmp_path / "model")
    edit(path, change)
    with pytest.raises(SarcomaSegError) as refused:
        read_model_config(path)
    assert str(refused.value) == f"{path}: {message}"


def test_a_stored_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / LEGACY_CONFIG_NAME
    path.write_text("[1, 2]")
    with pytest.raises(
        SarcomaSegError, match=r"preprocessing\.json: expected a mapping of keys, got list$"
    ):
        read_model_config(path)


def test_an_older_models_config_without_the_later_keys_still_loads(tmp_path: Path) -> None:
    path = tmp_path / LEGACY_CONFIG_NAME
    older = {"hu_window": [-160, 240], "image_size": 96, "channels": 3}
    path.write_text(json.dumps({**older, "inference": {"threshold": 0.5}}))
    config = read_model_config(path)
    assert config.preprocessing == Preprocessing((-160.0, 240.0), 96, 3)
    assert config.inference == Inference(0.5, "none", False, 0.0, None)  # what older models did


def test_the_evaluate_stage_refuses_a_bad_stored_config(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages import evaluate

    write_params(project)
    path = stored_config(project / "data" / "model")
    edit(path, lambda c: c["inference"].update(postprocess="rm -rf"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: data/model/{LEGACY_CONFIG_NAME}: inference.postprocess='rm -rf' is not allowed; "
        "choose one of: none, largest_component"
    ]
    assert produced(project, ("data", "data/model", f"data/model/{LEGACY_CONFIG_NAME}")) == []


def test_check_inference_refuses_unknown_keys_and_keeps_its_defaults() -> None:
    assert check_inference({"threshold": 0.4}) == {
        "threshold": 0.4,
        "postprocess": "none",
        "tta_flip": False,
        "z_sigma": 0.0,
        "review_below": None,  # an older model carries no review rule
    }
    with pytest.raises(
        SarcomaSegError,
        match=r"^inference\.tta_flp: unknown key; did you mean inference\.tta_flip\?$",
    ):
        check_inference({"threshold": 0.4, "tta_flp": True})


# --- the names the schema repeats from code registries ------------------------------------------


def test_the_schemas_names_match_the_code_registries() -> None:
    from sarcoma_seg import inference, model, sources, transforms

    assert tuple(sources.SOURCES) == config.SOURCE_NAMES
    assert tuple(model.LOSSES) == config.LOSS_NAMES
    assert (*model.MONITORS, "last") == config.MONITOR_NAMES
    assert config.LR_SCHEDULE_NAMES == model.LR_SCHEDULES
    assert config.ENCODER_WEIGHTS == model.ENCODER_WEIGHTS
    assert tuple(inference.POSTPROCESS) == config.POSTPROCESS_NAMES
    assert tuple(transforms.WINDOW_PARAMS) == config.UNITS
    assert tuple(config.AUGMENT) == tuple(transforms._augmentations(32))
    stored = {f.name for f in fields(transforms.Preprocessing)} | {"inference", "model"}
    assert set(config.MODEL_CONFIG) == stored


def test_the_default_backbone_is_one_segmentation_models_builds() -> None:
    from sarcoma_seg.model import backbones

    assert load_params(ROOT / "params.yaml")["train"]["backbone"] in backbones()
