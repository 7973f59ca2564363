"""What makes trained weights differ between x86 CPUs: train the real U-Net a few steps on fixed
phantom batches under each CPU setting (oneDNN on or off, the instruction set oneDNN may use,
the thread count), each in a fresh process, and compare the weights with the first setting's.

usage: python benchmarks/cpu_determinism.py [--steps 6] [--size 64] [--repeats 2]
       python benchmarks/cpu_determinism.py --pipeline [--settings 0,1,2,3]
Prints one row per setting: bit-identical or not, the largest weight difference, the largest
difference of the predicted probabilities, and the time per training step. With --pipeline it
runs the default `dvc repro` (phantoms) in a copy of the project under each setting instead and
prints the test metrics and their largest difference from the default setting's."""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (name, environment) pairs; ONEDNN_MAX_CPU_ISA caps the instructions oneDNN's kernels use, which
# is how an older x86 CPU (AVX2 only, or SSE4.1 only) computes on this one
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("oneDNN on, all ISA (default)", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    ("oneDNN on, AVX2 only", {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("oneDNN on, SSE4.1 only", {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ("oneDNN on, 1 thread", {"TF_ENABLE_ONEDNN_OPTS": "1", "SARCOMA_THREADS": "1"}),
    ("oneDNN on, 1 core (taskset)", {"TF_ENABLE_ONEDNN_OPTS": "1", "SARCOMA_CORES": "0"}),
    ("oneDNN off", {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    ("oneDNN off, 1 thread", {"TF_ENABLE_ONEDNN_OPTS": "0", "SARCOMA_THREADS": "1"}),
    ("oneDNN off, AVX2 only", {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
]

WORKER = r"""
import json, os, sys, time
import numpy as np
import sarcoma_seg  # noqa: F401  (sets the tf-keras environment first)
import tensorflow as tf
threads = int(os.environ.get("SARCOMA_THREADS", "0"))
if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
from dataclasses import replace
from pathlib import Path
from sarcoma_seg.model import build_unet, compile_unet, seed_everything
from sarcoma_seg.phantom import make_patient
from sarcoma_seg.settings import load_settings
steps, size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seed_everything(42)
rng = np.random.default_rng(0)
ct, pet, mask = make_patient(rng, (16, size, size))[:3]
x = np.stack([np.clip((ct + 160) / 400, 0, 1)] * 3 + [np.clip(pet / 6, 0, 1)], -1).astype("float32")
y = (mask > 0).astype("float32")[..., None]
model = build_unet("resnet18", None, 4)
train = replace(load_settings(Path(sarcoma_seg.__file__).parents[1] / "params.yaml").train,
                loss="dice_focal", focal_weight=1.0, learning_rate=1e-3, lr_schedule="constant",
                ema_momentum=0.99)
compile_unet(model, train, steps)
model.train_on_batch(x[:8], y[:8])  # build and trace outside the timing
start = time.perf_counter()
for step in range(steps):
    i = (step * 8) % 16
    model.train_on_batch(x[i:i + 8], y[i:i + 8])
seconds = (time.perf_counter() - start) / steps
probs = model.predict(x, verbose=0)
np.savez(out, probs=probs, *[w for w in model.get_weights()])
print(json.dumps({"seconds_per_step": seconds}))
"""


def copy_project(dest: Path) -> Path:
    """The project's tracked files (no results) in a new git + DVC repository at dest."""
    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        if not name.startswith(("metrics/", "plots/", "dvc.lock")) and (root / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((root / name).read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def command(cmd: list[str], env: dict[str, str]) -> list[str]:
    """cmd, pinned to the cores SARCOMA_CORES names (a machine with fewer cores) if set."""
    cores = env.get("SARCOMA_CORES")
    return ["taskset", "-c", cores, *cmd] if cores else cmd


def pipeline_metrics(env: dict[str, str], dest: Path) -> tuple[dict[str, float], float]:
    """Run the default dvc repro in a fresh copy under env; its test metrics and wall time."""
    repo = copy_project(dest)
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
    start = time.perf_counter()
    done = subprocess.run(
        command(["dvc", "repro"], env), cwd=repo, env=full, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed under {env}:\n{done.stderr[-2000:]}")
    test = json.loads((repo / "metrics" / "evaluate.json").read_text())["test"]
    train = json.loads((repo / "metrics" / "train.json").read_text())
    flat = {f"test.{k}": v for k, v in test.items() if isinstance(v, float)}
    flat |= {f"train.{k}": v for k, v in train.items() if isinstance(v, float)}
    return flat, time.perf_counter() - start


def compare_pipelines(indices: list[int]) -> None:
    """One row per setting: the default pipeline's metrics against the first setting's."""
    print("| setting | test dice_3d_mean | max metric diff | identical | wall time |")
    print("|---|---|---|---|---|")
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in indices:
            name, env = SETTINGS[i]
            if "SARCOMA_THREADS" in env:
                raise SystemExit(f"{name}: a thread count applies to the worker only; use taskset")
            metrics, seconds = pipeline_metrics(env, Path(tmp) / f"repo{i}")
            reference = reference or metrics
            diff = max(abs(metrics[k] - reference[k]) for k in reference)
            print(
                f"| {name} | {metrics.get('test.dice_3d_mean', float('nan')):.6f} | {diff:.2e} | "
                f"{'yes' if metrics == reference else 'no'} | {seconds:.0f} s |",
                flush=True,
            )


def run_setting(env: dict[str, str], steps: int, size: int, out: Path) -> float:
    """Train in a fresh process under env; the weights and probabilities go to out."""
    full = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA",)} | env
    done = subprocess.run(
        command([sys.executable, "-c", WORKER, str(steps), str(size), str(out)], env),
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"worker failed under {env}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"]


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the weights, in order."""
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if k != "probs"):
        h.update(arrays[key].tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    """Run every setting (repeats times) and print how each compares with the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pipeline", action="store_true", help="compare whole dvc repro runs")
    parser.add_argument("--settings", default=None, help="indices of SETTINGS, e.g. 0,1,2")
    args = parser.parse_args()
    indices = [int(i) for i in args.settings.split(",")] if args.settings else None
    if args.pipeline:
        compare_pipelines(indices or [0, 1, 2, 4, 5])  # no thread-count rows
        return
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        print(
            "| setting | run | weights sha256 | identical to default | max weight diff | "
            "max prob diff | s/step |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, env in [SETTINGS[i] for i in indices or range(len(SETTINGS))]:
            for repeat in range(args.repeats):
                out = Path(tmp) / f"w{len(name)}_{repeat}.npz"
                seconds = run_setting(env, args.steps, args.size, out)
                arrays = dict(np.load(out))
                if reference is None:
                    reference = arrays
                weights = [k for k in arrays if k != "probs"]
                wdiff = max(float(np.max(np.abs(arrays[k] - reference[k]))) for k in weights)
                pdiff = float(np.max(np.abs(arrays["probs"] - reference["probs"])))
                same = digest(arrays) == digest(reference)
                print(
                    f"| {name} | {repeat + 1} | {digest(arrays)} | {'yes' if same else 'no'} | "
                    f"{wdiff:.2e} | {pdiff:.2e} | {seconds:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
