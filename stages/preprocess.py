"""DVC stage `preprocess`: axial slices per split, HU window, resize, channels, binary masks."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from sarcoma_seg.dataset import SliceSet, save_slice_set
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.inference import CONFIG_NAME, save_config
from sarcoma_seg.params import load_params
from sarcoma_seg.split import SETS
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.transforms import Preprocessing, preprocessing_from_params
from sarcoma_seg.volumes import Volume, load_volumes


def slice_set(volumes: list[Volume], pre: Preprocessing) -> SliceSet:
    """Every axial slice of the given patients, preprocessed and tagged with patient and index;
    no patients (split.val: 0) give an empty set of the same layout."""
    if not volumes:
        size = pre.image_size
        return SliceSet(
            images=np.zeros((0, size, size, pre.input_channels), np.float32),
            masks=np.zeros((0, size, size), np.uint8),
            patients=np.zeros(0, str),
            slices=np.zeros(0, np.int64),
            spacing={},
        )
    return SliceSet(
        images=np.concatenate([pre.volume(v.ct, v.pet) for v in volumes]),
        masks=np.concatenate([pre.volume_mask(v.mask) for v in volumes]),
        patients=np.concatenate([[v.patient_id] * len(v.ct) for v in volumes]).astype(str),
        slices=np.concatenate([np.arange(len(v.ct)) for v in volumes]),
        spacing={v.patient_id: list(v.spacing) for v in volumes},
    )


def with_pet_if_present(pre: Preprocessing, volumes: list[Volume]) -> Preprocessing:
    """PET becomes an input channel where the source has it: every patient, or else none."""
    if pre.pet_window is None:
        return pre
    missing = [v.patient_id for v in volumes if v.pet is None]
    if len(missing) == len(volumes):
        print("preprocess.pet_window: this source has no PET; the model reads CT only")
        return replace(pre, pet_window=None)
    if missing:
        raise SarcomaSegError(
            f"patient {missing[0]} has no PET but others do ({len(missing)} without); "
            "a PET channel needs every patient's PET: set preprocess.pet_window: null"
        )
    return pre


def stats(data: SliceSet) -> dict[str, float | int]:
    """Slices, tumour-bearing slices, tumour pixel fraction and tumour-free patients of a split."""
    per_slice = data.masks.sum(axis=(1, 2))
    per_patient = {p: per_slice[idx].sum() for p, idx in data.patient_indices().items()}
    return {
        "patients": len(per_patient),
        "patients_without_tumour": int(sum(v == 0 for v in per_patient.values())),
        "slices": len(data.masks),
        "tumour_slices": int((per_slice > 0).sum()),
        "tumour_pixel_fraction": round(float(data.masks.mean()), 6) if len(data.masks) else 0.0,
    }


def main() -> None:
    """Write one .npz per split and the data statistics metrics file."""
    params = load_params()
    paths = params["paths"]
    preprocessing_from_params(params["base"], params["preprocess"])  # validate before reading
    split = json.loads(Path(paths["split"]).read_text())
    volumes = {name: load_volumes(Path(paths["raw"]), split[name]) for name in SETS}
    units = {v.units for vols in volumes.values() for v in vols}
    if len(units) != 1:
        raise SarcomaSegError(f"{paths['raw']}: patients mix intensity units {sorted(units)}")
    pre = preprocessing_from_params(params["base"], params["preprocess"], units.pop())
    pre = with_pet_if_present(pre, [v for vols in volumes.values() for v in vols])
    sets = {name: slice_set(vols, pre) for name, vols in volumes.items()}
    with staged_dir(Path(paths["preprocessed"])) as out:  # all sets, or the previous ones
        for name, data in sets.items():
            save_slice_set(out / f"{name}.npz", data)
        save_config(out / CONFIG_NAME, pre)  # train, evaluate and predict reuse exactly this
    metrics = Path(paths["metrics"])
    metrics.mkdir(parents=True, exist_ok=True)
    summary = {name: stats(data) for name, data in sets.items()}
    (metrics / "data_stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
