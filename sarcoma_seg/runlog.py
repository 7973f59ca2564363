"""MLflow runs that survive faults: HTTP retries set on purpose, a reachability check before
training, an outbox for metrics the server did not take, orphaned runs marked KILLED, and every
run ended FINISHED, FAILED or KILLED."""

import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sarcoma_seg.errors import SarcomaSegError, brief, one_line

# MLflow's own retry settings, set on purpose (a user's environment still wins): MLflow 3's
# defaults (7 retries, backoff factor 2, 120 s timeout) stall an epoch for minutes while the
# server is down; 3 retries at factor 1 wait ~7 s, then the epoch's metrics go to the outbox
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
WAIT_ENV = "SARCOMA_SEG_TRACKING_WAIT"  # seconds the stage end waits for the server
WAIT_SECONDS = 30.0  # a restarting server is back within this; longer outages fail the stage
RUNS = "runs"  # <root>/.checkpoints/runs/<run id>.lock: the process that owns a RUNNING run
OUTBOX = "outbox"  # <root>/.checkpoints/outbox/<run id>.jsonl: metrics not sent yet


def configure_http_retries() -> None:
    """Set MLflow's HTTP retry settings unless the environment already sets them."""
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)


def redact(uri: str) -> str:
    """The URI without user name or password, fit for a message."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def check_reachable(uri: str, attempts: int = 3) -> None:
    """Fail with one line, before any training, if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return  # a local store (sqlite, file) is always there
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers (some proxies hide /health): reachable
        except OSError as exc:
            error = exc
            time.sleep(attempt)  # 0 s, 1 s: a server that is just starting gets a moment
    reason = getattr(error, "reason", error)
    raise SarcomaSegError(
        f"MLFLOW_TRACKING_URI={redact(uri)}: tracking server not reachable ({reason}); "
        "start it or point MLFLOW_TRACKING_URI elsewhere (nothing was trained)"
    )


def uri_digest(uri: str) -> str:
    """A short digest naming the store (the URI may hold credentials, so not the URI itself)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def claim_run(root: Path, run_id: str, uri: str) -> IO[str]:
    """Mark run_id as owned by this process: a lock file locked for the process' life (kill -9
    releases it), created locked so that no other training ever sees it unlocked."""
    folder = Path(root) / ".checkpoints" / RUNS
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{run_id}.{os.getpid()}.tmp"
    handle = tmp.open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write(json.dumps({"run_id": run_id, "store": uri_digest(uri), "pid": os.getpid()}))
    handle.flush()
    os.replace(tmp, folder / f"{run_id}.lock")
    return handle


def release_run(root: Path, run_id: str, handle: IO[str]) -> None:
    """The run is ended: drop its lock file."""
    (Path(root) / ".checkpoints" / RUNS / f"{run_id}.lock").unlink(missing_ok=True)
    handle.close()


def mark_orphans(root: Path, uri: str, keep: str | None = None) -> list[str]:
    """End as KILLED every RUNNING run of this store whose process is gone (killed with -9),
    except `keep`, the run this training resumes; return their ids."""
    folder = Path(root) / ".checkpoints" / RUNS
    marked: list[str] = []
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        with path.open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its training is alive
            info = json.loads(handle.read() or "{}")
            if info.get("store") != uri_digest(uri) or info.get("run_id") == keep:
                continue  # another store's run, or the one this training continues
            client = MlflowClient(uri)
            if client.get_run(info["run_id"]).info.status == "RUNNING":
                client.set_terminated(info["run_id"], "KILLED")
                marked.append(info["run_id"])
            path.unlink(missing_ok=True)
    for run_id in marked:
        print(f"run {run_id}: its training was killed; marked KILLED")
    return marked


def end_status(exc: BaseException) -> str:
    """KILLED for an interruption (SIGINT, SIGTERM turned into an exception), FAILED otherwise."""
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, SystemExit):
        return "KILLED" if exc.code in (130, 143) else "FAILED"
    name = type(exc).__name__
    interrupted = not isinstance(exc, Exception) or "Terminat" in name or "Interrupt" in name
    return "KILLED" if interrupted else "FAILED"


@contextmanager
def reopened(run_id: str) -> Iterator[Any]:
    """A finished run opened again to log into (evaluate): FINISHED when the block ends, KILLED
    on SIGINT or SIGTERM, FAILED on an error, as training's runs end."""
    run = mlflow.start_run(run_id=run_id)
    try:
        yield run
    except BaseException as exc:
        end_run_quietly(end_status(exc))
        raise
    mlflow.end_run()


def end_run_quietly(status: str) -> None:
    """End the active run with status; if the server is down, leave it to mark_orphans."""
    try:
        mlflow.end_run(status)
    except Exception as exc:  # noqa: BLE001 - the stage is already failing with its own error
        print(f"warning: could not end the MLflow run as {status}: {type(exc).__name__}")


