"""Screenshots of the MLflow UI's compare view, taken with headless Chromium (Debian: apt-get
install chromium): the newest runs of an experiment (for the README), or the fold runs of a
cross-validation record side by side (--parent-tag cv_record=NAME).

    python docs/compare_view.py --store sqlite:///mlflow.db --runs 3 --out docs/mlflow-compare.png
    python docs/compare_view.py --experiment sarcoma-seg-cv --parent-tag cv_record=petdrop \
        --runs 5 --out docs/mlflow-cv-folds.png
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from sarcoma_seg.stack import free_port


def api(url: str, endpoint: str, body: dict) -> dict:
    """POST one MLflow REST call."""
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    """Start the UI, find the newest runs, open their compare view, save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="sarcoma-seg")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow-compare.png"))
    parser.add_argument("--parent-tag", help="KEY=VALUE of a parent run: compare its child runs")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("error: chromium not found (Debian: apt-get install chromium)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", args.store, "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        found = urllib.request.urlopen(
            f"{url}/api/2.0/mlflow/experiments/get-by-name?"
            + urllib.parse.urlencode({"experiment_name": args.experiment}),
            timeout=30,
        )
        experiment = json.loads(found.read())["experiment"]["experiment_id"]
        search = {"experiment_ids": [experiment], "order_by": ["start_time DESC"]}
        if args.parent_tag:  # a record's parent run, then its children: the folds
            key, _, value = args.parent_tag.partition("=")
            found = api(url, "runs/search", search | {"filter": f"tags.{key} = '{value}'"})
            parent = found["runs"][0]["info"]["run_id"]
            search["filter"] = f"tags.`mlflow.parentRunId` = '{parent}'"
            search["order_by"] = ["attributes.run_name ASC"]
        runs = api(url, "runs/search", search | {"max_results": args.runs})["runs"]
        ids = [r["info"]["run_id"] for r in runs]
        query = urllib.parse.urlencode(
            {"runs": json.dumps(ids), "experiments": json.dumps([experiment])}
        )
        page = f"{url}/#/compare-runs?{query}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1500,1300", "--virtual-time-budget=20000",
             f"--screenshot={args.out.resolve()}", page],
            check=True, capture_output=True, env={**os.environ, "HOME": "/tmp"},
        )  # fmt: skip
        print(f"{args.out}: compare view of {len(ids)} runs ({page})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
