"""Feature-space quality metrics against closed forms, slow loop-based references and an
independent implementation (the ``prdc`` package of Naeem et al.)."""

import math

import numpy as np
import prdc
import pytest
from scipy import linalg

from dcgan.metrics import (
    classifier_score,
    density_coverage,
    frechet_distance,
    gaussian_stats,
    kernel_distance,
    knn_radii,
    mode_coverage,
    precision_recall,
    quality_metrics,
)

BATCH = 7  # smaller than every set below, so the row batching is exercised


@pytest.fixture(params=["gaussian", "lattice"])
def small_sets(request):
    """40 real and 35 fake 3-d points, each set with at least one exact duplicate pair.

    Lattice points have exact integer squared distances, so distances tie exactly with
    radii and the ``<=`` / ``<`` of each metric matters.
    """
    rng = np.random.default_rng(1)
    if request.param == "lattice":
        real = rng.integers(0, 4, size=(40, 3)).astype(float)
        fake = rng.integers(1, 5, size=(35, 3)).astype(float)
    else:
        real = rng.normal(size=(40, 3))
        fake = rng.normal(0.4, 1.3, size=(35, 3))
    real[17] = real[5]
    fake[20] = fake[3]
    return real, fake


def dist(a, b):
    return float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))


def slow_radii(points, k):
    return np.array([sorted(dist(p, q) for j, q in enumerate(points) if j != i)[k - 1] for i, p in enumerate(points)])


# --- FID ---------------------------------------------------------------------------------


def test_gaussian_stats_unbiased_covariance():
    mu, sigma = gaussian_stats(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], dtype=np.float32))
    np.testing.assert_allclose(mu, [2.0, 2.0])
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])
    assert sigma.dtype == np.float64


def test_fid_matches_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 0.0, -1.0, 1.5])
    sd1, sd2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 3.0])
    a = rng.normal(mu1, sd1, size=(20000, 4))
    b = rng.normal(mu2, sd2, size=(20000, 4))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)  # diagonal: (S1 S2)^1/2 = sd1 sd2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_matches_closed_form_correlated():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = m1 @ m1.T + 0.5 * np.eye(4), m2 @ m2.T + 0.5 * np.eye(4)
    mu1, mu2 = np.zeros(4), np.array([1.0, -1.0, 0.0, 2.0])
    a = rng.multivariate_normal(mu1, s1, size=20000)
    b = rng.multivariate_normal(mu2, s2, size=20000)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_of_fixed_points_is_the_hand_computed_value():
    # Real: the 4 unit points on the axes, mean 0, unbiased covariance (2/3) I. Fake: the same
    # scaled by 2 and shifted by (3, 4), so covariance (8/3) I and (S_r S_f)^1/2 = (4/3) I:
    # FID = 3^2 + 4^2 + 2 (2/3 + 8/3 - 2 * 4/3) = 25 + 4/3.
    real = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert frechet_distance(real, 2 * real + [3.0, 4.0]) == pytest.approx(25 + 4 / 3, rel=1e-12)


