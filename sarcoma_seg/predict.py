"""`predict`: segment a new scan with a trained model and write the mask in the scan's own
geometry, an overlay montage and a JSON summary.

    predict --model data/model CT.nii.gz --out predictions/CT
    predict --model models:/sarcoma-seg/3 DICOM_FOLDER/
    predict --model runs:/<run id>/model lab_petct_vox_5.00mm.h5 --patient STS_002
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.config import MAX_BATCH_SIZE
from sarcoma_seg.errors import SarcomaSegError, one_line, run_cli
from sarcoma_seg.inference import (
    Predictor,
    Segmentation,
    inference_batch_size,
    segment_images,
    traced_predictor,
)
from sarcoma_seg.lesions import components
from sarcoma_seg.model_folder import (
    MODEL_CONFIG_NAME,
    MODEL_FILE,
    FolderConfig,
    engine_for,
    load_unet,
    model_config_path,
    open_engine,
    read_folder_config,
    stored_config_name,
)
from sarcoma_seg.onnx_model import ONNX_FILE
from sarcoma_seg.scans import Scan, read_scan, reader_name, scan_stem
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
# where a pyfunc's model.h5 and model config (model_folder.stored_config_name) lie below a
# URI: a model's own artifacts, a run's "model" folder, or the URI itself
MLFLOW_MODEL_DIRS = ("artifacts", "model/artifacts", "")
MONTAGE_SLICES = 12  # tumour slices shown in the overlay, evenly spread over the slice range


def fetch_model_files(uri: str, scratch: Path) -> Path:
    """Download only model.h5, model.onnx (where logged) and the stored config
    (model_folder.stored_config_name: model_config.json or the legacy name) of an MLflow model:
    never the pickled pyfunc wrapper or its bundled code, which mlflow.pyfunc.load_model would
    execute."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from sarcoma_seg.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    scratch.mkdir(parents=True, exist_ok=True)  # the cache hands over a folder still to make
    try:
        repo = get_artifact_repository(uri)
        for prefix in MLFLOW_MODEL_DIRS:
            names = {Path(item.path).name for item in repo.list_artifacts(prefix or None)}
            config = stored_config_name(names)
            if MODEL_FILE in names and config is not None:
                local = [
                    Path(repo.download_artifacts(f"{prefix}/{name}".lstrip("/"), str(scratch)))
                    for name in (MODEL_FILE, config, ONNX_FILE)
                    if name in names
                ]
                return local[0].parent  # where the repository put them, both in one folder
    except (MlflowException, OSError) as exc:
        reason = one_line(exc)
        raise SarcomaSegError(f"model {uri}: cannot be fetched from MLflow ({reason})") from exc
    raise SarcomaSegError(f"model {uri}: holds no {MODEL_FILE} with {MODEL_CONFIG_NAME}")


def model_folder(uri: str, scratch: Path) -> Path:
    """A local folder holding model.h5 and its stored config, from a path or an MLflow URI
    (a registry version through the local cache, sarcoma_seg.model_cache)."""
    if uri.startswith(MLFLOW_SCHEMES):
        if ".." in uri.split("/"):  # runs:/<id>/../.. would leave the run's artifact folder
            raise SarcomaSegError(f"model {uri}: '..' is not allowed in a model URI")
        from sarcoma_seg.model_cache import cached_model
        from sarcoma_seg.tracking import tracking_uri

        cached = cached_model(uri, tracking_uri(), lambda dst: fetch_model_files(uri, dst))
        return cached or fetch_model_files(uri, scratch)
    local = Path(uri)
    if not local.exists():
        raise SarcomaSegError(f"model {uri}: no such folder, and not a runs:/ or models:/ URI")
    for folder in (local, *(local / d for d in MLFLOW_MODEL_DIRS if d)):
        if (folder / MODEL_FILE).is_file() and model_config_path(folder).is_file():
            return folder
    raise SarcomaSegError(f"model {uri}: holds no {MODEL_FILE} with {MODEL_CONFIG_NAME}")


