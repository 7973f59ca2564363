"""MLflow tracking: the store location, one run per training, per-epoch logging, the model."""

import fcntl
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from sarcoma_seg import digest
from sarcoma_seg.params import flatten

# mlflow is imported inside the functions that log: where the store is (tracking_uri) is asked
# by `predict` on every registry call, and importing MLflow costs more than a cached model

EXPERIMENT = "sarcoma-seg"


def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder at or above start that holds dvc.yaml.

    Queued `dvc exp run`s work in copies under <root>/.dvc/tmp/exps; they report to <root>."""
    here = (start or Path.cwd()).resolve()
    if ".dvc" in here.parts:
        return Path(*here.parts[: here.parts.index(".dvc")])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///<repo root>/mlflow.db whatever the cwd."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, hold <db>.lock while the store and experiment are created and switch
    it to WAL mode, so parallel queue workers never race on the schema migration; WAL lets
    readers and one writer work at once (MLflow itself sets a 20 s busy timeout)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with db.with_name(db.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per store
            except sqlite3.OperationalError:
                pass  # busy right now: WAL only eases contention, the next training sets it


def use_experiment(name: str = EXPERIMENT) -> str:
    """Point MLflow at the store and experiment; local stores keep artifacts beside mlflow.db."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        return _use_experiment(uri, name)


def _use_experiment(uri: str, name: str) -> str:
    """Set the experiment `name`, creating it if it is new."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        mlflow.set_experiment(name)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # MLflow would otherwise put artifacts in ./mlruns relative to the working directory
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        # a colleague's run (or a parallel queued experiment) created it since we looked
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(root: Path) -> str:
    """The commit the run's code comes from: DVC's baseline for experiments, else HEAD."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # not a git checkout (e.g. an unpacked release)
    return done.stdout.strip()


def sha256_or_none(path: Path) -> str:
    """digest.file_sha256 of a file, or "none" if it does not exist (yet): a run tag."""
    path = Path(path)
    return digest.file_sha256(path) if path.is_file() else "none"


def experiment_name() -> str:
    """The DVC experiment this run belongs to; "workspace" for a plain dvc repro."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def run_identity(source: str, backbone: str) -> tuple[str, dict[str, str]]:
    """A run name and the tags that tell runs apart in the MLflow UI's compare view, from
    data.source and train.backbone."""
    root = Path.cwd()  # the workspace DVC runs the stage in (a temp copy for queued experiments)
    commit = git_commit(root)
    tags = {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,  # MLflow's own column in the runs table
        "dvc.experiment": experiment_name(),
        "dvc.lock.sha256": sha256_or_none(root / "dvc.lock"),  # upstream stages as train began
        "data.source": source,
        "model.backbone": backbone,
    }
    return f"{experiment_name()}-{source}-{backbone}", tags


def log_params(params: dict[str, Any]) -> None:
    """Log every param of params.yaml under its dotted key."""
    import mlflow

    flat = {
        k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(params).items()
    }
    mlflow.log_params(flat)


def log_manifest(manifest_path: Path) -> None:
    """Attach the data manifest as an artifact and as the run's dataset input with its digest."""
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    manifest = json.loads(Path(manifest_path).read_text())
    mlflow.log_artifact(str(manifest_path), artifact_path="data")
    source = HTTPDatasetSource(url=f"{manifest['source']}://{manifest['dataset']}")
    # MLflow caps dataset digests at 36 characters; the full SHA-256 goes into a tag
    digest = manifest["digest"][:32]
    dataset = MetaDataset(source=source, name=manifest["dataset"], digest=digest)
    mlflow.log_input(dataset, context="training")
    mlflow.set_tags(
        {
            "data.digest": manifest["digest"],
            "data.source": manifest["source"],
            # how many warnings the download stage raised; their text is in the manifest artifact
            "data.warnings": len(manifest.get("warnings", [])),
        }
    )


def write_run_info(path: Path, run: Any) -> None:
    """Record the MLflow run so that later stages log into the same run."""
    info = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    Path(path).write_text(json.dumps(info, indent=2) + "\n")


def read_run_id(path: Path) -> str:
    """The MLflow run id that the train stage recorded."""
    return json.loads(Path(path).read_text())["run_id"]
