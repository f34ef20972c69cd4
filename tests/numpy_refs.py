"""NumPy pieces shared by the methods' reference implementations (tests/test_method_*.py)."""

import numpy as np


def np_sample(target: np.ndarray, size: tuple) -> np.ndarray:
    """Labels at the logit/feature centres: (i, j) sits at pixel (round(i (H-1)/(h-1)), round(j (W-1)/(w-1)))."""
    (big_h, big_w), (h, w) = target.shape[-2:], size
    rows = [int(np.round(i * (big_h - 1) / (h - 1))) for i in range(h)]
    cols = [int(np.round(j * (big_w - 1) / (w - 1))) for j in range(w)]
    return target[:, rows][:, :, cols]
