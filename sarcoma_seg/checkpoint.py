"""Per-epoch training checkpoints that survive a killed stage, so that a rerun resumes where the
last completed epoch left off and ends with the same weights, bit for bit."""

import fcntl
import hashlib
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sarcoma_seg.digest import file_sha256
from sarcoma_seg.errors import SarcomaSegError, one_line
from sarcoma_seg.settings import Settings

# at the repo root, git- and dvc-ignored and outside every DVC out: DVC neither deletes nor caches
# it before rerunning train
FOLDER = ".checkpoints"
STATE = "state.npz"
RUN = "run.json"
LOCK = "lock"
STATE_KEYS = {"epoch", "member", "stopped", "history"}  # what a saved epoch's meta holds
# the params sections dvc.yaml gives the train stage, minus none: any change is another training
TRAIN_SECTIONS = ("base", "preprocess", "train", "inference")
NOT_TRAINING = ("checkpoint_budget_mb",)  # train keys that do not change what is trained
CODE = Path(__file__).resolve().parents[1]  # the checkout whose code trains
# restorable counters of the Keras callbacks train may add (EarlyStopping, ReduceLROnPlateau,
# ModelCheckpoint); their on_train_begin resets them, so they are restored after it
CALLBACK_STATE = ("wait", "best", "cooldown_counter", "stopped_epoch")


def checkpoint_key(settings: Settings, preprocessed: Path) -> str:
    """Digest of what decides a training: its params sections, the preprocessed files and the
    code; a change in any of them never resumes a stale checkpoint."""
    digest = hashlib.sha256()
    params = settings.as_params()
    sections = {k: params[k] for k in TRAIN_SECTIONS}
    sections["train"] = {k: v for k, v in sections["train"].items() if k not in NOT_TRAINING}
    digest.update(json.dumps(sections, sort_keys=True, default=str).encode())
    for path in sorted(Path(preprocessed).iterdir()):
        if path.is_file():
            digest.update(f"{path.name}:{file_sha256(path)}".encode())
    for path in code_files(CODE):
        digest.update(f"{path.relative_to(CODE).as_posix()}:{file_sha256(path)}".encode())
    return digest.hexdigest()[:20]


def code_files(root: Path) -> list[Path]:
    """Every module of the package, subpackages (io/) included, and the train stage, sorted."""
    return sorted([*(root / "sarcoma_seg").rglob("*.py"), root / "stages" / "train.py"])


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename it over path, so a kill
    leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Checkpoint:
    """One training's checkpoint folder, locked by this process while it trains; a reader (a
    non-chief worker of a cluster) restores from the chief's folder but never writes it."""

    folder: Path
    lock: IO[str] | None
    writer: bool = True

    def load(self) -> dict[str, Any] | None:
        """The last completed epoch's state, or None if training has not completed one; a
        state file that cannot be read (truncated, damaged, not ours) is discarded with a
        warning, so that the next training starts afresh instead of failing forever."""
        path = self.folder / STATE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:  # arrays only: no code in it
                state = json.loads(str(npz["meta"]))
                if not isinstance(state, dict) or not set(state) >= STATE_KEYS:
                    raise ValueError(f"meta lacks {sorted(STATE_KEYS)}")
                state["weights"] = _arrays(npz, "w")
                state["optimizer"] = _arrays(npz, "o")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            self.discard(f"unreadable ({one_line(exc)})")
            return None
        return state

    def discard(self, why: str) -> None:
        """Drop a state that cannot be resumed, saying so (a reader only says so)."""
        print(f"warning: {self.folder / STATE}: {why}; training starts afresh", file=sys.stderr)
        if self.writer:
            (self.folder / STATE).unlink(missing_ok=True)

    def save(self, meta: dict[str, Any], weights: list, optimizer: list) -> None:
        """Write one epoch's state atomically (a reader writes nothing)."""
        if not self.writer:
            return
        arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
        arrays |= {f"o{i}": np.asarray(v) for i, v in enumerate(optimizer)}
        arrays["meta"] = np.array(json.dumps(meta))
        _write_atomic(self.folder / STATE, lambda f: np.savez(f, **arrays))

    def save_member(self, index: int, weights: list, history: dict[str, list[float]]) -> None:
        """Keep a finished ensemble member's weights and history (a reader writes nothing)."""
        if not self.writer:
            return
        arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
        arrays["meta"] = np.array(json.dumps({"history": history}))
        _write_atomic(self.folder / f"member-{index}.npz", lambda f: np.savez(f, **arrays))

    def load_member(self, index: int) -> tuple[list[np.ndarray], dict[str, list[float]]] | None:
        """A finished member's weights and history, or None."""
        path = self.folder / f"member-{index}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as npz:
            return _arrays(npz, "w"), json.loads(str(npz["meta"]))["history"]

    def run_id(self) -> str | None:
        """The MLflow run this training logs into, if one was started."""
        path = self.folder / RUN
        return json.loads(path.read_text())["run_id"] if path.is_file() else None

    def save_run_id(self, run_id: str) -> None:
        """Keep the MLflow run id beside the checkpoint, so a resumed training continues it (a
        reader writes nothing)."""
        if not self.writer:
            return
        text = json.dumps({"run_id": run_id}).encode()
        _write_atomic(self.folder / RUN, lambda f: f.write(text))

    def remove(self) -> None:
        """Delete the checkpoint once its training is complete and logged (its writer only)."""
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()