def lesion_summary(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """Tumour volume in cm3, connected lesions (26-connectivity) and the slices they span."""
    _, lesions, _ = components(mask)
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    return {
        "tumour_volume_cm3": round(float(mask.sum()) * float(np.prod(spacing)) / 1000.0, 4),
        "lesions": int(lesions),
        "tumour_slices": len(slices),
        "slice_range": [int(slices[0]), int(slices[-1])] if len(slices) else None,
    }


def montage_slices(mask: np.ndarray, count: int = MONTAGE_SLICES) -> list[int]:
    """Slices to show: evenly over the tumour's slices, or over the whole scan if none."""
    pool = np.flatnonzero(mask.any(axis=(1, 2)))
    if not len(pool):
        pool = np.arange(len(mask))
    picks = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)
    return [int(pool[i]) for i in sorted(set(picks.tolist()))]


def check_compatible(scan: Scan, pre: Preprocessing) -> None:
    """Refuse inputs the model cannot read: other intensity units, or PET missing."""
    if scan.units != pre.units:
        raise SarcomaSegError(
            f"{scan.name}: intensities are {scan.units}, but the model was trained on {pre.units}"
        )
    if pre.pet_window is not None and scan.pet is None:
        raise SarcomaSegError(f"{scan.name}: this model reads PET as well as CT; give --pet")


class ModelLoader(threading.Thread):
    """The U-Net of a model folder, loaded and its forward pass traced in a thread of its own
    while the main thread reads the scan: importing TensorFlow and building the model run Python
    code (they hold the GIL), reading a gzip NIfTI and preparing its slices mostly do not (zlib,
    NumPy and OpenCV release it), so the two overlap on two cores."""

    def __init__(
        self, stored: FolderConfig, batch_shape: tuple[int, int, int, int], engine: str
    ) -> None:
        # not a daemon: an early exit (bad input) waits for it rather than tearing TensorFlow
        # down in the middle of its import
        super().__init__(name="predict-model-loader")
        self.stored, self.folder, self.batch_shape = stored, stored.folder, batch_shape
        self.engine = engine
        self.cancelled = threading.Event()  # set when the command fails: skip what is left
        self.loaded: tuple[Any, Predictor] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """ONNX: check and open model.onnx (onnx_model.load_onnx); TensorFlow: import it, load
        the U-Net (model_folder.load_unet's checks) and trace it."""
        try:
            if self.engine == "onnx":  # hashing, parsing and the session overlap the reading
                self.loaded = (None, open_engine(self.stored, "onnx").predictor)
                return
            model = None if self.cancelled.is_set() else load_unet(self.folder)
            if model is not None and not self.cancelled.is_set():
                self.loaded = (model, traced_predictor(model, self.batch_shape))
        except BaseException as exc:  # handed over to the main thread by result()
            self.error = exc

    def result(self) -> tuple[Any, Predictor]:
        """(model, predictor) once loaded; what loading raised is raised here."""
        self.join()
        if self.error is not None:
            raise self.error
        if self.loaded is None:
            raise SarcomaSegError(f"model {self.folder}: loading was cancelled")
        return self.loaded


@dataclass
class OpenModel:
    """A model whose settings are read and whose U-Net is loading (ModelLoader)."""

    uri: str
    pre: Preprocessing
    inference: Inference
    batch_size: int  # slices per model call
    loader: ModelLoader
    started: float  # time.perf_counter() when loading began
    engine: str = "tensorflow"  # model_folder.ENGINES

    def cancel(self) -> None:
        """The command failed: let the loader stop after its current step."""
        self.loader.cancelled.set()


def open_model(
    model_uri: str, scratch: Path, batch_size: int | None, engine: str | None = None
) -> OpenModel:
    """Read a model's settings (its folder fetched first for an MLflow URI) and start loading
    it (ONNX Runtime or TensorFlow) in the background while the scan is read."""
    started = time.perf_counter()
    folder = model_folder(model_uri, scratch)
    found = read_folder_config(folder)
    pre, inference = found.pre, found.inference
    size = batch_size or inference_batch_size(pre.image_size)
    chosen = engine_for(found, engine)
    shape = (size, pre.image_size, pre.image_size, pre.input_channels)
    loader = ModelLoader(found, shape, chosen)
    loader.start()
    return OpenModel(model_uri, pre, inference, size, loader, started, chosen)


