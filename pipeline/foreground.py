"""Where the object is, when a dataset gives no mask: an estimate from the image itself.

The method is *saliency optimisation from robust background detection* (Zhu, Liang, Wei and Sun, CVPR 2014) on
SLIC superpixels (Achanta et al. 2012, :func:`skimage.segmentation.slic`):

1. Superpixels ``p`` with their mean CIELAB colour; neighbours are superpixels that touch, and, as in the paper,
   every two superpixels on the image border are neighbours too. An edge weighs the colour distance
   ``d_app(p, q) = ||lab(p) - lab(q)||``; the geodesic distance ``d_geo`` is the shortest path over those weights.
2. Boundary connectivity: ``BndCon(p) = Len_bnd(p) / sqrt(Area(p))`` with ``Area(p) = sum_q exp(-d_geo(p, q)^2 /
   (2 sigma_clr^2))`` and ``Len_bnd(p)`` the same sum over the border superpixels ``q``; background regions touch the
   border along much of their extent, objects barely do. Background probability ``w_bg = 1 - exp(-BndCon^2 / 2)``.
3. Foreground cue: background-weighted contrast ``wCtr(p) = sum_q d_app(p, q) w_spa(p, q) w_bg(q)``, with
   ``w_spa = exp(-d_spa^2 / (2 * 0.25^2))`` on centroid distances in units of the image side.
4. Saliency ``s`` minimises ``sum_p w_bg(p) s_p^2 + sum_p w_fg(p) (1 - s_p)^2 + sum_(p,q touch) w_pq (s_p - s_q)^2``,
   ``w_fg = wCtr`` scaled to [0, 1], ``w_pq = exp(-d_app^2 / (2 sigma_clr^2)) + 0.1``: a linear system per image.

The mask is ``s > otsu(s)`` (Otsu 1979) over the image's pixels. Images of one flat colour have no foreground.

Only the superpixels are found image by image. Steps 1-4 run on chunks of images at once, as dense (chunk, n, n)
arrays over each image's superpixels padded to the chunk's largest count (a padding superpixel touches nothing and
gets saliency 0); the shortest paths are a Floyd-Warshall vectorised over the chunk. On the 2-core development
machine that takes about 0.4 ms per 32x32 image and 1.3 ms per photo (estimated at 48 px), of which SLIC takes 70%
and 40%. Measured against the Oxford-IIIT Pet trimaps by ``benchmarks/foreground_pets.py`` (figures in the README);
rows using the estimate say ``mask_kind = "estimated"``.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab
from skimage.segmentation import slic
from threadpoolctl import threadpool_limits

SIGMA_CLR = 10.0  # the paper's colour scale (CIELAB units)
SIGMA_SPA = 0.25  # spatial scale of the contrast, in units of the image side
MU = 0.1  # smoothness floor between touching superpixels
PIXELS_PER_SUPERPIXEL = 24  # asks SLIC for 42 superpixels at 32x32 (it makes about 30), 96 at 48x48 (about 83)
#: SLIC's k-means iterations (skimage's default is 10): on the Oxford-IIIT Pet benchmark, 3 give the same IoU and
#: background_attention error as 10 (within 0.005, at 48 and at 32 px), and SLIC is the largest cost left.
SLIC_ITERATIONS = 3
#: Larger images are estimated at this size and the mask upsampled: on the Oxford-IIIT Pet benchmark, IoU at 48 px
#: is 0.013 below IoU at 96 px, in a tenth of the time; at 40 px it is 0.01 lower again, at 32 px 0.04.
MAX_WORKING_SIZE = 48
#: Images whose graphs are solved together: the (chunk, n, n) arrays of about 100 superpixels stay in the CPU cache.
_CHUNK = 16
_OTSU_BINS = 256  # as skimage.filters.threshold_otsu


def _superpixels(images: np.ndarray) -> np.ndarray:
    """SLIC labels (N, H, W), from 0 in each image, of uint8 RGB images (N, H, W, 3)."""
    h, w = images.shape[1:3]
    n_segments = max(8, int(h * w / PIXELS_PER_SUPERPIXEL))
    return np.stack([slic(image, n_segments=n_segments, compactness=10, max_num_iter=SLIC_ITERATIONS,
                          start_label=0) for image in images])


def _geodesic_distances(weights: np.ndarray) -> np.ndarray:
    """All-pairs shortest path lengths (N, n, n) of N undirected graphs: ``weights[k, i, j]`` is the length of the
    edge i-j of graph k, ``inf`` where there is none.

    Floyd-Warshall, ``d_ij <- min(d_ij, d_ik + d_kj)`` for every k, vectorised over the graphs: with a hundred nodes
    and a clique on the border, much faster than Dijkstra from every node. Single precision: the distances only
    enter ``exp(-d^2 / (2 sigma_clr^2))``, and the saliency moves by less than 1e-7.
    """
    d = np.array(weights, dtype=np.float32)
    nodes = np.arange(d.shape[1])
    d[:, nodes, nodes] = 0.0
    for k in nodes:
        np.minimum(d, d[:, :, k, None] + d[:, None, k, :], out=d)
    return d


def _pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, n, n) between the points (N, n, c) of each row."""
    squared = np.zeros(points.shape[:2] + points.shape[1:2])
    for c in range(points.shape[2]):
        diff = points[:, :, None, c] - points[:, None, :, c]
        squared += diff * diff
    return np.sqrt(squared)


