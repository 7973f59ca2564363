"""Time reading the real data sets into Volumes: 20 IBSI NIfTI patients and 1246 PNG slices.

    python benchmarks/load_volumes.py [--data ../shared/data] [--repeat 3]

Prints, per data set, patients, slices, voxels, bytes (files read and arrays held) and seconds
of the first run and the best run. The first run is the first in this process; the operating
system may still have the files cached from earlier, so it is "cold" only for Python.
"""

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

from sarcoma_seg.io.nifti import nifti_inputs, read_nifti
from sarcoma_seg.io.png import read_slices, slice_inputs
from sarcoma_seg.volumes import Volume

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_SETS: dict[str, tuple[Callable[[Path], list[Volume]], Callable[[Path], list[Path]]]] = {
    "ibsi-sts": (read_nifti, nifti_inputs),
    "sts-slices": (read_slices, slice_inputs),
}
TARGET_S = 30.0  # what a user may wait for a data set to load on a 2-core machine


def parse_args() -> argparse.Namespace:
    """--data (the shared data folder) and --repeat (runs per data set)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs per data set (best is kept)")
    return parser.parse_args()


def timed(read: Callable[[Path], list[Volume]], folder: Path) -> tuple[float, list[Volume]]:
    """Seconds to read a folder, and the volumes."""
    start = time.perf_counter()
    volumes = read(folder)
    return time.perf_counter() - start, volumes


def array_bytes(volumes: list[Volume]) -> int:
    """Bytes held by the CT, mask and PET arrays."""
    arrays = [a for v in volumes for a in (v.ct, v.mask, v.pet) if a is not None]
    return sum(a.nbytes for a in arrays)


def bench(name: str, folder: Path, repeat: int) -> float:
    """Read one data set repeat times, print its figures, return the best seconds."""
    read, inputs = DATA_SETS[name]
    seconds = []
    for _ in range(repeat):
        volumes = None  # free the previous run's arrays before timing the next
        gc.collect()
        elapsed, volumes = timed(read, folder)
        seconds.append(elapsed)
    file_bytes = sum(p.stat().st_size for p in inputs(folder))
    print(
        f"{name:11s} patients {len(volumes):3d}  slices {sum(len(v.ct) for v in volumes):5d}  "
        f"voxels {sum(v.ct.size for v in volumes) / 1e6:6.1f} M  "
        f"files {file_bytes / 1e6:6.1f} MB  arrays {array_bytes(volumes) / 1e6:6.1f} MB  "
        f"first {seconds[0]:5.2f} s  best of {repeat} {min(seconds):5.2f} s"
    )
    return min(seconds)


def main() -> None:
    """Benchmark every data set found under --data."""
    args = parse_args()
    data = args.data.resolve()
    missing = [name for name in DATA_SETS if not (data / name).is_dir()]
    if missing:
        raise SystemExit(
            f"shared data not found: {', '.join(str(data / n) for n in missing)} absent; "
            "pass --data PATH to the folder holding ibsi-sts/ and sts-slices/"
        )
    slow = [name for name in DATA_SETS if bench(name, data / name, args.repeat) > TARGET_S]
    if slow:
        print(f"slower than the {TARGET_S:.0f} s target: {', '.join(slow)}")


if __name__ == "__main__":
    main()
