"""The benchmark scripts run end to end (tiny settings) and print what docs/ quotes."""

import json
import os
import re
import subprocess
import sys

import imageio.v3 as iio
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def own_tmpdir(tmp_path) -> dict[str, str]:
    """The environment for a benchmark whose temporary folders go to ``tmp_path / "tmp"``
    (TMPDIR), so pytest removes them with it and a test can see what was left there."""
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp")}


def run_benchmark(tmp_path, script: str, *args: str) -> str:
    """Run a benchmark script on a sliver of MNIST prepared in ``tmp_path``; its stdout. A smoke
    run: the figures' form is checked, their size is for `make bench`. The work folders it keeps
    for inspection go to ``tmp_path`` too (``own_tmpdir``)."""
    overrides = [
        f"paths.prepared_dir={tmp_path}/prepared",
        f"paths.classifier_dir={tmp_path}/classifier",
        "data.limit=256",
        "data.test_limit=1000",
        "metrics.classifier.epochs=1",
        "metrics.classifier.min_steps=0",
        "metrics.train_samples=100",
        "metrics.kid_subset_size=50",
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=own_tmpdir(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_throughput_benchmark_prints_its_figures(tmp_path):
    out = run_benchmark(tmp_path, "throughput.py", "--steps", "2", "--epochs", "2", "--skip-rgb")
    assert re.search(r"matmul peak: float32 \d+ GFLOP/s, bfloat16 \d+ GFLOP/s", out)
    assert "0.455 GFLOP per training image" in out  # the tutorial model: 3 G + 7 D forward passes
    assert re.search(r"\(a\) tutorial loop, fp32 +[\d.]+ img/s", out)
    assert re.search(r"same loop with the product's fused batch norm +[\d.]+ img/s .* ratio to \(a\) [\d.]+", out)
    assert re.search(r"\(b\) product path, fp32 +[\d.]+ img/s .* ratio b/a [\d.]+", out)
    assert re.search(r"train.precision=auto: (fp32|mixed_bfloat16) \(auto, (measured|cache): ", out)
    assert re.search(
        r"achieved \d+ GFLOP/s = [\d.]+ of the faster \((float32|bfloat16)\) matmul peak; auto chose ", out
    )
    assert re.search(r"^memory bandwidth \(STREAM-style copy\): [\d.]+ GB/s$", out, re.MULTILINE)
    assert "of a step waiting for input" in out
    assert re.search(r"the same step without R1 and EMA [\d.]+ img/s: they cost -?[\d.]+% of it", out)
    roofline = re.search(
        r"roofline bound of a step: ([\d.]+) s \(compute-bound ops ([\d.]+) s, memory-bound ops ([\d.]+) s\); "
        r"the step alone takes [\d.]+ s = ([\d.]+)x it",
        out,
    )
    bound, compute_bound, memory_bound, multiple = map(float, roofline.groups())
    assert abs(bound - compute_bound - memory_bound) < 0.002 and compute_bound > memory_bound  # convolutions dominate
    assert multiple > 0.5  # a bound the step cannot beat by much (cache-resident tensors beat DRAM bandwidth)
    assert re.search(r"^ +Conv2DBackpropInput +7 ops +41\.43 GFLOP .*\(compute-bound\)$", out, re.MULTILINE)
    assert re.search(
        r"per-epoch overhead: grid, MLflow and checkpoint [\d.]+ s, in-training scores [\d.]+ s; with scores "
        r"every 1 epoch\(s\) as configured = [\d.]+% of a \d+-step epoch",
        out,
    )
    assert re.fullmatch(
        r"speedup_vs_tutorial=\d+\.\d\d fraction_of_peak=\d+\.\d\d step_vs_roofline=\d+\.\d\d "
        r"precision=(fp32|mixed_bfloat16)",
        out.strip().splitlines()[-1],
    )


def test_precision_comparison_trains_both_and_prints_them_side_by_side(tmp_path):
    lines = run_benchmark(tmp_path, "quality.py", "precision", "--epochs", "2").strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "d_loss", "fp32"])
    rows = [[float(v) for v in line.split()] for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == [1, 2]
    for row in rows:
        d_loss_fp32, d_loss_auto = row[1], row[2]
        # Same seed and data order: bfloat16 rounds differently but trains the same model.
        assert abs(d_loss_fp32 - d_loss_auto) < 0.25
    assert re.fullmatch(r"median images/s: fp32 [\d.]+, auto [\d.]+ \([\d.]+x\)", lines[-1])


def test_floor_scores_real_noise_and_one_class(tmp_path):
    out = run_benchmark(tmp_path, "quality.py", "floor")
    scores = dict(re.findall(r"^(\S.*?) +(\{.*\})$", out, re.MULTILINE))
    assert list(scores) == ["real train vs real test", "uniform noise", "one class (3)"]
    real, noise, one_class = (json.loads(text) for text in scores.values())
    assert real["fid"] < 0.2 * noise["fid"] and real["precision"] > noise["precision"]
    assert one_class["modes_covered"] < real["modes_covered"]


def test_tutorial_loop_writes_its_scores_and_curve(tmp_path):
    files = ("--metrics", str(tmp_path / "tutorial.json"), "--grid", str(tmp_path / "grid.png"))
    out = run_benchmark(tmp_path, "quality.py", "tutorial", "--epochs", "2", *files)
    printed = json.loads(re.search(r"^tutorial loop, 2 epochs +(\{.*\})$", out, re.MULTILINE).group(1))
    written = json.loads((tmp_path / "tutorial.json").read_text())
    assert {key: round(written[key], 4) for key in printed} == printed
    assert [row["epoch"] for row in written["history"]] == [1, 2]
    assert written["history"][0]["training_seconds"] <= written["history"][1]["training_seconds"]
    assert min(iio.imread(tmp_path / "grid.png").shape[:2]) >= 8 * 28 * 3  # 8 x 8 samples, upscaled 3x


@pytest.mark.parametrize(
    ("script", "args", "error"),
    [
        ("quality.py", ["tutorial", "--metrics", "{tmp}/file/m.json"], "{tmp}/file: output folder is not writable"),
        ("time_to_quality.py", ["--plot", "{tmp}/file/curves.png"], "{tmp}/file: output folder is not writable"),
        ("time_to_quality.py", ["--recipe", "big=train.batch_size=-1"], "config key train.batch_size: must be at"),
        ("throughput.py", ["train.batch_size=-1"], "config key train.batch_size: must be at least 1"),
    ],
)
def test_benchmark_refuses_a_mistake_in_one_line_before_any_work(tmp_path, script, args, error):
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / script),
            *(arg.format(tmp=tmp_path) for arg in args),
            f"paths.prepared_dir={tmp_path}/prepared",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=own_tmpdir(tmp_path),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {error.format(tmp=tmp_path)}")
    # Refused before the data was prepared, and no work folder is left behind.
    assert not (tmp_path / "prepared").exists() and not list((tmp_path / "tmp").iterdir())


