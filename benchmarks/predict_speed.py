"""Time to segment one 175-slice CT volume with `predict`, end to end (model load, reading the
NIfTI, inference, writing mask, overlay and summary), at the default params' image size.

    python benchmarks/predict_speed.py [--slices 175] [--size 512] [--model data/model]
        [--pet-size 128 | --no-pet]

Without --model it builds an untrained U-Net with the default params, train.ensemble members
averaged as train saves them (weights do not change the time). The PET covers the CT's field of
view on its own, coarser grid (--pet-size 128: 3.9 mm voxels, as PET scanners reconstruct; the
IBSI PETs have 3.9-4.7 mm) and is resampled onto the CT as in training; --pet-size equal to
--size gives a PET already on the CT grid.
Prints the wall time of each of --repeat runs and the throughput in slices/s.

--engines N: the real command with `--engine onnx` and `--engine tensorflow`, alternated, N runs
each: medians, their ratio, each engine's split, the voxels where their masks differ.

--whole: the real `predict` command in a fresh process instead, timed from launch to exit (wall
and CPU seconds), then the same work split as the command does it: start-up (interpreter and the
imports before TensorFlow), the model's settings, reading (the model loads in a thread beside it),
waiting for the model, inference (slices prepared, model calls, mask) and writing; with
--registry also `models:/sarcoma-seg/1` from a temporary MLflow store, first (fetched into an
empty cache) and second call (from the cache)."""

import argparse
import json
import os
import resource
import subprocess
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
from sarcoma_seg.model import average_members, build_unet, save_unet  # noqa: E402
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, MODEL_FILE, write_model_config  # noqa: E402
from sarcoma_seg.onnx_model import ONNX_FILE, export_onnx  # noqa: E402
from sarcoma_seg.predict import predict_scan  # noqa: E402
from sarcoma_seg.scans import read_scan  # noqa: E402
from sarcoma_seg.settings import load_settings  # noqa: E402
from sarcoma_seg.transforms import preprocessing_from  # noqa: E402


def default_model(folder: Path, pet: bool = True) -> Path:
    """An untrained U-Net saved as train saves it, with the default params' preprocessing."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = load_settings(ROOT / "params.yaml")
    pre = preprocessing_from(settings.base.image_size, settings.preprocess)
    if not pet:
        pre = replace(pre, pet_window=None)  # a CT-only model, as trained on a source without PET
    tp = settings.train
    members = [
        build_unet(tp.backbone, None, pre.input_channels, tp.bn_momentum)
        for _ in range(tp.ensemble)
    ]
    model = average_members(members, pre.input_channels)
    section = save_unet(model, folder / MODEL_FILE, tp.backbone)
    section = replace(section, onnx_sha256=export_onnx(model, folder / ONNX_FILE))
    write_model_config(folder / MODEL_CONFIG_NAME, pre, settings.inference, section)
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


SPLIT = """
import sys, time
launched = float(sys.argv[1])
import sarcoma_seg
import json, tempfile
from pathlib import Path
from sarcoma_seg.predict import open_model, predict_opened, read_scan
from sarcoma_seg import predict
marks = {"start-up": time.time() - launched}
t = time.perf_counter()
model = open_model(sys.argv[2], Path(tempfile.mkdtemp()), None, sys.argv[3])
marks["model settings"] = time.perf_counter() - t
t = time.perf_counter()
scan = read_scan(Path(sys.argv[4]), None, Path(sys.argv[5]) if len(sys.argv) > 5 else None)
marks["reading (model loading beside it)"] = time.perf_counter() - t
t = time.perf_counter()
model.loader.result()
marks["waiting for the model"] = time.perf_counter() - t
write_outputs = predict.write_outputs
def timed_write(*args):
    marks["inference (prepare, model, mask)"] = time.perf_counter() - t
    start = time.perf_counter()
    write_outputs(*args)
    marks["writing"] = time.perf_counter() - start
