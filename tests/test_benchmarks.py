"""The benchmark scripts run end to end (tiny settings) and print what the README quotes."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_throughput_benchmark_prints_its_figures(tmp_path):
    overrides = [f"paths.prepared_dir={tmp_path}/prepared", f"paths.classifier_dir={tmp_path}/classifier",
                 "data.limit=1024", "metrics.classifier.epochs=1", "metrics.train_samples=100", "metrics.kid_subset_size=50"]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/throughput.py"), "--steps", "2", "--rounds", "2", "--skip-rgb", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"matmul peak: float32 \d+ GFLOP/s, bfloat16 \d+ GFLOP/s", out)
    assert "0.476 GFLOP per training image" in out  # the tutorial model: 3 G + 8 D forward passes
    assert re.search(r"\(a\) tutorial loop, fp32 +[\d.]+ img/s", out)
    assert re.search(r"\(b\) product path, fp32 +[\d.]+ img/s .* ratio b/a [\d.]+", out)
    assert "of a step waiting for input" in out and "per-epoch overhead" in out
    assert re.fullmatch(r"speedup_vs_tutorial=\d+\.\d\d fraction_of_peak=\d+\.\d\d", out.strip().splitlines()[-1])
