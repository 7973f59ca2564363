"""A local team stack on 127.0.0.1: PostgreSQL, an S3 server (moto) and an MLflow tracking
server with logins (basic-auth), backed by PostgreSQL, storing artifacts in the S3 bucket.

    python -m sarcoma_seg.stack up      # starts all three, writes .stack/env.sh (owner-only)
    source .stack/env.sh                # MLflow URI + login, S3 endpoint + keys for this shell
    python -m sarcoma_seg.stack down    # stops all three and removes their data

Secrets are generated here and written only to owner-only files (env.sh, basic_auth.ini);
nothing secret is printed or put on a command line. Tests use `running_stack()`.
"""

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.io.common import read_json

BUCKET = "sarcoma-seg"  # the team bucket: DVC under dvc/, MLflow artifacts under mlflow/
REGION = "us-east-1"  # moto accepts any; boto3 needs one
ADMIN = "admin"
STATE_DIR = ".stack"  # under the project root; gitignored
PG_PREFIX = "sarcoma-pg-"  # PostgreSQL's data folder, made by `up` in the temporary folder
START_SECONDS = 90  # a cold MLflow server (migrations on an empty database) on a busy machine
PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's layout (package postgresql)


@dataclass
class Stack:
    """Where the running stack lives: its ports, folders, process ids and secrets."""

    state_dir: str
    pg_dir: str
    pg_bin: str
    pg_port: int
    s3_port: int
    mlflow_port: int
    pg_password: str
    aws_key_id: str
    aws_secret: str
    admin_password: str
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        """The MLflow server's URL."""
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        """The S3 server's URL (for `dvc remote modify --local team endpointurl`)."""
        return f"http://127.0.0.1:{self.s3_port}"

    def s3_client(self):  # boto3's client type is generated at run time
        """A boto3 client of the S3 server, with the team's keys."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, region_name=REGION,
            aws_access_key_id=self.aws_key_id, aws_secret_access_key=self.aws_secret,
        )  # fmt: skip

    def client_env(self) -> dict[str, str]:
        """What a team member's shell holds: MLflow URI and login, S3 keys (the endpoint is in
        .dvc/config.local)."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
            "AWS_ACCESS_KEY_ID": self.aws_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def secrets(self) -> list[str]:
        """Every secret value of the stack (for leak checks)."""
        return [self.pg_password, self.aws_secret, self.admin_password]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries on this machine."""
    found = sorted(glob.glob(PG_GLOB), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise SarcomaSegError(f"{PG_GLOB}: PostgreSQL not found; apt-get install postgresql")


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run cmd as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read (created 0600, never world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def new_stack(state_dir: Path) -> Stack:
    """Fresh ports, folders and secrets for a stack whose files go to state_dir."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
    # PostgreSQL's data dir must belong to the user it runs as, outside folders it cannot enter
    pg_dir = Path(tempfile.mkdtemp(prefix=PG_PREFIX))
    if os.geteuid() == 0:
        shutil.chown(pg_dir, "postgres", "postgres")
    return Stack(
        state_dir=str(state_dir),
        pg_dir=str(pg_dir),
        pg_bin=str(postgres_bin()),
        pg_port=free_port(),
        s3_port=free_port(),
        mlflow_port=free_port(),
        pg_password=secrets.token_urlsafe(24),
        aws_key_id="sarcoma" + secrets.token_hex(6),
        aws_secret=secrets.token_urlsafe(30),
        admin_password=secrets.token_urlsafe(24),
    )


def start_postgres(stack: Stack) -> None:
    """initdb with a password-only superuser, start on 127.0.0.1, create the two databases."""
    pg_dir, bin_dir = Path(stack.pg_dir), Path(stack.pg_bin)
    pwfile = pg_dir / "pwfile"
    write_private(pwfile, stack.pg_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    initdb = [str(bin_dir / "initdb"), "-D", str(pg_dir / "data"), "-U", "postgres"]
    initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"]
    checked(as_postgres(initdb), "initdb")
    pwfile.unlink()
    options = f"-c listen_addresses=127.0.0.1 -p {stack.pg_port}"
    # fsync off: a throwaway local store, durability is not the point
    options += f" -c unix_socket_directories={pg_dir} -c fsync=off"
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(pg_dir / "data"), "-l", str(pg_dir / "log")]
    checked(as_postgres([*ctl, "-o", options, "-w", "-t", "60", "start"]), "pg_ctl start")
    stack.pids["postgres"] = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
    import psycopg

    url = f"host=127.0.0.1 port={stack.pg_port} user=postgres dbname=postgres"
    with psycopg.connect(url, password=stack.pg_password, autocommit=True) as conn:
        for name in ("mlflow", "mlflow_auth"):
            conn.execute(f"CREATE DATABASE {name}")