class Outbox:
    """Metrics the server did not take, one JSON line per step, sent when it is back."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.path = Path(root) / ".checkpoints" / OUTBOX / f"{run_id}.jsonl"
        self.run_id = run_id

    def add(self, metrics: dict[str, float], step: int) -> None:
        """Keep one step's metrics for later."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def pending(self) -> list[dict[str, Any]]:
        """The steps still waiting: a line torn by a kill, not UTF-8, or not a step with its
        metrics is dropped with a warning (its epoch is resent from the checkpoint's history)."""
        if not self.path.is_file():
            return []
        lines = []
        for number, raw in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                item = json.loads(raw.decode("utf-8"))
                if not valid_item(item):
                    raise ValueError("not a step with its metrics")
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                where = f"{self.path}:{number}"
                print(f"warning: {where}: dropped ({brief(one_line(exc), 80)})", file=sys.stderr)
                continue
            lines.append(item)
        return lines

    def send(self) -> bool:
        """Send everything waiting; True if the outbox is empty afterwards."""
        waiting = self.pending()
        if not waiting:
            return True
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, int(item["step"]))
            for item in waiting
            for k, v in item["metrics"].items()
        ]
        try:
            client = MlflowClient()
            for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics a batch
                client.log_batch(self.run_id, metrics=metrics[start : start + 1000])
        except Exception:  # noqa: BLE001 - any failure to reach the store: keep them for later
            return False
        self.path.unlink(missing_ok=True)
        return True

    def describe(self) -> str:
        """What is waiting, for the error line."""
        steps = sorted({int(item["step"]) + 1 for item in self.pending()})
        return f"metrics of epoch(s) {', '.join(map(str, steps))}" if steps else "nothing"


def valid_item(item: Any) -> bool:
    """An outbox line as Outbox.add writes it: an int step and a mapping of finite numbers."""
    if not isinstance(item, dict) or not isinstance(item.get("step"), int):
        return False
    metrics = item.get("metrics")
    return isinstance(metrics, dict) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in metrics.items()
    )


class Silent(Outbox):
    """The outbox of a process that logs nothing at all (a cluster's non-chief worker)."""

    def __init__(self) -> None:
        self.path, self.run_id = Path(os.devnull), ""

    def add(self, metrics: dict[str, float], step: int) -> None:
        """Keep nothing."""

    def pending(self) -> list[dict[str, Any]]:
        """Nothing waits."""
        return []

    def send(self) -> bool:
        """Nothing to send."""
        return True


SILENT = Silent()


def log_epoch(outbox: Outbox | None, metrics: dict[str, float], step: int) -> bool:
    """Log one epoch's metrics, sending older waiting ones first; keep them in the outbox if the
    server does not take them (no outbox: log straight away; SILENT: log nothing). True if
    sent."""
    if isinstance(outbox, Silent):
        return True
    if outbox is None:
        mlflow.log_metrics(metrics, step=step)
        return True
    if outbox.send():
        try:
            mlflow.log_metrics(metrics, step=step)
            return True
        except Exception as exc:  # noqa: BLE001 - network or server error after MLflow's retries
            print(f"warning: epoch {step + 1} metrics kept to send later ({type(exc).__name__})")
    outbox.add(metrics, step)
    return False


def epoch_logger(outbox: Outbox | None, prefix: str = "") -> Any:
    """A Keras callback that logs every epoch's metrics and learning rate (step = epoch), each
    key after `prefix` (an ensemble's member_<i>/), through the outbox."""
    import tensorflow as tf

    class EpochLogger(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            metrics["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
            log_epoch(outbox, {f"{prefix}{k}": v for k, v in metrics.items()}, epoch)

    return EpochLogger()


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps of a metric already in the run."""
    return {m.step for m in MlflowClient().get_metric_history(run_id, key)}


def backfill(outbox: Outbox, history: dict[str, list[float]], prefix: str = "") -> list[int]:
    """Log the checkpointed epochs the run lacks (a kill between checkpoint and logging), and
    no epoch twice; return the epochs logged."""
    if not history or isinstance(outbox, Silent):
        return []
    have = logged_steps(outbox.run_id, f"{prefix}loss") | {
        int(item["step"]) for item in outbox.pending()
    }
    missing = [e for e in range(len(history["loss"])) if e not in have]
    for epoch in missing:
        log_epoch(outbox, {f"{prefix}{k}": v[epoch] for k, v in history.items()}, epoch)
    return missing


def _answers(run_id: str) -> bool:
    """True if the store serves the run (the final artifacts need it)."""
    try:
        MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - any failure to reach the store
        return False
    return True


def flush_or_fail(outbox: Outbox, uri: str) -> None:
    """At the stage end: wait for the server (WAIT_SECONDS, or SARCOMA_SEG_TRACKING_WAIT) and
    send the outbox; if it stays down, fail with one line saying what was not logged."""
    deadline = time.monotonic() + float(os.environ.get(WAIT_ENV, WAIT_SECONDS))
    while not (outbox.send() and _answers(outbox.run_id)):
        if time.monotonic() > deadline:
            raise SarcomaSegError(
                f"MLFLOW_TRACKING_URI={redact(uri)}: tracking server not reachable; run "
                f"{outbox.run_id} lacks {outbox.describe()}, its final metrics and the model "
                "(the DVC outputs are complete); run dvc repro again to finish the logging"
            )
        time.sleep(2)