def segment(model: OpenModel, scan: Scan, progress: bool) -> Segmentation:
    """The scan's mask and the model's confidence, once the model is loaded (the steps and
    batches of inference.segment_volume, so the same mask as evaluate's)."""
    from tqdm import tqdm

    check_compatible(scan, model.pre)
    unet, predictor = model.loader.result()
    # after the model, not beside its loading: preparing takes and drops the GIL ~5 times a
    # slice, and each time waits for the loading thread to let go of it (up to 5 ms)
    images = model.pre.volume(scan.ct, scan.pet)
    shape = scan.ct.shape[1:]
    with tqdm(total=len(scan.ct), unit="slice", desc="segmenting", disable=not progress) as bar:
        return segment_images(
            unet, model.pre, images, shape, model.inference, model.batch_size, bar.update, predictor
        )


def write_outputs(
    scan: Scan, mask: np.ndarray, pre: Preprocessing, summary: dict[str, Any], out: Path
) -> None:
    """Mask, overlay and summary into out, all or nothing."""
    from sarcoma_seg.overlay import overlay_montage

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:  # everything is written beside out first, then moved in: no half-written results
        scan.save_mask(mask, staging / f"mask{scan.mask_suffix}")
        picks = montage_slices(mask)
        overlay_montage(
            [pre.display(scan.ct[i]) for i in picks],
            [mask[i] for i in picks],
            [f"slice {i}" for i in picks],
            staging / "overlay.png",
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        for item in staging.iterdir():
            item.replace(out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def predict_opened(
    model: OpenModel,
    scan: Scan,
    out: Path,
    progress: bool,
    finish: Callable[[dict[str, Any], np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Segment one scan with an opened model and write mask, overlay and summary into out;
    finish(summary, mask) adds to the summary before it is written (the cohort's Dice)."""
    try:
        found = segment(model, scan, progress)
    except BaseException:
        model.cancel()
        raise
    mask = found.mask
    summary = {"input": scan.name, "model": model.uri, "engine": model.engine}
    summary["shape"] = list(scan.ct.shape)
    summary |= {"spacing_mm": list(scan.spacing), **lesion_summary(mask, scan.spacing)}
    summary |= {"confidence": found.confidence, "needs_review": found.needs_review}
    summary["seconds"] = round(time.perf_counter() - model.started, 3)
    if finish is not None:
        finish(summary, mask)
    write_outputs(scan, mask, model.pre, summary, out)
    return summary


def predict_scan(
    model_uri: str, scan: Scan, out: Path, batch_size: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Segment one scan and write mask, overlay and summary into out (all or nothing)."""
    with tempfile.TemporaryDirectory(prefix="sarcoma-predict-") as scratch:
        model = open_model(model_uri, Path(scratch), batch_size)
        return predict_opened(model, scan, out, progress)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of `predict`."""
    parser = argparse.ArgumentParser(prog="predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "input", type=Path, nargs="?", help="NIfTI file, DICOM folder, HDF5 file or PNG"
    )
    parser.add_argument(
        "--cohort",
        type=Path,
        help="a folder of patients instead of one input: NIfTI patient folders or imagesTr, or a "
        "DICOM tree; one model load, DIR/<patient>/ each, DIR/cohort.csv",
    )
    parser.add_argument(
        "--roi", default="GTV", help="--cohort of DICOM: regex of the RTSTRUCT truth ROI (Dice)"
    )
    parser.add_argument(
        "--model", required=True, help="model folder (data/model), runs:/<id>/model or models:/N/V"
    )
    parser.add_argument("--out", type=Path, help="output folder (default predictions/<input>)")
    parser.add_argument("--patient", help="patient id inside an HDF5 input")
    parser.add_argument(
        "--pet", type=Path, help="PET (NIfTI file or DICOM series folder) for models that read PET"
    )
    parser.add_argument(
        "--batch-size", type=int, help="slices per model call (default: by image size, 16 at 96 px)"
    )
    parser.add_argument(
        "--engine",
        choices=("onnx", "tensorflow"),
        help="onnx (ONNX Runtime, no TensorFlow; the default where the model has model.onnx) or "
        "tensorflow (model.h5)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if (args.input is None) == (args.cohort is None):
        parser.error("give one input, or --cohort FOLDER")
    return args


def check_out(out: Path) -> None:
    """Refuse, before any inference, an output that names a file (results go into a folder) or
    that cannot be made: its nearest existing ancestor must be a folder this process can write."""
    if out.exists() and not out.is_dir():
        raise SarcomaSegError(f"--out {out}: is an existing file; give a folder")
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SarcomaSegError(f"--out {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SarcomaSegError(f"--out {out}: cannot write in {ancestor}")


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold --out for this run: a second predict into the same folder is refused at once
    instead of both writing and the last one winning. The lock file lies in the temporary
    folder, named by the output's absolute path, so nothing appears beside the output."""
    key = hashlib.sha256(str(out.absolute()).encode()).hexdigest()[:24]
    with (Path(tempfile.gettempdir()) / f"sarcoma-seg-predict-{key}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SarcomaSegError(f"--out {out}: another predict is writing it") from None
        yield


def check_batch_size(batch_size: int | None) -> None:
    """--batch-size within 1..config.MAX_BATCH_SIZE (a huge batch would exhaust memory)."""
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SarcomaSegError(
            f"--batch-size={batch_size} is not allowed; it must be 1 to {MAX_BATCH_SIZE}"
        )


def run_cohort_command(args: argparse.Namespace) -> None:
    """--cohort: one model load, every patient into out/<patient>/, out/cohort.csv; exit 1 at
    the end naming the patients skipped."""
    from sarcoma_seg.cohort import COHORT_TABLE, run_cohort

    out = args.out or Path("predictions") / args.cohort.name
    check_out(out)
    with out_lock(out), tempfile.TemporaryDirectory(prefix="sarcoma-predict-") as scratch:
        model = open_model(args.model, Path(scratch), args.batch_size, args.engine)

        def segment(scan: Scan, target: Path, finish: Callable) -> dict[str, Any]:
            """predict's one-scan path, timed per patient (not from the model load)."""
            model.started = time.perf_counter()
            return predict_opened(model, scan, target, False, finish)

        skipped = run_cohort(args.cohort, out, args.roi, segment, not args.no_progress)
    print(json.dumps({"cohort": str(args.cohort), "table": str(out / COHORT_TABLE)}))
    if skipped:
        raise SarcomaSegError(f"{len(skipped)} patient(s) skipped: {', '.join(skipped)}")


def run(args: argparse.Namespace) -> None:
    """Check the arguments, start loading the model, read the scan meanwhile, segment it and
    print the summary, the only line on stdout."""
    check_batch_size(args.batch_size)
    if args.cohort is not None:
        run_cohort_command(args)
        return
    out = args.out or Path("predictions") / scan_stem(args.input, args.patient)
    check_out(out)
    reader_name(args.input)  # a missing or unknown input: refused before anything slow starts
    with out_lock(out), tempfile.TemporaryDirectory(prefix="sarcoma-predict-") as scratch:
        try:
            model = open_model(args.model, Path(scratch), args.batch_size, args.engine)
        except SarcomaSegError:
            read_scan(args.input, args.patient, args.pet)  # a bad input is named first, as ever
            raise
        try:
            scan = read_scan(args.input, args.patient, args.pet)
        except BaseException:
            model.cancel()
            raise
        summary = predict_opened(model, scan, out, not args.no_progress)
    print(json.dumps(summary))


def main(argv: list[str] | None = None) -> None:
    """`predict` in this process: parse, run, an anticipated failure as one line (run_cli)."""
    import sarcoma_seg  # noqa: F401  (environment for TensorFlow before anything imports it)

    args = parse_args(argv)
    run_cli(lambda: run(args))


def cli() -> None:
    """Entry point of the `predict` console command: main(), then exit at once, without the
    interpreter's teardown and without waiting for a model loader an error or SIGTERM cut short
    (outputs and temporary folders are settled by then: written and moved in, or removed)."""
    try:
        main()
        code = 0
    except SystemExit as exc:  # run_cli's exits: 1 bad input, 130 SIGINT, 143 SIGTERM, 2 usage
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    # tearing down TensorFlow's modules and thread pools took 1.2 s of a ~12 s command here, and
    # an error while TensorFlow was still importing waited for that import to finish
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