def checked(cmd: list[str], what: str) -> None:
    """Run a setup command; on failure raise with its output (which holds no secret)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> None:
    """Start a server in its own session (so `down` from another shell can stop it)."""
    log = open(Path(stack.state_dir) / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    log.close()
    stack.pids[name] = proc.pid


def wait_until(name: str, ready: Callable[[], bool], stack: Stack) -> None:
    """Poll ready() until true; fail naming the server's log if it died or never came up."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive(stack.pids[name]):
            break
        time.sleep(0.3)
    log = Path(stack.state_dir) / f"{name}.log"
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    raise RuntimeError(f"{name} did not start; {log}:\n{tail}")


def alive(pid: int) -> bool:
    """Whether a process of ours still runs (a zombie child counts as gone)."""
    with suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a server orphaned by `up` (its parent exited) is reaped by init, which in a container may
    # never do it: an exited one then stays a zombie, which is gone for our purposes
    with suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def start_s3(stack: Stack) -> None:
    """moto's S3 server bound to 127.0.0.1, with the team bucket."""
    server = shutil.which("moto_server") or "moto_server"
    spawn(stack, "s3", [server, "-H", "127.0.0.1", "-p", str(stack.s3_port)], dict(os.environ))
    wait_until("s3", lambda: port_open(stack.s3_port), stack)
    stack.s3_client().create_bucket(Bucket=BUCKET)


def auth_config(stack: Stack) -> Path:
    """basic_auth.ini (owner-only): the admin login and the users' own database."""
    path = Path(stack.state_dir) / "basic_auth.ini"
    write_private(
        path,
        "[mlflow]\n"
        "default_permission = READ\n"  # colleagues see every run; editing needs a grant
        f"database_uri = postgresql+psycopg://postgres@127.0.0.1:{stack.pg_port}/mlflow_auth\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {stack.admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a checked password is trusted for 60 s: each check is a slow PBKDF2 hash, and a
        # training logs every epoch (a password change reaches the cache at once anyway)
        "auth_cache_ttl_seconds = 60\n",
    )
    return path


def start_mlflow(stack: Stack) -> None:
    """mlflow server with basic-auth on PostgreSQL, proxying artifacts to s3://BUCKET/mlflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        # secrets go by environment and owner-only files, never on the command line (ps shows it)
        "PGPASSWORD": stack.pg_password,
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://postgres@127.0.0.1:{stack.pg_port}/mlflow",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(stack)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24),
        # no job runner: it starts eight more Python processes for GenAI jobs this project lacks
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.aws_key_id,
        "AWS_SECRET_ACCESS_KEY": stack.aws_secret,
        "AWS_DEFAULT_REGION": REGION,
    }
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
    cmd += ["--artifacts-destination", f"s3://{BUCKET}/mlflow"]
    cmd += ["--host", "127.0.0.1", "--port", str(stack.mlflow_port)]
    # one worker: starts fastest on a laptop; uvicorn serves concurrent requests anyway
    cmd += ["--workers", "1"]
    # open keep-alive connections of clients must not hold `down` up
    cmd += ["--uvicorn-opts", "--timeout-graceful-shutdown 3"]
    spawn(stack, "mlflow", cmd, env)
    wait_until("mlflow", lambda: healthy(stack.tracking_uri), stack)


def healthy(url: str) -> bool:
    """Whether the MLflow server answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(state_dir: Path) -> Stack:
    """Start PostgreSQL, S3 and MLflow; on any failure stop what started and re-raise."""
    stack = new_stack(state_dir)
    try:
        start_postgres(stack)
        start_s3(stack)
        start_mlflow(stack)
    except BaseException:
        stop(stack)
        raise
    save_state(stack)
    return stack


