"""Summary across the folds of a patient-level cross-validation run as DVC experiments:

    dvc exp run --queue -S split.folds=5 -S split.fold=0,1,2,3,4
    dvc queue start
    python -m sarcoma_seg.folds          # once the queue is done

Experiments that differ only in `split.fold` form one group; each group's held-out 3D Dice is
averaged over its patients (each fold's mean weighted by its test patients)."""

import json
import subprocess
import sys
from typing import Any

from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.params import flatten

EVALUATE = "metrics/evaluate.json"


def fold_runs(exp_show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment in `dvc exp show --json` output run with split.folds set: its name,
    params (flattened) and test summary."""
    found = []
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
                metrics = (data.get("metrics") or {}).get(EVALUATE, {}).get("data", {})
                if params.get("split.folds") and "test" in metrics:
                    found.append({"name": rev.get("name"), "params": params, **metrics})
    return found


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of folds: which folds ran, test patients, patient-weighted Dice."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for found in runs:
        key = {k: v for k, v in found["params"].items() if k != "split.fold"}
        groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(found)
    rows = []
    for members in groups.values():
        patients = sum(m["test"]["patients"] for m in members)
        dice = sum(m["test"]["dice_3d_mean"] * m["test"]["patients"] for m in members) / patients
        folds = sorted(m["params"]["split.fold"] for m in members)
        rows.append(
            {
                "experiments": ",".join(sorted(str(m["name"]) for m in members)),
                "folds": folds,
                "of": members[0]["params"]["split.folds"],
                "patients": patients,
                "dice_3d_mean": round(dice, 4),
                "fold_dice": [round(m["test"]["dice_3d_mean"], 4) for m in members],
            }
        )
    return rows


def main() -> None:
    """Read `dvc exp show --json` and print the cross-fold summary."""
    done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SarcomaSegError(f"dvc exp show failed: {done.stderr.strip().splitlines()[-1]}")
    rows = summarize(fold_runs(json.loads(done.stdout)))
    if not rows:
        raise SarcomaSegError("no finished experiment with split.folds set; queue the folds first")
    for row in rows:
        complete = "" if len(row["folds"]) == row["of"] else "  (incomplete)"
        print(
            f"folds {row['folds']} of {row['of']}: {row['patients']} held-out patients, "
            f"3D Dice {row['dice_3d_mean']:.4f} (per fold {row['fold_dice']}){complete}",
            file=sys.stdout,
        )


if __name__ == "__main__":
    run_cli(main)