predict.write_outputs = timed_write
t = time.perf_counter()
predict_opened(model, scan, Path(tempfile.mkdtemp()) / "out", False)
print(json.dumps(marks))
"""


def whole_command(
    model: str, ct: Path, pet: Path | None, out: Path, env: dict, engine: str | None = None
) -> float:
    """Seconds from launching `predict` in a fresh interpreter to its exit; its CPU seconds
    (user + sys, all threads) are added to CPU_SECONDS."""
    cmd = [sys.executable, "-m", "sarcoma_seg.predict", str(ct), "--model", model]
    cmd += ["--engine", engine] if engine else []
    cmd += ["--out", str(out), "--no-progress"] + (["--pet", str(pet)] if pet else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


CPU_SECONDS: list[float] = []  # of each whole_command, in order


def split_times(
    model: str, ct: Path, pet: Path | None, env: dict, engine: str = "tensorflow"
) -> dict[str, float]:
    """The same work in a fresh interpreter, timed phase by phase."""
    cmd = [sys.executable, "-c", SPLIT, str(time.time()), model, engine, str(ct)]
    cmd += [str(pet)] if pet else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def registered_default(work: Path, folder: Path) -> dict:
    """The model folder registered as sarcoma-seg version 1 in a new sqlite store; its env."""
    import mlflow

    from sarcoma_seg.serving import log_pyfunc

    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(work / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        log_pyfunc(folder, "sarcoma-seg")
    return os.environ | {"MLFLOW_TRACKING_URI": uri, "SARCOMA_SEG_CACHE": str(work / "cache")}


def whole(args: argparse.Namespace, work: Path, model: str, ct: Path, pet: Path | None) -> None:
    """Print the whole-command times and their split."""
    env = dict(os.environ, PYTHONPATH=args.code)
    # best of two: the first launch after a while also reads TensorFlow's libraries from disk
    walls = [whole_command(model, ct, pet, work / f"whole{i}", env) for i in range(2)]
    best = int(np.argmin(walls))
    print(
        f"whole command, model folder: {walls[best]:.2f} s, {CPU_SECONDS[best]:.2f} CPU s "
        f"(user + sys), load average {os.getloadavg()[0]:.1f} (target: under 8 s)"
    )
    split = split_times(model, ct, pet, env)
    print("split: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    if args.registry:
        env = registered_default(work, Path(model)) | {"PYTHONPATH": args.code}
        first = whole_command("models:/sarcoma-seg/1", ct, pet, work / "r1", env)
        second = whole_command("models:/sarcoma-seg/1", ct, pet, work / "r2", env)
        print(
            f"models:/sarcoma-seg/1: first call {first:.2f} s ({CPU_SECONDS[-2]:.2f} CPU s), "
            f"second (cached) {second:.2f} s ({CPU_SECONDS[-1]:.2f} CPU s)"
        )


def engines(args: argparse.Namespace, work: Path, model: str, ct: Path, pet: Path | None) -> None:
    """Both engines' whole commands alternated (--engines N each), their medians and ratio,
    each one's split, the voxels where their masks differ, and `predict --help`."""
    env = dict(os.environ, PYTHONPATH=args.code)
    walls: dict[str, list[float]] = {"onnx": [], "tensorflow": []}
    for _ in range(args.engines):
        for engine in walls:
            walls[engine].append(whole_command(model, ct, pet, work / engine, env, engine))
    median = {engine: float(np.median(times)) for engine, times in walls.items()}
    for engine, times in walls.items():
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{engine}: median {median[engine]:.2f} s of {len(times)} runs ({runs})")
    print(
        f"onnx / tensorflow: {median['onnx'] / median['tensorflow']:.2f} (target <= 0.4); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    masks = {e: np.asarray(nib.load(work / e / "mask.nii.gz").dataobj) for e in walls}
    differing = int((masks["onnx"] != masks["tensorflow"]).sum())
    print(f"voxels where the masks differ: {differing} of {masks['onnx'].size}")
    for engine in walls:
        split = split_times(model, ct, pet, env, engine)
        print(f"split {engine}: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    start = time.perf_counter()
    subprocess.run(["predict", "--help"], capture_output=True, env=env, check=True)
    print(f"predict --help: {time.perf_counter() - start:.2f} s")


def main() -> None:
    """Segment the volume --repeat times and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=175)
    parser.add_argument("--size", type=int, default=512, help="rows = cols of each slice")
    parser.add_argument("--model", help="model folder or MLflow URI (default: untrained)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pet-size", type=int, default=128, help="rows = cols of the PET")
    parser.add_argument("--no-pet", action="store_true", help="a CT-only model (no PET input)")
    parser.add_argument("--whole", action="store_true", help="the command, timed from launch")
    parser.add_argument("--registry", action="store_true", help="--whole with models:/ too")
    parser.add_argument(
        "--engines", type=int, default=0, help="N: both engines' whole commands, N each, alternated"
    )
    parser.add_argument(
        "--code", default=str(ROOT), help="--whole: the checkout whose predict runs (before/after)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model = args.model or str(default_model((work / "model").resolve(), not args.no_pet))
        ct, pet = ct_volume(work, args.slices, args.size, args.pet_size)
        if args.engines:
            return engines(args, work, model, ct, None if args.no_pet else pet)
        if args.whole or args.registry:
            return whole(args, work, model, ct, None if args.no_pet else pet)
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
