"""The leakage gap in numbers: the original study's slice-level split of the exported PNG set
against a patient-level split, trained and scored at the same settings.

    python benchmarks/leakage.py --path ../shared/data/sts-slices --set train.epochs=8

Arm "slice split": the study's folders (ct_images_dir = train, *_valid_dir = validation,
*_test_dir = test), so every test patient also has slices in train, often the adjacent ones.
Arm "patient split": `split.val` / `split.test` whole patients held out with `base.seed`.
Both arms use params.yaml's preprocess / train / inference sections (plus --set overrides) and
report the study's metric (mean slice IoU and F-score over the test slices), the Dice pooled
over the test slices and, where whole patients are held out, the per-patient 3D Dice.

The study's validation folder holds no tumour at all (0 of 100 slices), so a Dice on it is 1 for
an empty prediction and 0 otherwise, and a val_loss on it rewards predicting nothing: both arms
therefore keep their last epoch's weights (train.monitor: last) unless --set says otherwise.
The arms' test sets differ in tumour prevalence (the study's test folder is nearly all tumour),
so the gap is printed on the slices that hold tumour, and on the pooled Dice."""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sarcoma_seg  # noqa: E402,F401  (environment for TensorFlow and segmentation-models)
from benchmarks.cross_validation import override  # noqa: E402
from sarcoma_seg.config import check_params  # noqa: E402
from sarcoma_seg.dataset import SliceSet, slice_set, with_pet_if_present  # noqa: E402
from sarcoma_seg.inference import segment_volume  # noqa: E402
from sarcoma_seg.io.png import read_slices, slice_files  # noqa: E402
from sarcoma_seg.metrics import dice, slice_scores, volume_scores  # noqa: E402
from sarcoma_seg.model import check_train_params  # noqa: E402
from sarcoma_seg.settings import Settings, settings_from  # noqa: E402
from sarcoma_seg.split import split_patients  # noqa: E402
from sarcoma_seg.transforms import preprocessing_from  # noqa: E402
from sarcoma_seg.volumes import Volume  # noqa: E402


def folder_split(folder: Path) -> dict[tuple[str, int], str]:
    """(patient, slice index) -> train / val / test, from the study's folder names."""

    def which(name: str) -> str:
        return "test" if "_test" in name else "val" if "_valid" in name else "train"

    return {(s.patient_id, s.index): which(s.image.parent.name) for s in slice_files(folder)}


def subset(data: SliceSet, keep: np.ndarray) -> SliceSet:
    """The rows of a slice set where keep is true."""
    return SliceSet(
        data.images[keep], data.masks[keep], data.patients[keep], data.slices[keep], data.spacing
    )


def run_arm(
    name: str, volumes: list[Volume], rows_of: Callable, settings: Settings, out: Path
) -> dict[str, Any]:
    """Train on the train rows, pick by the val rows, score the test rows on the native grid."""
    import mlflow

    from sarcoma_seg.training import train

    pre = preprocessing_from(settings.base.image_size, settings.preprocess, volumes[0].units)
    pre = with_pet_if_present(pre, volumes)  # the exported slices carry no PET
    inference = settings.inference
    everything = slice_set(volumes, pre)
    sets = {
        s: subset(everything, np.array(rows_of(everything.patients, everything.slices, s)))
        for s in ("train", "val")
    }
    start = time.perf_counter()
    with mlflow.start_run(run_name=name):
        model, history = train(
            sets["train"],
            sets["val"],
            settings.train,
            settings.base.seed,
            inference.threshold,
            pre,
            out,
        )
    minutes = (time.perf_counter() - start) / 60
    preds, truths, per_patient = [], [], {}
    for v in volumes:
        test = np.array(rows_of([v.patient_id] * len(v.ct), range(len(v.ct)), "test"))
        if not test.any():
            continue
        pred = segment_volume(model, pre, v.ct, inference, v.pet)
        preds.append(pred[test])
        truths.append(v.mask[test] > 0)
        if test.all():
            per_patient[v.patient_id] = volume_scores(pred, v.mask, v.spacing)["dice_3d"]
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    tumour = truth.any(axis=(1, 2))
    return {
        "test_slices": len(pred),
        "tumour_slices": int(tumour.sum()),
        **slice_scores(pred, truth),
        "tumour_slice_f": float(dice(pred[tumour], truth[tumour], (1, 2)).mean())
        if tumour.any()
        else float("nan"),
        "pooled_dice": float(dice(pred, truth)),
        "dice_3d": per_patient,
        "train_minutes": minutes,
        "epochs": len(history["loss"]),
    }


def main() -> None:
    """Run both arms and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=str(ROOT.parent / "shared/data/sts-slices"))
    parser.add_argument("--set", action="append", default=[], help="extra key=value params")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["monitor"] = "last"  # no selection on the study's tumour-free validation
    for assignment in args.set:
        override(params, assignment)
    check_params(params, "params.yaml with --set")
    settings = settings_from(params)
    check_train_params(settings.train)  # the stage checks these; this script calls train()
    work = Path(tempfile.mkdtemp(prefix="sarcoma-leakage-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    volumes: list[Volume] = read_slices(Path(args.path))
    by_folder = folder_split(Path(args.path))
    order = {pid: sorted(i for p, i in by_folder if p == pid) for pid in {p for p, _ in by_folder}}
    counts = settings.split
    patients = split_patients(
        [v.patient_id for v in volumes],
        {"train": counts.train, "val": counts.val, "test": counts.test},
        settings.base.seed,
    )
    arms = {
        "slice split": lambda ids, rows, s: [
            by_folder[(p, order[p][i])] == s for p, i in zip(ids, rows)
        ],
        "patient split": lambda ids, rows, s: [p in patients[s] for p in ids],
    }
    results = {name: run_arm(name, volumes, rows, settings, work) for name, rows in arms.items()}
    print(f"patient split: {patients}")
    keys = ["test_slices", "tumour_slices", "slice_iou", "slice_fscore", "tumour_slice_f"]
    keys.append("pooled_dice")
    print(f"{'arm':14}" + "".join(f"{k:>15}" for k in keys) + f"{'train min':>11}")
    for name, r in results.items():
        cells = "".join(f"{r[k]:15.3f}" if isinstance(r[k], float) else f"{r[k]:15d}" for k in keys)
        print(f"{name:14}{cells}{r['train_minutes']:11.1f}")
    for name, r in results.items():
        for pid, value in r["dice_3d"].items():
            print(f"{name}: held-out patient {pid} 3D Dice {value:.3f}")
    for key in ("tumour_slice_f", "pooled_dice"):
        gap = results["slice split"][key] - results["patient split"][key]
        print(f"leakage gap in {key} (slice split - patient split): {gap:+.3f}")


if __name__ == "__main__":
    main()
