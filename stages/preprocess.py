"""DVC stage `preprocess`: axial slices per split, HU window, resize, channels, binary masks."""

import json

from sarcoma_seg.dataset import save_slice_set, slice_set, stats, with_pet_if_present
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.io.store import load_volumes
from sarcoma_seg.model_config import write_data_config
from sarcoma_seg.settings import load_settings
from sarcoma_seg.split import SETS
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.transforms import preprocessing_from


def main() -> None:
    """Write one .npz per split and the data statistics metrics file."""
    settings = load_settings()
    paths, size = settings.paths, settings.base.image_size
    preprocessing_from(size, settings.preprocess)  # validate before reading
    split = json.loads(paths.split.read_text())
    volumes = {name: load_volumes(paths.raw, split[name]) for name in SETS}
    units = {v.units for vols in volumes.values() for v in vols}
    if len(units) != 1:
        raise SarcomaSegError(f"{paths.raw}: patients mix intensity units {sorted(units)}")
    pre = preprocessing_from(size, settings.preprocess, units.pop())
    pre = with_pet_if_present(pre, [v for vols in volumes.values() for v in vols])
    sets = {name: slice_set(vols, pre) for name, vols in volumes.items()}
    with staged_dir(paths.preprocessed) as out:  # all sets, or the previous ones
        for name, data in sets.items():
            save_slice_set(out / f"{name}.npz", data)
        write_data_config(out, pre)  # train, evaluate and predict reuse exactly this
    paths.metrics.mkdir(parents=True, exist_ok=True)
    summary = {name: stats(data) for name, data in sets.items()}
    (paths.metrics / "data_stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    run_cli(main)
