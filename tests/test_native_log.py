"""The console filter for TensorFlow's C++ log lines (dcgan.native_log), on a real process's
file descriptor 2."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

WRITER = """
import os, subprocess, sys, time
from dcgan.native_log import drop_harmless_lines
drop_harmless_lines()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"E0000 00:00:17.1 15677 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
            b"which is not in the op definition: Op<name=MapDataset>\\nE0000 00:00:17.2 15677 meta_optimizer.cc:967] ")
time.sleep(0.05)  # a line split across two writes
os.write(2, b"remapper failed: INVALID_ARGUMENT: fanout 'LeakyRelu/LeakyReluGrad' exist for missing node\\n")
os.write(2, b"E0000 00:00:17.3 15677 cuda_dnn.cc:1] a real error\\n")
os.write(2, b"\\rwriting train:  50%")
sys.stderr.write("\\rwriting train: 100%\\n")
sys.stderr.write("Traceback: from Python\\n")
subprocess.Popen(["sleep", "1"], stdout=subprocess.DEVNULL)  # holds the filter's pipe open past our exit
os.write(2, b"E0000 00:00:17.4 15677 an unfinished last line")
"""


def test_harmless_native_lines_are_dropped_and_the_rest_passes_unchanged():
    result = subprocess.run(
        [sys.executable, "-c", WRITER], capture_output=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src")}
    )
    assert result.returncode == 0
    assert result.stderr.decode() == (
        "E0000 00:00:17.3 15677 cuda_dnn.cc:1] a real error\n"
        "\rwriting train:  50%\rwriting train: 100%\nTraceback: from Python\n"
        "E0000 00:00:17.4 15677 an unfinished last line"
    )


# Runs the entry point sys.argv names; prints its exit code and which slow imports it made.
REFUSED = (
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "except SystemExit as refused:\n"
    "    print(refused.code, [name for name in ('tensorflow', 'keras', 'mlflow', 'ray') if name in sys.modules])\n"
)
ENV = {"PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "0"}  # TensorFlow's chatter shows unless silenced


def test_tensorflow_is_imported_only_by_what_needs_it_and_then_silently(tmp_path):
    importer = (
        "import runpy, sys, dcgan.tracking_server, dcgan.project\n"
        "assert 'tensorflow' not in sys.modules, 'the tracking server needs no TensorFlow'\n"
        f"sys.argv = ['src/train.py', 'train.batch_size=-3', 'hydra.run.dir={tmp_path}']\n"
        f"{REFUSED}"
        "import tensorflow\n"
        "print(tensorflow.__loader__ is tensorflow.__spec__.loader, tensorflow.constant(2).numpy())\n"
    )
    result = subprocess.run([sys.executable, "-c", importer], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert result.returncode == 0
    # A refused config is refused before TensorFlow's or MLflow's start-up (seconds each).
    assert result.stderr == "error: config key train.batch_size: must be at least 1, got -3\n"
    assert result.stdout == "1 []\nTrue 2\n"


def test_a_refused_training_on_ray_starts_neither_ray_nor_tensorflow():
    importer = "import runpy, sys\nsys.argv = ['src/train_on_ray.py', '--workers', '2', 'train.batch_size=-3']\n"
    result = subprocess.run(
        [sys.executable, "-c", importer + REFUSED], capture_output=True, text=True, cwd=REPO, env=ENV
    )
    assert result.stderr == "error: config key train.batch_size: must be at least 1, got -3\n"
    assert result.stdout == "1 []\n"