def _otsu_thresholds(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Otsu's threshold (N,) of each row of ``values`` (N, n), value ``j`` counted ``weights[:, j]`` times: the
    :func:`skimage.filters.threshold_otsu` of a row's pixels, on the same 256-bin histogram of the range of the
    values with a positive weight. The threshold is the centre of the bin that maximises the between-class
    variance ``w1 w2 (mean1 - mean2)^2``."""
    n_rows = len(values)
    counted = weights > 0
    low = np.where(counted, values, np.inf).min(axis=1, keepdims=True)
    high = np.where(counted, values, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    bins = np.clip(((values - low) / span * _OTSU_BINS).astype(np.int64), 0, _OTSU_BINS - 1)
    bins += _OTSU_BINS * np.arange(n_rows)[:, None]
    counts = np.bincount(bins.ravel(), weights.ravel(), minlength=n_rows * _OTSU_BINS)
    counts = counts.reshape(n_rows, _OTSU_BINS).astype(np.float32)
    edges = np.linspace(low[:, 0], high[:, 0], _OTSU_BINS + 1, axis=1)
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # only in rows of one value, which have no threshold
        mean1 = np.cumsum(counts * centres, axis=1) / weight1
        mean2 = (np.cumsum((counts * centres)[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
    variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    return centres[np.arange(n_rows), np.argmax(variance, axis=1)]


def _saliency_of_superpixels(images: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 on a chunk: the saliency (N, n) of each image's superpixels and their pixel counts (N, n), where
    n is the chunk's largest superpixel count and padding has count 0."""
    n_img, h, w = segments.shape
    n = int(segments.max()) + 1
    flat = (segments + n * np.arange(n_img)[:, None, None]).ravel()

    def per_superpixel(values: np.ndarray | None) -> np.ndarray:
        return np.bincount(flat, values, minlength=n_img * n).reshape(n_img, n)

    counts = per_superpixel(None)
    present = counts > 0
    size = np.maximum(counts, 1)[..., None]
    lab = rgb2lab(images).reshape(-1, 3)
    colour = np.stack([per_superpixel(lab[:, c]) for c in range(3)], axis=-1) / size
    rows, cols = np.divmod(np.arange(h * w), w)
    centre = np.stack([per_superpixel(np.tile(rows, n_img)), per_superpixel(np.tile(cols, n_img))], axis=-1)
    centre = centre / size / max(h, w)

    image_of = np.arange(n_img)[:, None]
    border = np.zeros((n_img, n), dtype=bool)
    for side in (segments[:, 0], segments[:, -1], segments[:, :, 0], segments[:, :, -1]):
        border[image_of, side] = True
    touching = np.zeros((n_img, n, n), dtype=bool)
    for a, b in ((segments[:, :, :-1], segments[:, :, 1:]), (segments[:, :-1], segments[:, 1:])):
        touching[image_of[:, :, None], a, b] = True
    touching |= touching.transpose(0, 2, 1)
    nodes = np.arange(n)
    touching[:, nodes, nodes] = False

    d_app = _pairwise_distances(colour)
    neighbours = touching | (border[:, :, None] & border[:, None, :])
    d_geo = _geodesic_distances(np.where(neighbours, d_app, np.inf))

    similarity = np.exp(-(d_geo.astype(np.float64) ** 2) / (2 * SIGMA_CLR**2))
    area = similarity.sum(axis=2)
    len_bnd = (similarity @ border[..., None].astype(np.float64))[..., 0]
    w_bg = np.where(present, 1.0 - np.exp(-((len_bnd / np.sqrt(area)) ** 2) / 2.0), 0.0)

    w_spa = np.exp(-(_pairwise_distances(centre) ** 2) / (2 * SIGMA_SPA**2))
    w_ctr = np.where(present, ((d_app * w_spa) @ w_bg[..., None])[..., 0], 0.0)
    top = w_ctr.max(axis=1, keepdims=True)
    w_fg = w_ctr / np.where(top > 0, top, 1.0)

    # The minimiser solves (diag(w_bg + w_fg) + L) s = w_fg, L the graph Laplacian of w_pq; padding solves s = 0.
    smooth = np.where(touching, np.exp(-(d_app**2) / (2 * SIGMA_CLR**2)) + MU, 0.0)
    system = -smooth
    system[:, nodes, nodes] = smooth.sum(axis=2) + w_bg + w_fg + np.where(present, 1e-9, 1.0)
    s = np.linalg.solve(system, w_fg[..., None])[..., 0]
    return np.clip(s, 0.0, 1.0), counts


def _superpixel_saliency(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SLIC labels (N, H, W), and the saliency (N, n) and pixel count (N, n) of each image's superpixels (count 0:
    padding). Images are solved in chunks of similar superpixel counts, so that little is padding."""
    segments = _superpixels(images)
    n = segments.reshape(len(segments), -1).max(axis=1) + 1
    s = np.zeros((len(images), n.max()))
    counts = np.zeros((len(images), n.max()), dtype=np.int64)
    order = np.argsort(n, kind="stable")
    for start in range(0, len(order), _CHUNK):
        chunk = order[start:start + _CHUNK]
        width = n[chunk].max()
        s[chunk, :width], counts[chunk, :width] = _saliency_of_superpixels(images[chunk], segments[chunk])
    return segments, s, counts


def _paint(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Per-pixel (N, H, W) values of per-superpixel ``values`` (N, n)."""
    return np.take_along_axis(values, segments.reshape(len(values), -1), axis=1).reshape(segments.shape)


def saliency(images: np.ndarray) -> np.ndarray:
    """Zhu et al.'s optimised saliency (N, H, W) in [0, 1] of uint8 RGB images (N, H, W, 3), at their size."""
    images = np.asarray(images, dtype=np.uint8)
    if len(images) == 0:
        return np.zeros(images.shape[:3])
    with threadpool_limits(1):
        segments, s, _ = _superpixel_saliency(images)
    return _paint(s, segments)


def estimate_foreground(images: np.ndarray) -> np.ndarray:
    """Boolean foreground masks (N, H, W) for uint8 RGB images (N, H, W, 3): ``saliency > otsu(saliency)``.

    Images larger than :data:`MAX_WORKING_SIZE` are estimated at that size (bilinear, antialiased) and their masks
    resized back. An image of one flat colour (no contrast anywhere) has no foreground (an all-False mask).
    """
    images = np.asarray(images, dtype=np.uint8)
    return full_size_masks(_masks(working_images(images)), images.shape[1:3])


def working_images(images: np.ndarray) -> np.ndarray:
    """uint8 ``images`` (N, H, W, 3) at the working size (:data:`MAX_WORKING_SIZE`), as :func:`estimate_foreground`
    resizes them: the estimate of these is the same, at that size (the audit sends them to worker processes, 48 px
    instead of the model's size). Made from the images' reduced copy (:func:`pipeline._decode.preview`, which may be
    given instead of the images)."""
    work = tuple(min(side, MAX_WORKING_SIZE) for side in images.shape[1:3])
    if work == images.shape[1:3] or not len(images):
        return images
    from ._decode import preview, resize  # TensorFlow: here, not on import (the estimate's workers never resize)

    reduced = preview(images)
    return reduced if work == reduced.shape[1:3] else resize(reduced, work)


def full_size_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Masks (N, h, w) at the working size, back at the images' ``size`` (as :func:`estimate_foreground` returns
    them)."""
    if masks.shape[1:3] == tuple(size) or not len(masks):
        return masks
    from ._decode import resize_masks

    return resize_masks(masks, size)


def _masks(small: np.ndarray) -> np.ndarray:
    """The foreground masks of images at the working size."""
    masks = np.zeros(small.shape[:3], dtype=bool)
    varied = np.flatnonzero(np.ptp(small.reshape(len(small), -1), axis=1) > 0)
    if len(varied):
        # Small dense solves: BLAS threads would only fight the other work of the process (TensorFlow's).
        with threadpool_limits(1):
            segments, s, counts = _superpixel_saliency(small[varied])
        counted = counts > 0
        contrast = np.where(counted, s, -np.inf).max(axis=1) - np.where(counted, s, np.inf).min(axis=1)
        threshold = np.where(contrast > 1e-6, _otsu_thresholds(s, counts), np.inf)
        masks[varied] = _paint(s > threshold[:, None], segments)
    return masks
