"""Sample-quality diagnostics computed from a trained generator and discriminator."""

from __future__ import annotations

import numpy as np
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
