"""The cross-machine metric check: known answers, and the command against a real git repository."""

import json
import subprocess
import sys
from pathlib import Path

from sarcoma_seg.reproducibility import compare, flatten, tolerance
from tests.conftest import run

COMMITTED = {
    "test": {
        "patients": 2,
        "dice_3d_mean": 0.668517,
        "dice_3d_std": 0.069226,
        "hd95_mm_mean": 68.578257,
        "precision_mean": 0.556629,
    }
}


def test_tolerance_by_family() -> None:
    assert tolerance("evaluate.json:test.dice_3d_mean") == 0.05
    assert tolerance("evaluate.json:test.patients") == 0.0
    assert tolerance("evaluate.json:test.dice_3d_std") is None
    assert tolerance("train.json:val_dice") == 0.05


def test_the_measured_cross_machine_difference_passes_and_a_larger_one_fails() -> None:
    committed = flatten(COMMITTED)
    other_machine = committed | {"test.dice_3d_mean": 0.685654, "test.hd95_mm_mean": 68.929532}
    assert compare(committed, other_machine) == []
    drifted = other_machine | {"test.dice_3d_mean": 0.60, "test.patients": 3.0}
    assert compare(committed, drifted) == [
        "test.dice_3d_mean: committed 0.668517, rerun 0.6, difference 0.06852 > tolerance 0.05",
        "test.patients: committed 2, rerun 3, difference 1 > tolerance 0",
    ]
    assert compare(committed, {}) == [
        f"{key}: committed {value:g}, missing from the rerun"
        for key, value in sorted(committed.items())
        if key != "test.dice_3d_std"
    ]


def test_command_reads_the_commit_and_the_workspace(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "evaluate.json").write_text(json.dumps(COMMITTED))
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "metrics"], tmp_path)
    cmd = [sys.executable, "-m", "sarcoma_seg.reproducibility"]
    env = {"PYTHONPATH": str(root)}
    assert "within" in run(cmd, tmp_path, env)
    drifted = json.loads(json.dumps(COMMITTED))
    drifted["test"]["dice_3d_mean"] = 0.5
    (metrics / "evaluate.json").write_text(json.dumps(drifted))
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("error: evaluate.json:test.dice_3d_mean: committed 0.668517")
