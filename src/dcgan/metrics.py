"""Sample-quality diagnostics: discriminator and pixel-space checks, and feature-space metrics."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.spatial.distance import pdist
from scipy.special import expit


def discriminator_scores(real_logits: np.ndarray, fake_logits: np.ndarray) -> dict[str, float]:
    """How well the final discriminator separates held-out real images from new samples.

    ``d_real``/``d_fake`` are its mean probabilities of "real"; ``d_accuracy`` is its
    accuracy at threshold 0.5 on a balanced set, 0.5 meaning it cannot tell them apart.
    """
    real_p = expit(np.asarray(real_logits, np.float64).ravel())
    fake_p = expit(np.asarray(fake_logits, np.float64).ravel())
    correct = np.count_nonzero(real_p > 0.5) + np.count_nonzero(fake_p <= 0.5)
    return {
        "d_real": float(real_p.mean()),
        "d_fake": float(fake_p.mean()),
        "d_accuracy": float(correct / (real_p.size + fake_p.size)),
    }


def diversity_ratio(real: np.ndarray, fake: np.ndarray) -> float:
    """Mean pairwise L2 distance among generated images over that among real ones.

    About 1 when samples vary as much as the data; near 0 under mode collapse.
    """

    def spread(images: np.ndarray) -> float:
        return float(pdist(images.reshape(len(images), -1).astype(np.float64)).mean())

    return spread(fake) / spread(real)


# Sample-quality metrics in a feature space (penultimate-layer activations of a domain
# classifier). Pairwise work is done in row batches so that 10k x 10k matrices are never held.

_EPS = 1e-12  # keeps log(0) finite in the classifier score and mode KL


def _float64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _gram_blocks(a: np.ndarray, b: np.ndarray, batch_size: int):
    """Yield ``(rows, a[rows] @ b.T)`` over row batches of ``a``."""
    for start in range(0, len(a), batch_size):
        rows = slice(start, start + batch_size)
        yield rows, a[rows] @ b.T


def _distance_blocks(a: np.ndarray, b: np.ndarray, batch_size: int):
    """Yield ``(rows, D)`` with ``D[i, j] = ||a[rows][i] - b[j]||`` over row batches of ``a``.

    Uses ||a||^2 + ||b||^2 - 2 a.b; rounding can make that slightly negative, hence the clip.
    """
    a_sq, b_sq = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    for rows, sq in _gram_blocks(a, b, batch_size):
        sq *= -2.0  # in place, so each batch needs a single block-sized buffer
        sq += a_sq[rows, None]
        sq += b_sq
        yield rows, np.sqrt(np.maximum(sq, 0.0, out=sq), out=sq)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of ``features`` (n, d), in float64."""
    features = _float64(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(real: np.ndarray, fake: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID).

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})

    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
    Nash Equilibrium". As in the TTUR / pytorch-fid reference code, a non-finite matrix
    square root (singular product) is retried with ``eps * I`` added to both covariances,
    and the imaginary part that rounding leaves in it is dropped (ValueError if it is large).
    """
    mu_r, sigma_r = gaussian_stats(real)
    mu_f, sigma_f = gaussian_stats(fake)
    # Dead ReLU units in generated features make the product singular, and scipy warns on
    # every such call; its finite results still matched the exact trace (via eigenvalues of
    # S_r^1/2 S_f S_r^1/2) to 1e-8 relative, so the warning is silenced and only a
    # non-finite root is retried.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(sigma_r @ sigma_f)
        except np.linalg.LinAlgError:  # scipy gives up on some singular products instead of returning inf
            covmean = np.full_like(sigma_r, np.inf)
        if not np.isfinite(covmean).all():
            offset = eps * np.eye(len(sigma_r))
            covmean = linalg.sqrtm((sigma_r + offset) @ (sigma_f + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3:
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    diff = mu_r - mu_f
    return float(diff @ diff + np.trace(sigma_r) + np.trace(sigma_f) - 2.0 * np.trace(covmean))


def kernel_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
    batch_size: int = 1000,
) -> float:
    """Kernel distance (KID): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3.

    For subsets X (fake) and Y (real) of size m = min(subset_size, n_real, n_fake), drawn
    without replacement,
        MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
                - 2 sum_{i,j} k(x_i, y_j) / m^2,
    averaged over ``subsets`` subsets drawn by ``np.random.default_rng(seed)``.

    Binkowski et al. 2018, "Demystifying MMD GANs".
    """
    real, fake = _float64(real), _float64(fake)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("kernel_distance needs at least 2 samples in each set")
    d = real.shape[1]

    def kernel_sum(a: np.ndarray, b: np.ndarray) -> float:
        total = 0.0
        for _, gram in _gram_blocks(a, b, batch_size):
            base = gram / d + 1.0
            total += float(np.einsum("ij,ij,ij->", base, base, base))  # sums the cubes without storing them
        return total

    def within(x: np.ndarray) -> float:  # the unbiased estimate leaves out k(x_i, x_i)
        trace = ((np.einsum("ij,ij->i", x, x) / d + 1.0) ** 3).sum()
        return (kernel_sum(x, x) - trace) / (m * (m - 1))

    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        total += within(x) + within(y) - 2.0 * kernel_sum(x, y) / m**2
    return float(total / subsets)


def classifier_score(probs: np.ndarray) -> float:
    """Inception Score computed with a domain classifier's softmax outputs (n, classes).

    score = exp(mean_x KL(p(y|x) || p(y))),  p(y) = mean_x p(y|x);
    between 1 and the number of classes, higher meaning confident and varied predictions.

    Salimans et al. 2016, "Improved Techniques for Training GANs".
    """
    probs = _float64(probs)
    marginal = probs.mean(axis=0)
    kl = (probs * (np.log(probs + _EPS) - np.log(marginal + _EPS))).sum(axis=1)
    return float(np.exp(kl.mean()))


def knn_radii(features: np.ndarray, k: int, batch_size: int = 1000) -> np.ndarray:
    """Distance from each row to its k-th nearest other row of ``features``.

    As in the reference implementations, this is the (k+1)-th smallest distance including
    the zero self-distance, so an exact duplicate counts as a neighbour at distance 0.
    """
    features = _float64(features)
    radii = np.empty(len(features))
    for rows, dist in _distance_blocks(features, features, batch_size):
        radii[rows] = np.partition(dist, k, axis=1)[:, k]
    return radii


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 1000) -> dict[str, float]:
    """Improved precision and recall of the fake set against the real one.

    precision = (1/M) sum_j 1[exists i: ||f_j - r_i|| <= NND_k(r_i)]
    recall    = (1/N) sum_i 1[exists j: ||r_i - f_j|| <= NND_k(f_j)]
    with NND_k the k-NN radius within a sample's own set (``knn_radii``).

    Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
    Generative Models".
    """
    real, fake = _float64(real), _float64(fake)
    real_radii, fake_radii = knn_radii(real, k, batch_size), knn_radii(fake, k, batch_size)
    fake_covered = np.zeros(len(fake), dtype=bool)
    real_covered = np.empty(len(real), dtype=bool)
    for rows, dist in _distance_blocks(real, fake, batch_size):
        fake_covered |= (dist <= real_radii[rows, None]).any(axis=0)
        real_covered[rows] = (dist <= fake_radii).any(axis=1)
    return {"precision": float(fake_covered.mean()), "recall": float(real_covered.mean())}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, batch_size: int = 1000) -> dict[str, float]:
    """Density and coverage of the fake set against the real one (radii from real only).

    density  = 1/(k M) sum_j sum_i 1[||f_j - r_i|| < NND_k(r_i)]
    coverage = 1/N sum_i 1[min_j ||r_i - f_j|| < NND_k(r_i)]
    with the strict ``<`` of the reference ``prdc`` code.

    Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models".
    """
    real, fake = _float64(real), _float64(fake)
    radii = knn_radii(real, k, batch_size)
    inside = 0
    covered = 0
    for rows, dist in _distance_blocks(real, fake, batch_size):
        inside += np.count_nonzero(dist < radii[rows, None])
        covered += np.count_nonzero(dist.min(axis=1) < radii[rows])
    return {"density": float(inside / (k * len(fake))), "coverage": float(covered / len(real))}


def _class_shares(classes: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(classes).ravel(), minlength=num_classes)
    if len(counts) > num_classes:
        raise ValueError(f"class index {len(counts) - 1} out of range for {num_classes} classes")
    return counts / counts.sum()


def mode_coverage(fake_classes: np.ndarray, real_classes: np.ndarray, num_classes: int) -> dict:
    """How the fake samples spread over the classes, compared with the real ones.

    ``modes_covered``: classes present among the real samples whose fake share is at least
    half their real share. ``mode_kl``: KL(p_fake || p_real) = sum_c p_fake(c) log(p_fake(c)
    / p_real(c)) over the class histograms, with a small epsilon so a class missing from the
    real set stays finite. ``class_shares``: the fake share of each class;
    ``smallest_class_share``: the smallest of them among the classes the real set has.
    """
    fake_shares = _class_shares(fake_classes, num_classes)
    real_shares = _class_shares(real_classes, num_classes)
    covered = (real_shares > 0) & (fake_shares >= 0.5 * real_shares)
    kl = (fake_shares * (np.log(fake_shares + _EPS) - np.log(real_shares + _EPS))).sum()
    return {
        "modes_covered": int(np.count_nonzero(covered)),
        "mode_kl": float(kl),
        "class_shares": fake_shares.tolist(),
        "smallest_class_share": float(fake_shares[real_shares > 0].min()),
    }


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    features = _float64(features)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), _EPS)


def quality_metrics(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    fake_probs: np.ndarray,
    real_classes: np.ndarray,
    num_classes: int,
    *,
    k_precision: int = 3,
    k_density: int = 5,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """All the feature-space quality metrics above, for one set of generated samples.

    Keys: fid, kid, classifier_score, precision, recall, density, coverage, modes_covered,
    mode_kl, class_shares, smallest_class_share. Fake classes are the argmax of ``fake_probs``.

    FID and KID use the features as they are. The k-NN metrics use them scaled to unit
    length: in raw ReLU activations the k-NN radii of a few large-norm real outliers
    swallowed whole sets of noise images (uniform noise scored precision 0.999 on MNIST;
    0.02 after normalising), while real-vs-real values barely moved (0.84 -> 0.85).
    """
    real_unit, fake_unit = unit_rows(real_features), unit_rows(fake_features)
    return {
        "fid": frechet_distance(real_features, fake_features),
        "kid": kernel_distance(real_features, fake_features, kid_subset_size, kid_subsets, seed, batch_size),
        "classifier_score": classifier_score(fake_probs),
        **precision_recall(real_unit, fake_unit, k_precision, batch_size),
        **density_coverage(real_unit, fake_unit, k_density, batch_size),
        **mode_coverage(np.argmax(fake_probs, axis=1), real_classes, num_classes),
    }