def _arrays(npz: Any, prefix: str) -> list[np.ndarray]:
    """The arrays <prefix>0, <prefix>1, ... of an npz, in order."""
    count = sum(1 for k in npz.files if k.startswith(prefix) and k[len(prefix) :].isdigit())
    return [npz[f"{prefix}{i}"] for i in range(count)]


def open_checkpoint(root: Path, key: str, writer: bool = True) -> Checkpoint:
    """The checkpoint folder of this training under <root>/.checkpoints, locked so that two
    trainings never share it (the lock dies with the process, even on kill -9); writer False:
    read only and unlocked (the chief of a cluster holds the lock and writes, distribute.py)."""
    folder = Path(root) / FOLDER / f"train-{key}"
    if not writer:
        return Checkpoint(folder, None, writer=False)
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / LOCK).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SarcomaSegError(
            f"{folder}: another training with the same params and data is running; "
            "wait for it or stop it"
        ) from None
    return Checkpoint(folder, lock)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in a folder (not following links)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def last_saved(folder: Path) -> float:
    """When a checkpoint folder last saved an epoch (its newest .npz), 0 if it saved none."""
    return max((p.stat().st_mtime for p in folder.glob("*.npz")), default=0.0)


def prune(root: Path, keep: Path, budget_bytes: float) -> list[tuple[Path, int]]:
    """Remove the checkpoints of trainings that are not running (their lock is free) and not
    `keep`, oldest first, until the rest fit in budget_bytes; return what was removed (the
    caller logs it). A running training's folder, locked, is never touched."""
    folders = [f for f in (Path(root) / FOLDER).glob("train-*") if f.is_dir() and f != keep]
    folders.sort(key=last_saved, reverse=True)  # the most recently saved first: kept longest
    removed, total = [], 0
    for folder in folders:
        size = folder_bytes(folder)
        if total + size <= budget_bytes:
            total += size
            continue
        with (folder / LOCK).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                total += size  # another training is running on it: it stays, and it counts
                continue
            shutil.rmtree(folder, ignore_errors=True)
        removed.append((folder, size))
    return removed


def checkpointed_epochs(root: Path) -> int:
    """Epochs the training checkpointing under <root>/.checkpoints has completed, for a process
    watching it (0 before the first, and while the state file is being replaced)."""
    for state in (Path(root) / FOLDER).glob(f"train-*/{STATE}"):
        try:
            with np.load(state, allow_pickle=False) as npz:
                return json.loads(str(npz["meta"]))["epoch"]
        except (OSError, ValueError, KeyError):
            return 0  # being replaced right now
    return 0


def callback_state(callbacks: list[Any]) -> list[dict[str, Any]]:
    """The counters of each callback that has them (EarlyStopping, ReduceLROnPlateau, ...)."""
    return [
        {k: float(getattr(cb, k)) for k in CALLBACK_STATE if hasattr(cb, k)} for cb in callbacks
    ]


def restore_callbacks(callbacks: list[Any], states: list[dict[str, Any]]) -> None:
    """Set the counters saved by callback_state back."""
    for cb, saved in zip(callbacks, states, strict=True):
        for k, v in saved.items():
            setattr(cb, k, int(v) if k != "best" else v)


def epoch_checkpoint(
    ckpt: Checkpoint,
    others: list[Any],
    member: int,
    resume: dict[str, Any] | None,
) -> Any:
    """A Keras callback that saves the training state (weights, optimizer variables with the EMA
    and schedule position, callback counters) at every epoch's end and, given a saved state,
    puts it back as training begins (after Keras has reset the other callbacks, so nothing of
    theirs overwrites it). The input needs no state: every batch is a function of (seed, epoch,
    position), and a resumed training's input starts at its next epoch."""
    import tensorflow as tf

    class EpochCheckpoint(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, list[float]] = dict((resume or {}).get("history", {}))

        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            if resume is None:
                return
            optimizer = self.model.optimizer
            optimizer.build(self.model.trainable_variables)  # its slots exist before the 1st step
            for variable, value in zip(optimizer.variables, resume["optimizer"], strict=True):
                variable.assign(value)
            self.model.set_weights(resume["weights"])
            restore_callbacks(others, resume["callbacks"])

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = dict(logs or {})
            # the rate the epoch ran at, as the logger logs it, so a resumed run can backfill it
            logs.setdefault("lr", tf.keras.backend.get_value(self.model.optimizer.learning_rate))
            for k, v in logs.items():
                self.history.setdefault(k, []).append(float(v))
            meta = {
                "member": member,
                "epoch": epoch + 1,  # epochs completed
                "history": self.history,
                "callbacks": callback_state(others),
                "stopped": bool(self.model.stop_training),
            }
            variables = [v.numpy() for v in self.model.optimizer.variables]
            ckpt.save(meta, self.model.get_weights(), variables)

    return EpochCheckpoint()
