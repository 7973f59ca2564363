"""Time reading the real data sets into Volumes: 20 IBSI NIfTI patients, 1246 PNG slices, the 15
DICOM + RTSTRUCT patients, and NIfTI + DICOM together as the download stage merges them
(data.sources, store written included).

    python benchmarks/load_volumes.py [--data ../shared/data] [--repeat 3] [--only NAME ...]

Prints, per data set, patients, slices, voxels, bytes (files read and arrays held), seconds of
the first run and the best run, and the peak resident memory of a fresh process that read it.
The first run is the first in that process; the operating system may still have the files
cached from earlier, so it is "cold" only for Python.
"""

import argparse
import gc
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sarcoma_seg import sources
from sarcoma_seg.io.dicom import read_dicom
from sarcoma_seg.io.nifti import nifti_inputs, read_nifti
from sarcoma_seg.io.png import read_slices, slice_inputs
from sarcoma_seg.io.store import load_volumes, raw_patient_ids
from sarcoma_seg.params import load_params
from sarcoma_seg.settings import data_from
from sarcoma_seg.volumes import Volume

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
BOTH = ("ibsi-sts", "ibsi-sts-dicom")
ROI = "GTV"  # the CT RTSTRUCTs name it GTV_Mass_CT
Read = tuple[list[Volume], int]  # volumes, bytes of the files read
CPU_SECONDS: list[float] = []  # this process's CPU time of each run


def file_bytes(paths: list[Path]) -> int:
    """Total size of the files read."""
    return sum(p.stat().st_size for p in paths)


def read_folder(reader: Callable, inputs: Callable, name: str) -> Callable:
    """A DATA_SETS entry for a reader and its input lister of one folder."""
    return lambda data: (reader(data / name), file_bytes(inputs(data / name)))


def read_dicom_folder(data: Path) -> Read:
    """The DICOM folder: its volumes and the bytes of the files it read."""
    volumes, files = read_dicom(data / "ibsi-sts-dicom", ROI)
    return volumes, file_bytes(files)


def read_both(data: Path) -> Read:
    """NIfTI and DICOM folders through data.sources, as the download stage reads and stores them
    (the store is read back so that the figures count the same arrays)."""
    entries = [{"source": "nifti", "path": str(data / BOTH[0])}]
    entries.append({"source": "dicom", "path": str(data / BOTH[1])})
    params = load_params(ROOT / "params.yaml")["data"]
    data = data_from(
        params | {"source": "synthetic", "roi": ROI, "spacing": None, "sources": entries}
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = sources.fetch(data, 0, Path(tmp) / "raw")
        volumes = load_volumes(Path(tmp) / "raw", raw_patient_ids(Path(tmp) / "raw"))
    return volumes, sum(f["bytes"] for f in manifest["files"])


DATA_SETS: dict[str, Callable[[Path], Read]] = {
    "ibsi-sts": read_folder(read_nifti, nifti_inputs, "ibsi-sts"),
    "sts-slices": read_folder(read_slices, slice_inputs, "sts-slices"),
    "ibsi-sts-dicom": read_dicom_folder,
    "nifti+dicom": read_both,
}
FOLDERS = {"nifti+dicom": BOTH}  # the others read the folder of their own name
TARGET_S = 30.0  # what a user may wait for a data set to load on a 2-core machine


def parse_args() -> argparse.Namespace:
    """--data (the shared data folder) and --repeat (runs per data set)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs per data set (best is kept)")
    parser.add_argument("--only", nargs="*", choices=sorted(DATA_SETS), help="data sets to run")
    return parser.parse_args()


def timed(read: Callable[[Path], Read], data: Path) -> tuple[float, Read]:
    """Seconds to read a data set, and what it read."""
    start, cpu = time.perf_counter(), time.process_time()
    result = read(data)
    CPU_SECONDS.append(time.process_time() - cpu)  # on a shared machine wall time varies 5-10x
    return time.perf_counter() - start, result


def array_bytes(volumes: list[Volume]) -> int:
    """Bytes held by the CT, mask and PET arrays."""
    arrays = [a for v in volumes for a in (v.ct, v.mask, v.pet) if a is not None]
    return sum(a.nbytes for a in arrays)


def bench(name: str, data: Path, repeat: int) -> float:
    """Read one data set repeat times, print its figures, return the best seconds."""
    read = DATA_SETS[name]
    seconds = []
    for _ in range(repeat):
        volumes = None  # free the previous run's arrays before timing the next
        gc.collect()
        elapsed, (volumes, read_bytes) = timed(read, data)
        seconds.append(elapsed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"{name:14s} patients {len(volumes):3d}  slices {sum(len(v.ct) for v in volumes):5d}  "
        f"voxels {sum(v.ct.size for v in volumes) / 1e6:6.1f} M  "
        f"files {read_bytes / 1e6:6.1f} MB  arrays {array_bytes(volumes) / 1e6:6.1f} MB  "
        f"first {seconds[0]:5.2f} s  best of {repeat} {min(seconds):5.2f} s  "
        f"CPU {min(CPU_SECONDS):5.2f} s  "
        f"peak RSS {peak_mb:6.0f} MB",
        flush=True,
    )
    return min(seconds)


def bench_in_child(name: str, data: Path, repeat: int) -> float:
    """bench in a fresh process, so that its peak memory is this data set's alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(bench, (name, data, repeat))


def main() -> None:
    """Benchmark every data set found under --data (or those named by --only)."""
    args = parse_args()
    data = args.data.resolve()
    names = args.only or list(DATA_SETS)
    missing = sorted({f for n in names for f in FOLDERS.get(n, (n,)) if not (data / f).is_dir()})
    if missing:
        raise SystemExit(
            f"shared data not found: {', '.join(str(data / n) for n in missing)} absent; "
            "pass --data PATH to the folder holding them"
        )
    slow = [name for name in names if bench_in_child(name, data, args.repeat) > TARGET_S]
    if slow:
        print(f"slower than the {TARGET_S:.0f} s target: {', '.join(slow)}")


if __name__ == "__main__":
    main()
