"""The GitHub workflow: valid for actionlint, and doing what CI promises."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pipeline.yml"


def actionlint(path: Path) -> subprocess.CompletedProcess:
    """Run actionlint (installed by the dev extra) on one workflow file."""
    binary = shutil.which("actionlint")
    assert binary, "actionlint not found: pip install -e '.[dev]' installs it"
    return subprocess.run(
        [binary, "-no-color", str(path)], capture_output=True, text=True, cwd=path.parent
    )


def test_actionlint_accepts_the_workflow() -> None:
    done = actionlint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: [", 1)
    broken = broken.replace("${{ github.event_name", "${{ github.no_such_context", 1)
    (tmp_path / "broken.yml").write_text(broken)
    assert actionlint(tmp_path / "broken.yml").returncode != 0


@pytest.fixture(scope="module")
def workflow() -> dict:
    """The workflow as data (PyYAML reads the `on` key as True)."""
    return yaml.safe_load(WORKFLOW.read_text())


def test_it_runs_when_params_pipeline_or_code_change(workflow: dict) -> None:
    triggers = workflow[True]
    for event in ("push", "pull_request"):
        assert {"params.yaml", "dvc.yaml", "stages/**", "sarcoma_seg/**"} <= set(
            triggers[event]["paths"]
        )


def test_repro_job_reports_diffs_caches_and_uploads_mlflow(workflow: dict) -> None:
    steps = workflow["jobs"]["repro"]["steps"]
    text = yaml.safe_dump(steps)
    assert "dvc repro" in text and "dvc exp run -S data.source=kaggle" in text
    assert "dvc params diff" in text and "dvc metrics diff" in text
    assert "GITHUB_STEP_SUMMARY" in text and "gh pr comment" in text
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/cache@") for u in uses)  # the DVC cache
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert "mlflow.db" in upload["with"]["path"] and "mlartifacts/" in upload["with"]["path"]
    # Kaggle keys come from repository secrets through the environment, nowhere else
    env = workflow["jobs"]["repro"]["env"]
    assert env["KAGGLE_KEY"] == "${{ secrets.KAGGLE_KEY }}"


def test_test_job_runs_the_local_ci_script(workflow: dict) -> None:
    runs = [s.get("run", "") for s in workflow["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in runs


def test_repro_job_pulls_before_and_pushes_after_on_the_default_branch(workflow: dict) -> None:
    steps = workflow["jobs"]["repro"]["steps"]
    runs = [s.get("run", "") for s in steps]
    pull = next(i for i, r in enumerate(runs) if "dvc pull" in r)
    push = next(i for i, r in enumerate(runs) if "dvc push" in r)
    repro = next(i for i, r in enumerate(runs) if r.startswith("dvc repro"))
    assert pull < repro < push
    assert "AWS_ACCESS_KEY_ID" in steps[pull]["if"] and "AWS_ACCESS_KEY_ID" in steps[push]["if"]
    assert "default_branch" in steps[push]["if"] and "pull_request" in steps[push]["if"]
    # remote and server credentials come from repository secrets through the environment only
    env = workflow["jobs"]["repro"]["env"]
    for key in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"):
        assert env[key].startswith("${{ secrets.")
