"""What the team remote saves a colleague: a fresh clone's `dvc pull` + no-op `dvc repro` against
the full `dvc repro`, at params.yaml's defaults, on the local stack (sarcoma_seg/stack.py).

    python benchmarks/team_pull.py

Runs the pipeline once logging to the stack's MLflow server, pushes, clones, pulls, reproduces;
then prints the times, the objects in the bucket, the status of an unauthenticated REST call,
and whether a canary secret held in the environment of every run reached any file, MLflow
param or tag, or bucket object."""

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sarcoma_seg.stack import BUCKET, Stack, running_stack  # noqa: E402
from tests.conftest import copy_project, ran, run  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds a command took, and its output."""
    start = time.perf_counter()
    output = run(cmd, cwd, env)
    return time.perf_counter() - start, output


def bucket_objects(stack: Stack) -> list[dict]:
    """Every object in the team bucket (key and size)."""
    s3 = stack.s3_client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    objects = [item for page in pages for item in page.get("Contents", [])]
    for item in objects:
        item["Body"] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return objects


def leaked_into(stack: Stack, trees: list[Path], objects: list[dict], hidden: list[str]) -> list:
    """Where any hidden value appears: files of the trees, MLflow params and tags, objects."""
    from mlflow import MlflowClient

    found = [
        str(path)
        for tree in trees
        for path in tree.rglob("*")
        if path.is_file() and any(h.encode() in path.read_bytes() for h in hidden)
    ]
    with mock.patch.dict(os.environ, stack.client_env()):
        client = MlflowClient(stack.tracking_uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        for found_run in client.search_runs(ids, max_results=1000):
            text = json.dumps([found_run.data.params, found_run.data.tags])
            if any(h in text for h in hidden):
                found.append(f"run {found_run.info.run_id}")
    found += [o["Key"] for o in objects if any(h.encode() in o["Body"] for h in hidden)]
    return found


def main() -> None:
    """Run the comparison once and print its figures."""
    # no options: parsing still answers --help (and refuses typos) instead of starting a stack
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    canary = "canary-" + secrets.token_hex(12)
    with running_stack() as stack, tempfile.TemporaryDirectory(prefix="team-pull-") as scratch:
        env = stack.client_env() | {"KAGGLE_KEY": canary, "SARCOMA_CANARY": canary}
        repo = copy_project(Path(scratch) / "repo")
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "defaults"], repo)
        endpoint = ["dvc", "remote", "modify", "--local", "team", "endpointurl"]
        run([*endpoint, stack.s3_endpoint], repo)
        full, output = timed(["dvc", "repro"], repo, env)
        stages = ran(output)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "results"], repo)
        push, _ = timed(["dvc", "push"], repo, env)
        clone = Path(scratch) / "clone"
        run(["git", "clone", "-q", str(repo), str(clone)], Path(scratch))
        run([*endpoint, stack.s3_endpoint], clone)
        pull, _ = timed(["dvc", "pull"], clone, env)
        noop, output = timed(["dvc", "repro"], clone, env)
        rerun = ran(output)
        status = run(["dvc", "status"], clone, env).strip()
        search = f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search"
        unauthenticated = requests.post(search, json={"max_results": 1}, timeout=30).status_code
        objects = bucket_objects(stack)
        leaks = leaked_into(stack, [repo, clone], objects, [canary, *stack.secrets()])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    prefixes = Counter(o["Key"].split("/")[0] for o in objects)
    sizes = Counter()
    for o in objects:
        sizes[o["Key"].split("/")[0]] += o["Size"]
    print(f"params: defaults (synthetic {params['data']['synthetic']}, {params['train']['epochs']}"
          f" epochs, {params['base']['image_size']} px)")  # fmt: skip
    print(f"full dvc repro:           {full:7.1f} s  (stages {', '.join(stages)})")
    print(f"dvc push:                 {push:7.1f} s")
    print(f"fresh clone dvc pull:     {pull:7.1f} s")
    print(f"fresh clone dvc repro:    {noop:7.1f} s  (stages run: {rerun or 'none'})")
    print(
        f"pull + no-op repro:       {pull + noop:7.1f} s  = {(pull + noop) / full:.1%} of the full"
    )
    print(f"dvc status in the clone:  {status}")
    for prefix in sorted(prefixes):
        print(f"bucket {prefix}/: {prefixes[prefix]} objects, {sizes[prefix] / 1e6:.1f} MB")
    for key in sorted(o["Key"] for o in objects if o["Key"].startswith("mlflow/")):
        print(f"  {key}")
    print(f"unauthenticated REST call: HTTP {unauthenticated}")
    print(f"canary and stack secrets found in: {leaks or 'nowhere'}")


if __name__ == "__main__":
    main()
