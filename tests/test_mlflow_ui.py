"""`mlflow ui` in a real browser (headless Chromium): the address README gives opens the
project's experiment in MLflow's model-training view with its runs; without it, MLflow 3.17
opens its GenAI view whatever the experiment's kind (which is why README gives it)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import free_port, needs_package
from projects import as_project

from dcgan import tracking, tracking_server

pytestmark = pytest.mark.slow
RUN_NAME = "mnist dcgan_mnist adam: debug=tiny"


def _page_text(url: str, profile: Path) -> str:
    """The page's DOM once its scripts have run (up to 30 s of page time)."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--virtual-time-budget=30000", "--dump-dom", url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180).stdout


def test_the_readme_address_opens_the_runs_in_the_model_training_view(tmp_path, monkeypatch):
    needs_package("chromium", shutil.which("chromium") is not None, "the MLflow UI in a browser")
    monkeypatch.chdir(as_project(tmp_path))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    experiment = tracking.experiment_id("dcgan-mnist")
    with mlflow.start_run(experiment_id=experiment, run_name=RUN_NAME):
        mlflow.log_metric("d_loss", 1.0, step=1)

    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not tracking_server._healthy(f"http://127.0.0.1:{port}"):
            assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
            time.sleep(1)
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment}"
        assert RUN_NAME in _page_text(f"{page}?workflowType=machine_learning", tmp_path / "browser-1")
        default = _page_text(page, tmp_path / "browser-2")
        assert "Traces" in default and RUN_NAME not in default  # MLflow's GenAI view
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
