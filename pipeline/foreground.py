"""Where the object is, when a dataset gives no mask: an estimate from the image itself.

The estimate here is the *border-contrast* heuristic: photographers and dataset curators centre the object, so the
image border is mostly background. A pixel is foreground when its CIELAB colour is far from the median colour of
the image's outer band, with the cut-off chosen per image by Otsu's method (Otsu 1979) on those distances.
It is cheap and fails on cluttered or object-touching-the-border images; rows using it say ``mask_kind = "estimated"``.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu

from .heatmaps import BORDER_FRACTION, border_band


def estimate_foreground(images: np.ndarray) -> np.ndarray:
    """Boolean foreground masks (N, H, W) for uint8 RGB images (N, H, W, 3).

    ``distance = ||lab(pixel) - median(lab(border band))||``, foreground where ``distance > otsu(distance)``.
    An image of one flat colour has no foreground (an all-False mask).
    """
    lab = rgb2lab(np.asarray(images, dtype=np.uint8)).astype(np.float32)
    band = border_band(*images.shape[1:3], BORDER_FRACTION)
    reference = np.median(lab[:, band, :], axis=1)
    distance = np.linalg.norm(lab - reference[:, None, None, :], axis=-1)
    masks = np.zeros(distance.shape, dtype=bool)
    for i, d in enumerate(distance):
        if np.ptp(d) > 1e-6:
            masks[i] = d > threshold_otsu(d)
    return masks