def test_fid_self_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(0.5, 2.0, size=(200, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    assert frechet_distance(a, b) > 1.0


@pytest.mark.filterwarnings("error::scipy.linalg.LinAlgWarning")
def test_fid_near_singular_covariance_is_finite_and_quiet():
    rng = np.random.default_rng(0)
    constant_column = np.c_[rng.normal(size=(100, 3)), np.ones(100)]
    assert math.isfinite(frechet_distance(constant_column, constant_column + 0.1))
    fewer_rows_than_dims = rng.normal(size=(5, 12)), rng.normal(size=(6, 12))
    assert math.isfinite(frechet_distance(*fewer_rows_than_dims))
    # Generated features with dead ReLU units: a singular product, still the exact value
    # (trace of the root from the eigenvalues of S_r^1/2 S_f S_r^1/2, a symmetric matrix).
    real = np.maximum(rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32)), 0)
    fake = np.maximum(rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32)), 0)
    fake[:, :10] = 0
    (mu_r, s_r), (mu_f, s_f) = gaussian_stats(real), gaussian_stats(fake)
    values, vectors = np.linalg.eigh(s_r)
    root_r = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_r @ s_f @ root_r), 0, None)).sum()
    exact = np.sum((mu_r - mu_f) ** 2) + np.trace(s_r) + np.trace(s_f) - 2 * trace_root
    assert frechet_distance(real, fake) == pytest.approx(exact, rel=1e-6)
    # Rank-deficient covariances whose product has no finite sqrtm: needs the eps * I retry.
    real = np.array([[-1, -2, 1, -1, 2, -1, 1], [-2, 0, -2, 1, -2, 1, 1]], dtype=float)
    fake = np.array(
        [
            [0, 1, 0, 2, 1, 2, -2],
            [-2, 1, 1, 1, 2, -1, 2],
            [0, -2, -1, 1, 1, 2, 2],
            [1, -1, 0, 0, -1, 2, 2],
            [0, -1, 0, 0, 1, 2, -2],
        ],
        dtype=float,
    )
    assert math.isfinite(frechet_distance(real, fake))


# --- KID ---------------------------------------------------------------------------------


def slow_mmd(x, y):
    d = len(x[0])
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_full_set_matches_slow_reference():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(30, 5)), rng.normal(0.3, 1.0, size=(30, 5))
    # One subset of the whole set: the draw order does not matter.
    got = kernel_distance(real, fake, subset_size=100, subsets=1, batch_size=BATCH)
    assert got == pytest.approx(slow_mmd(fake, real), rel=1e-10)


def test_kid_subsets_match_slow_reference():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(30, 5)), rng.normal(0.3, 1.0, size=(25, 5))
    draws = np.random.default_rng(7)  # fake subset drawn first, then real, per subset
    expected = np.mean(
        [
            slow_mmd(fake[draws.choice(25, 10, replace=False)], real[draws.choice(30, 10, replace=False)])
            for _ in range(4)
        ]
    )
    got = kernel_distance(real, fake, subset_size=10, subsets=4, seed=7, batch_size=BATCH)
    assert got == pytest.approx(expected, rel=1e-10)


def test_kid_self_is_small_relative_to_shift():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 8))
    # Not exactly 0: k(x_i, y_i) of the shared points stays in the cross term.
    same = kernel_distance(real, real, subset_size=200, subsets=1)
    shifted = kernel_distance(real, real + 1.0, subset_size=200, subsets=1)
    assert abs(same) < 0.02 * shifted


# --- k-NN based metrics ------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_knn_radii_match_slow_reference(small_sets, k):
    real, _ = small_sets
    radii = knn_radii(real, k, batch_size=BATCH)
    np.testing.assert_allclose(radii, slow_radii(real, k), rtol=1e-9, atol=1e-9)
    assert radii[5] == radii[17]
    if k == 1:  # the duplicate is the nearest other sample, not the point itself
        assert radii[5] == pytest.approx(0.0, abs=1e-7) and radii.min() == radii[5]


def test_precision_recall_match_slow_reference(small_sets):
    real, fake = small_sets
    r_real, r_fake = slow_radii(real, 3), slow_radii(fake, 3)
    precision = np.mean([any(dist(f, r) <= r_real[i] for i, r in enumerate(real)) for f in fake])
    recall = np.mean([any(dist(r, f) <= r_fake[j] for j, f in enumerate(fake)) for r in real])
    got = precision_recall(real, fake, k=3, batch_size=BATCH)
    assert got == {"precision": pytest.approx(precision), "recall": pytest.approx(recall)}
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a non-trivial check


def test_density_coverage_match_slow_reference(small_sets):
    real, fake = small_sets
    k = 5
    radii = slow_radii(real, k)
    density = sum(dist(f, r) < radii[i] for f in fake for i, r in enumerate(real)) / (k * len(fake))
    coverage = np.mean([min(dist(r, f) for f in fake) < radii[i] for i, r in enumerate(real)])
    got = density_coverage(real, fake, k=k, batch_size=BATCH)
    assert got == {"density": pytest.approx(density), "coverage": pytest.approx(coverage)}
    assert 0 < got["coverage"] < 1


