"""``train.precision=auto``: decided by measurement, cached per machine and TensorFlow version."""

import json

import pytest
import tensorflow as tf

from dcgan import files, precision


@pytest.fixture
def probed(monkeypatch, tmp_path):
    """A fresh cache in ``tmp_path``, a machine with bfloat16, and a probe whose figures the
    test sets; returns the list of policies probed."""
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(precision, "candidates", lambda: ["fp32", "mixed_bfloat16"])
    figures, calls = {}, []

    def fake_probe(policy):
        calls.append(policy)
        return figures[policy]

    monkeypatch.setattr(precision, "probe", fake_probe)
    precision.resolve_precision.cache_clear()
    yield figures, calls
    precision.resolve_precision.cache_clear()


@pytest.mark.parametrize(
    "fp32, bf16, expected",
    [(580.0, 340.0, "fp32"), (550.0, 1100.0, "mixed_bfloat16"), (550.0, 560.0, "fp32")],  # the last: within MARGIN
)
def test_auto_picks_the_faster_measured_precision(probed, fp32, bf16, expected):
    figures, calls = probed
    figures.update(fp32=fp32, mixed_bfloat16=bf16)
    chosen = precision.resolve_precision("auto")
    assert chosen.policy == expected and chosen.source == "measured"
    assert chosen.images_per_sec == {"fp32": fp32, "mixed_bfloat16": bf16}
    assert sorted(calls) == ["fp32", "mixed_bfloat16"]


def test_the_decision_is_cached_per_machine_and_tensorflow_version(probed, monkeypatch, tmp_path):
    figures, calls = probed
    figures.update(fp32=300.0, mixed_bfloat16=900.0)
    assert precision.resolve_precision("auto").policy == "mixed_bfloat16"
    cache = json.loads((tmp_path / "precision.json").read_text())
    assert list(cache) == [precision.machine_key()] and f"tensorflow {tf.__version__}" in precision.machine_key()

    # A hit: a new process (cleared memo) reads the file and probes nothing.
    precision.resolve_precision.cache_clear()
    calls.clear()
    figures.update(fp32=900.0, mixed_bfloat16=300.0)
    hit = precision.resolve_precision("auto")
    assert (hit.policy, hit.source, calls) == ("mixed_bfloat16", "cache", [])

    # Stale: another TensorFlow version is another key, measured again; the old entry stays.
    monkeypatch.setattr(tf, "__version__", "0.0.0")
    precision.resolve_precision.cache_clear()
    fresh = precision.resolve_precision("auto")
    assert (fresh.policy, fresh.source) == ("fp32", "measured") and len(calls) == 2
    assert len(json.loads((tmp_path / "precision.json").read_text())) == 2

    # A damaged cache file is a miss, not an error.
    (tmp_path / "precision.json").write_text("{oops")
    precision.resolve_precision.cache_clear()
    assert precision.resolve_precision("auto").source == "measured"


def test_explicit_precisions_are_not_measured(probed):
    _, calls = probed
    for name in ("fp32", "mixed_bfloat16", "mixed_float16"):
        assert precision.resolve_precision(name).policy == name
    assert calls == []


def test_the_real_probe_times_a_training_step_and_leaves_global_state_alone():
    import keras

    before = tf.random.uniform(()).numpy(), keras.mixed_precision.dtype_policy().name
    tf.random.set_seed(1)
    expected = tf.random.uniform(()).numpy()
    tf.random.set_seed(1)
    for policy in precision.candidates():
        assert precision.probe(policy) > 0
    assert tf.random.uniform(()).numpy() == expected  # the global random stream is untouched
    assert keras.mixed_precision.dtype_policy().name == before[1]
