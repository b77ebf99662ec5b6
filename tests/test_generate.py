"""src/generate.py: images from a trained generator given as a file, a run id or the
registry's champion, the same for the same seeds; its user errors are one line each. And
the champion served over HTTP by `mlflow models serve`."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config, free_port, last_line_error, run_stage, venv_env
from PIL import Image

from dcgan.commands.generate import latent_vectors
from dcgan.config import GenerateConfig
from dcgan.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder where the tiny profile was trained and evaluated (so registered): its run id."""
    workdir = tmp_path_factory.mktemp("trained")
    for stage in ("prepare", "train", "evaluate"):
        run_stage(stage, *TINY, "data.limit=128", "evaluate.num_samples=200", cwd=workdir)
    return workdir


def test_a_seed_always_gives_the_same_latent_and_truncation_bounds_it():
    alone, _ = latent_vectors(GenerateConfig(seeds=[6]), 100)
    among, names = latent_vectors(GenerateConfig(seeds=[5, 6]), 100)
    assert np.array_equal(alone[0], among[1]) and names == ["seed_5", "seed_6"]
    counted, _ = latent_vectors(GenerateConfig(num_images=3, seed=5), 100)
    assert np.array_equal(counted[:2], among)
    truncated, _ = latent_vectors(GenerateConfig(seeds=[6], truncation=0.5), 100)
    assert np.abs(truncated).max() <= 0.5 and np.abs(alone).max() > 0.5


@pytest.mark.slow
def test_the_file_the_run_and_the_champion_give_the_same_images(trained):
    run_id = json.loads((trained / "models/run.json").read_text())["mlflow_run_id"]
    common = [*TINY, "generate.seeds=[1,2,3,4]", "generate.npy=true"]
    run_stage(
        "generate",
        *common,
        "generate.png=true",
        "generate.interpolation_steps=4",
        "generate.out_dir=from_file",
        cwd=trained,
    )
    run_stage("generate", *common, f"generate.model={run_id}", "generate.out_dir=from_run", cwd=trained)
    run_stage(
        "generate",
        *common,
        "generate.model=models:/dcgan-mnist@champion",
        "generate.out_dir=from_registry",
        cwd=trained,
    )
    images = [np.load(trained / folder / "images.npy") for folder in ("from_file", "from_run", "from_registry")]
    assert images[0].shape == (4, 28, 28, 1) and images[0].dtype == np.uint8
    assert all(np.array_equal(images[0], other) for other in images[1:])
    assert sorted(p.name for p in (trained / "from_file").iterdir()) == [
        "grid.png",
        "images.npy",
        "interpolation.gif",
        "seed_1.png",
        "seed_2.png",
        "seed_3.png",
        "seed_4.png",
    ]
    assert np.array_equal(np.asarray(Image.open(trained / "from_file/seed_3.png")), images[0][2, ..., 0])
    with Image.open(trained / "from_file/interpolation.gif") as gif:
        assert gif.n_frames == 4 * 4  # four legs of a loop through four latents


@pytest.mark.slow
def test_user_errors_are_one_line_and_write_nothing(trained, tmp_path, mount_tmpfs):
    np.save(tmp_path / "small.npy", np.zeros((2, 10), np.float32))
    mount_tmpfs("readonly", "ro,size=1m")
    cases = {
        "generate.model=models:/dcgan-nope@champion": "error: generate.model=models:/dcgan-nope@champion: "
        "cannot load it from ",
        f"generate.latents={tmp_path / 'small.npy'}": f"error: generate.latents={tmp_path / 'small.npy'}: shape "
        "(2, 10), the generator takes (N, 100)",
        "generate.model=models/discriminator.keras": "error: generate.model=models/discriminator.keras: not a "
        "generator (takes (None, 28, 28, 1), gives (None, 1))",
        f"generate.out_dir={tmp_path / 'readonly/out'}": f"error: {tmp_path / 'readonly/out'}: output folder is "
        "not writable (Read-only file system)",
    }
    for override, expected in cases.items():
        result = run_stage(
            "generate",
            *TINY,
            override,
            f"generate.out_dir={tmp_path / 'out'}" if "out_dir" not in override else override,
            cwd=trained,
            check=False,
        )
        assert last_line_error(result).startswith(expected), override
    assert not (tmp_path / "out").exists()

    # A disk that fills up half-way: none of the set lands, no temp folder is left.
    full = mount_tmpfs("full", "size=64k")
    result = run_stage(
        "generate",
        *TINY,
        "generate.num_images=64",
        "generate.png=true",
        "generate.npy=true",
        f"generate.out_dir={full / 'out'}",
        cwd=trained,
        check=False,
    )
    error = last_line_error(result)
    assert error.startswith(f"error: {full}/") and error.endswith("No space left on device"), error
    assert [path.name for path in full.iterdir()] == ["out"] and not any((full / "out").iterdir())


def test_nothing_to_write_is_a_config_error():
    with pytest.raises(UserError, match="generate: nothing to write"):
        compose_config(["generate.grid=false"])


@pytest.mark.slow
def test_mlflow_serves_the_champion(trained):
    """`mlflow models serve` of models:/dcgan-mnist@champion on loopback: noise in, images out."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        "models:/dcgan-mnist@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{trained / 'mlflow.db'}")
    server = subprocess.Popen(
        command, cwd=trained, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the model server did not answer /ping within 3 minutes"
                time.sleep(1)
        noise = np.random.default_rng(0).standard_normal((3, 100)).round(4).tolist()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": noise}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            images = np.asarray(json.loads(response.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert images.shape == (3, 28, 28, 1) and -1.0 <= images.min() < images.max() <= 1.0
