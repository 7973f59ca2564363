"""`predict --help` and input errors answer without importing TensorFlow (the slow part of
start-up): each runs in a fresh interpreter that reports the modules it loaded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from sarcoma_seg.predict import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, file=sys.stderr)
print("tensorflow" in sys.modules, "segmentation_models" in sys.modules)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["missing.nii.gz", "--model", "data/model"],
        ["{ct}", "--model", "no/such/model/folder"],
    ],
    ids=["help", "missing input", "missing model"],
)
def test_predict_answers_without_importing_tensorflow(tmp_path: Path, args: list[str]) -> None:
    import nibabel as nib
    import numpy as np

    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), ct)
    argv = [a.format(ct=ct) for a in args]
    env = os.environ | {"PYTHONPATH": str(ROOT)}  # this checkout's code, not the installed one
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert done.stdout.strip().splitlines()[-1] == "False False", done.stderr[-2000:]
    if args != ["--help"]:
        assert "error: " in done.stderr and "exit 1" in done.stderr