def test_time_to_quality_runs_both_for_the_same_minutes(tmp_path):
    out = run_benchmark(
        tmp_path,
        "time_to_quality.py",
        *("--target", "1000", "--stop-at-target", "--samples", "500", "--plot", str(tmp_path / "curves.png")),
        *("--recipe", "slope=model.leaky_slope=0.2 train.epochs=2", "debug=tiny", "train.epochs=3"),
    )
    assert re.search(r"^default epoch 1: [\d.]+ min of training \([\d.]+ min wall\), FID [\d.]+$", out, re.MULTILINE)
    assert "default epoch 2" not in out  # stopped once the target was reached
    assert re.search(r"^slope epoch 2: [\d.]+ min of training", out, re.MULTILINE)  # a recipe runs its length
    assert re.search(r"tutorial loop epoch 1: \d+ s of training, FID \(500 samples\) [\d.]+", out)
    assert re.fullmatch(
        r"minutes_to_target=[\d.]+ default_fid=[\d.]+ tutorial_best_fid_same_minutes=[\d.]+ samples=500 "
        r"precision=(fp32|mixed_bfloat16)",
        out.strip().splitlines()[-1],
    )
    assert iio.imread(tmp_path / "curves.png").shape[:2] == (420, 750)


def test_sweep_benchmark_times_the_three_launchers(tmp_path):
    out = run_benchmark(tmp_path, "sweeps.py", "launchers", "--jobs", "2")
    assert re.search(r"basic launcher, 2 jobs one after another: [\d.]+ s", out)
    assert re.search(r"ray launcher, 2-node loopback cluster: +[\d.]+ s", out)
    assert re.fullmatch(
        r"basic_s=[\d.]+ parallel_s=[\d.]+ ray_s=[\d.]+ speedup=[\d.]+ ray_speedup=[\d.]+", out.strip().splitlines()[-1]
    )


def test_search_benchmark_runs_with_and_without_pruning(tmp_path):
    out = run_benchmark(
        tmp_path, "sweeps.py", "search", "--trials", "1", "train.epochs=1"
    )  # the printout, not a search
    assert re.search(r"^pruned +[\d.]+ min  trials: .*best FID [\d.]+$", out, re.MULTILINE)
    assert re.fullmatch(
        r"pruned_minutes=[\d.]+ unpruned_minutes=[\d.]+ pruned_best_fid=[\d.]+ unpruned_best_fid=[\d.]+",
        out.strip().splitlines()[-1],
    )
