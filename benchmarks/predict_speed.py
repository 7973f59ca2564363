"""Time to segment one 175-slice CT volume with `predict`, end to end (model load, reading the
NIfTI, inference, writing mask, overlay and summary), at the default params' image size.

    python benchmarks/predict_speed.py [--slices 175] [--size 512] [--model data/model]
        [--pet-size 128 | --no-pet]

Without --model it builds an untrained U-Net with the default params, train.ensemble members
averaged as train saves them (weights do not change the time). The PET covers the CT's field of
view on its own, coarser grid (--pet-size 128: 3.9 mm voxels, as PET scanners reconstruct; the
IBSI PETs have 3.9-4.7 mm) and is resampled onto the CT as in training; --pet-size equal to
--size gives a PET already on the CT grid.
Prints the wall time of each of --repeat runs and the throughput in slices/s."""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sarcoma_seg  # noqa: E402,F401  (environment for TensorFlow and segmentation-models)
from sarcoma_seg.inference import check_inference, save_config  # noqa: E402
from sarcoma_seg.model import MODEL_FILE, average_members, build_unet, save_unet  # noqa: E402
from sarcoma_seg.params import load_params  # noqa: E402
from sarcoma_seg.predict import predict_scan  # noqa: E402
from sarcoma_seg.scans import read_scan  # noqa: E402
from sarcoma_seg.transforms import preprocessing_from_params  # noqa: E402


def default_model(folder: Path, pet: bool = True) -> Path:
    """An untrained U-Net saved as train saves it, with the default params' preprocessing."""
    folder.mkdir(parents=True, exist_ok=True)
    params = load_params(ROOT / "params.yaml")
    pre = preprocessing_from_params(params["base"], params["preprocess"])
    if not pet:
        pre = replace(pre, pet_window=None)  # a CT-only model, as trained on a source without PET
    tp = params["train"]
    members = [
        build_unet(tp["backbone"], None, pre.input_channels, tp["bn_momentum"])
        for _ in range(tp.get("ensemble", 1))
    ]
    model = average_members(members, pre.input_channels)
    section = save_unet(model, folder / MODEL_FILE, tp["backbone"])
    save_config(folder / "preprocessing.json", pre, check_inference(params["inference"]), section)
    return folder


def body(size: int) -> np.ndarray:
    """An elliptic body outline filling most of a size x size slice."""
    rows, cols = np.mgrid[:size, :size]
    return ((rows - size / 2) / (0.4 * size)) ** 2 + ((cols - size / 2) / (0.3 * size)) ** 2 < 1


def ct_volume(path: Path, slices: int, size: int, pet_size: int) -> tuple[Path, Path]:
    """A body-like CT of slices x size x size voxels of 0.98 x 0.98 x 3 mm, and a PET of
    slices x pet_size x pet_size over the same field of view, as NIfTI."""
    rng = np.random.default_rng(0)
    ct = np.where(body(size), 40.0, -1000.0)[None] + rng.normal(0, 10, (slices, size, size))
    affine = np.diag([0.98, 0.98, 3.0, 1.0])
    nib.save(nib.Nifti1Image(ct.astype(np.int16).transpose(2, 1, 0), affine), path / "ct.nii.gz")
    pet = np.where(body(pet_size), 1.0, 0.0)[None].repeat(slices, 0).astype(np.float32)
    zoom = size / pet_size
    pet_affine = np.diag([0.98 * zoom, 0.98 * zoom, 3.0, 1.0])
    pet_affine[:2, 3] = 0.98 * (zoom - 1) / 2  # the same field of view: edges line up
    nib.save(nib.Nifti1Image(pet.transpose(2, 1, 0), pet_affine), path / "pet.nii.gz")
    return path / "ct.nii.gz", path / "pet.nii.gz"


def main() -> None:
    """Segment the volume --repeat times and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=175)
    parser.add_argument("--size", type=int, default=512, help="rows = cols of each slice")
    parser.add_argument("--model", help="model folder or MLflow URI (default: untrained)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pet-size", type=int, default=128, help="rows = cols of the PET")
    parser.add_argument("--no-pet", action="store_true", help="a CT-only model (no PET input)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model = args.model or str(default_model((work / "model").resolve(), not args.no_pet))
        ct, pet = ct_volume(work, args.slices, args.size, args.pet_size)
        times = []
        for i in range(args.repeat):
            start = time.perf_counter()
            scan = read_scan(ct, pet=None if args.no_pet else pet)
            predict_scan(model, scan, work / f"out{i}", progress=False)
            times.append(time.perf_counter() - start)
    best = min(times)
    pet_grid = "no PET" if args.no_pet else f"PET {args.pet_size} x {args.pet_size}"
    print(
        f"volume {args.slices} x {args.size} x {args.size} ({pet_grid}): "
        + ", ".join(f"{t:.2f} s" for t in times)
    )
    print(f"best {best:.2f} s = {args.slices / best:.1f} slices/s (target: under 10 s)")


if __name__ == "__main__":
    main()
