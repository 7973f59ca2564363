"""The typed settings: built once from the checked params.yaml, frozen, the same keys as the
schema, and back to exactly the params they came from (what MLflow logs, what the checkpoint
key hashes)."""

import dataclasses
from pathlib import Path

import pytest

from sarcoma_seg import config, settings
from sarcoma_seg.params import flatten, load_params
from sarcoma_seg.settings import Settings, load_settings, settings_from
from tests.conftest import ROOT, tiny_params

SECTIONS = {
    "paths": settings.Paths,
    "base": settings.Base,
    "data": settings.Data,
    "split": settings.Split,
    "preprocess": settings.Preprocess,
    "train": settings.Train,
    "inference": settings.Inference,
    "evaluate": settings.Evaluate,
}


def test_every_schema_section_is_one_dataclass_with_its_keys() -> None:
    assert [f.name for f in dataclasses.fields(Settings)] == list(config.PARAMS)
    for name, cls in SECTIONS.items():
        assert [f.name for f in dataclasses.fields(cls)] == list(config.PARAMS[name]), name
        assert dataclasses.fields(cls) and all(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls)
        ), f"{name}: params.yaml is the only place a default lives"


@pytest.mark.parametrize("params", [load_params(ROOT / "params.yaml"), tiny_params()])
def test_settings_give_back_exactly_the_params(params: dict) -> None:
    built = settings_from(params)
    assert built.as_params() == params
    assert flatten(built.as_params()) == flatten(params)  # what MLflow logs


def test_the_defaults_are_params_yaml_values() -> None:
    built = load_settings(ROOT / "params.yaml")
    # the values code used to assume when a key was absent now come from params.yaml only
    assert (built.train.monitor, built.train.lr_schedule) == ("last", "cosine")
    assert built.train.ensemble == 1 and built.split.fold == 0
    assert built.paths.model == Path("data/model")
    assert built.data.synthetic.shape == (40, 96, 96)


def test_settings_are_frozen_and_share_nothing_with_the_params() -> None:
    params = tiny_params()
    built = settings_from(params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.train.epochs = 5  # type: ignore[misc]
    params["train"]["augment"]["affine"]["p"] = 0.9
    assert built.train.augment["affine"]["p"] == 0.5


def test_data_sources_become_records() -> None:
    params = tiny_params()
    params["data"]["sources"] = [{"source": "nifti", "path": "a"}, {"source": "hdf5", "path": None}]
    built = settings_from(params).data
    assert built.sources == (
        settings.SourceEntry("nifti", "a"),
        settings.SourceEntry("hdf5", None),
    )