@pytest.mark.parametrize("k", [3, 5])
def test_the_prdc_package_gives_the_same_four_figures(k, capsys):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(600, 64))
    # A shifted, wider part and a cluster far from the real data: every figure strictly in (0, 1).
    fake = np.concatenate([rng.normal(0.2, 1.1, size=(400, 64)), rng.normal(3.0, 0.5, size=(100, 64))])
    expected = prdc.compute_prdc(real, fake, nearest_k=k)
    got = {**precision_recall(real, fake, k=k, batch_size=128), **density_coverage(real, fake, k=k, batch_size=128)}
    assert got == pytest.approx({name: float(value) for name, value in expected.items()}, abs=1e-12)
    assert all(0 < got[name] < 1 for name in ("precision", "recall", "coverage")), got


def test_precision_recall_extremes():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(100, 4))
    assert precision_recall(real, real, batch_size=BATCH) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(real, real + 100.0, batch_size=BATCH) == {"precision": 0.0, "recall": 0.0}


def test_density_coverage_same_distribution():
    rng = np.random.default_rng(6)
    got = density_coverage(rng.normal(size=(500, 4)), rng.normal(size=(500, 4)))
    assert 0.8 < got["density"] < 1.2
    assert 0.8 < got["coverage"] <= 1.0
    far = density_coverage(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 100.0)
    assert far == {"density": 0.0, "coverage": 0.0}


# --- classifier score and modes ----------------------------------------------------------


def test_classifier_score():
    one_hot = np.eye(10)[np.repeat(np.arange(10), 5)]
    assert classifier_score(one_hot) == pytest.approx(10.0)
    assert classifier_score(np.tile(np.eye(10)[3], (50, 1))) == pytest.approx(1.0)
    assert classifier_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)


def test_mode_coverage():
    real = np.repeat(np.arange(10), 20)
    collapsed = mode_coverage(np.full(100, 3), real, 10)
    assert collapsed["modes_covered"] == 1
    assert collapsed["mode_kl"] == pytest.approx(math.log(10))
    assert collapsed["class_shares"] == [0.0] * 3 + [1.0] + [0.0] * 6
    assert collapsed["smallest_class_share"] == 0.0

    matching = mode_coverage(np.repeat(np.arange(10), 7), real, 10)
    assert matching["modes_covered"] == 10
    assert matching["mode_kl"] == pytest.approx(0.0, abs=1e-9)
    assert matching["smallest_class_share"] == pytest.approx(0.1)

    # A class the real set lacks: no new mode, and a finite but large divergence.
    missing = mode_coverage(np.r_[np.full(10, 9), np.repeat(np.arange(9), 5)], np.repeat(np.arange(9), 5), 10)
    assert missing["modes_covered"] == 9 and 4 < missing["mode_kl"] < math.inf
    assert missing["smallest_class_share"] == pytest.approx(5 / 55)  # class 9 (10 of 55) is not in the real set


def test_mode_coverage_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="out of range"):
        mode_coverage(np.array([0, 10]), np.array([0, 1]), 10)


# --- all together --------------------------------------------------------------------------


def test_quality_metrics_keys():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(50, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = quality_metrics(
        rng.normal(size=(60, 4)),
        rng.normal(size=(50, 4)),
        probs,
        rng.integers(0, 3, size=60),
        3,
        kid_subset_size=20,
        kid_subsets=3,
    )
    assert set(got) == {
        "fid",
        "kid",
        "classifier_score",
        "precision",
        "recall",
        "density",
        "coverage",
        "modes_covered",
        "mode_kl",
        "class_shares",
        "smallest_class_share",
    }
    assert all(type(v) is float for key, v in got.items() if key not in ("modes_covered", "class_shares"))
    assert isinstance(got["modes_covered"], int)
    assert len(got["class_shares"]) == 3 and sum(got["class_shares"]) == pytest.approx(1.0)
