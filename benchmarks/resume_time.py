"""Time saved by resuming: a full training, then the same training killed with SIGKILL after
epoch K and rerun (it resumes from its checkpoint); prints both times and whether the resumed
model equals the uninterrupted one, weight for weight.

    python benchmarks/resume_time.py --set data.source=nifti --set data.path=../shared/data/ibsi-sts
    python benchmarks/resume_time.py --kill-after 1 --set base.image_size=32 --set train.epochs=3 \\
        --set data.synthetic.n_patients=4 --set 'data.synthetic.shape=[12, 48, 48]'   # tiny

Runs in a scratch copy of the project (MLflow store included); the workspace is left untouched."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_validation import override  # noqa: E402
from sarcoma_seg.checkpoint import checkpointed_epochs  # noqa: E402


def stage(name: str, work: Path) -> subprocess.Popen:
    """Start one stage as DVC would, logging to the scratch copy's own MLflow store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    return subprocess.Popen(
        [sys.executable, "-m", f"stages.{name}"], cwd=work, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, name: str) -> None:
    """Wait for a stage; stop the benchmark if it failed."""
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"stage {name} failed:\n{err[-2000:]}")


def timed_train(work: Path) -> float:
    """Run the train stage to its end; return its seconds."""
    start = time.perf_counter()
    finish(stage("train", work), "train")
    return time.perf_counter() - start


def killed_train(work: Path, after: int) -> float:
    """Run the train stage and SIGKILL it once epoch `after` is checkpointed; return seconds."""
    start = time.perf_counter()
    proc = stage("train", work)
    while checkpointed_epochs(work) < after:
        if proc.poll() is not None:
            sys.exit(f"training ended before epoch {after}:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.perf_counter() - start


def weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of a saved Keras HDF5 model."""
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: found.update({n: o[()]}) if isinstance(o, h5py.Dataset) else None)
    return found


def main() -> None:
    """Prepare the data once, train uninterrupted, then kill, rerun and compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-after", type=int, default=6, help="epochs done before the kill")
    parser.add_argument("--set", action="append", default=[], help="key=value params")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sarcoma-resume-"))
    for name in ("stages", "sarcoma_seg", "params.yaml", "dvc.yaml"):
        (shutil.copytree if name in ("stages", "sarcoma_seg") else shutil.copy2)(
            ROOT / name, work / name
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for assignment in args.set:
        override(params, assignment)
    if params["data"].get("path"):
        params["data"]["path"] = str((ROOT / params["data"]["path"]).resolve())
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("download", "split", "preprocess"):
        finish(stage(name, work), name)
    epochs = params["train"]["epochs"]
    full = timed_train(work)
    reference = weights(work / params["paths"]["model"] / "model.h5")
    until_kill = killed_train(work, args.kill_after)
    rerun = timed_train(work)
    resumed = weights(work / params["paths"]["model"] / "model.h5")
    same = reference.keys() == resumed.keys() and all(
        np.array_equal(reference[k], resumed[k]) for k in reference
    )
    print(f"epochs {epochs}, killed after epoch {args.kill_after}")
    print(f"full training      {full / 60:7.2f} min")
    print(f"killed run         {until_kill / 60:7.2f} min (lost without resuming)")
    print(f"resumed rerun      {rerun / 60:7.2f} min")
    print(f"saved by resuming  {(full - rerun) / 60:7.2f} min")
    print(f"resumed model equals the uninterrupted one: {same}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