def save_state(stack: Stack) -> None:
    """state.json (for `down`) and env.sh (for `source`), both owner-only."""
    state = Path(stack.state_dir)
    write_private(state / "state.json", json.dumps(asdict(stack), indent=2) + "\n")
    lines = [f"export {k}='{v}'" for k, v in stack.client_env().items()]
    write_private(state / "env.sh", "\n".join(lines) + "\n")


def terminate(pids: list[int], seconds: float = 20) -> None:
    """SIGTERM servers' process groups, SIGKILL those still there after `seconds`."""
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 5)):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(alive(pid) for pid in pids):
                return
            time.sleep(0.1)


def stop(stack: Stack) -> None:
    """Stop MLflow, S3 and PostgreSQL (in that order) and delete their data and secrets."""
    terminate([stack.pids[name] for name in ("mlflow", "s3") if ours(stack, name)])
    data = Path(stack.pg_dir) / "data"
    if (data / "postmaster.pid").is_file():
        ctl = [str(Path(stack.pg_bin) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(as_postgres(ctl), capture_output=True)
    shutil.rmtree(stack.pg_dir, ignore_errors=True)
    shutil.rmtree(stack.state_dir, ignore_errors=True)


@contextmanager
def running_stack(state_dir: Path | None = None) -> Iterator[Stack]:
    """The whole stack for the duration of a with block (tests)."""
    scratch = None
    if state_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="sarcoma-stack-"))
        state_dir = scratch / "state"
    stack = start(Path(state_dir))
    try:
        yield stack
    finally:
        stop(stack)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def load_state(state_dir: Path) -> Stack:
    """The stack that `up` started, from its state.json, checked before anything trusts it:
    its folders must be this state folder and a PostgreSQL folder `up` makes in the temporary
    folder, its PostgreSQL binaries the installed ones (a tampered file is refused)."""
    path = state_dir / "state.json"
    if not path.is_file():
        raise SarcomaSegError(f"{path}: no stack is running here (python -m sarcoma_seg.stack up)")
    try:
        stack = Stack(**read_json(path, 64 << 10))
    except TypeError as exc:
        raise SarcomaSegError(f"{path}: not a stack's state ({exc})") from None
    pg_dir = Path(str(stack.pg_dir))
    checks = {
        "state_dir": Path(str(stack.state_dir)).resolve() == state_dir.resolve(),
        "pg_dir": pg_dir.parent.resolve() == Path(tempfile.gettempdir()).resolve()
        and pg_dir.name.startswith(PG_PREFIX)
        and not pg_dir.is_symlink(),
        "pg_bin": Path(str(stack.pg_bin)) == postgres_bin(),
        "pids": isinstance(stack.pids, dict)
        and all(isinstance(p, int) and p > 1 for p in stack.pids.values()),
    }
    for key, ok in checks.items():
        if not ok:
            raise SarcomaSegError(f"{path}: {key} is not what `up` writes; refusing to act on it")
    return stack


def ours(stack: Stack, name: str) -> bool:
    """Whether the process `up` recorded under name is still that server: a group leader whose
    command line names the server and its port (a reused pid is someone else's process)."""
    pid = stack.pids.get(name)
    if pid is None or not alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leader = os.getpgid(pid) == pid
    except OSError:
        return False
    port = str(stack.mlflow_port if name == "mlflow" else stack.s3_port).encode()
    program = b"mlflow" if name == "mlflow" else b"moto_server"
    return leader and port in cmdline and any(program in part for part in cmdline)


def main(argv: list[str] | None = None) -> None:
    """`up` starts the stack in the background, `down` stops it."""
    parser = argparse.ArgumentParser(prog="python -m sarcoma_seg.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(STATE_DIR), help="state folder")
    args = parser.parse_args(argv)
    if args.action == "down":
        stop(load_state(args.dir))
        print("stack stopped")
        return
    if args.dir.exists():
        raise SarcomaSegError(f"{args.dir}: already exists; python -m sarcoma_seg.stack down first")
    stack = start(args.dir)
    print(f"MLflow   {stack.tracking_uri} (user {ADMIN})")
    print(f"S3       {stack.s3_endpoint} (bucket {BUCKET})")
    print(f"Postgres 127.0.0.1:{stack.pg_port}")
    print(f"source {args.dir / 'env.sh'}  # login and keys for this shell")
    print(f"dvc remote modify --local team endpointurl {stack.s3_endpoint}")


if __name__ == "__main__":
    run_cli(main)
