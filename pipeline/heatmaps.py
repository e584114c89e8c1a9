"""Statistics of Grad-CAM heatmaps, vectorised over a batch.

Every function takes heatmaps as *mass distributions*: an array ``mass`` of shape (N, H, W), non-negative, each map
summing to 1 (see :func:`to_mass`). A map that could not be normalised (all zero, or non-finite) is a row of NaN,
and every statistic of it is NaN; callers record it through the ``valid`` flag of :func:`to_mass`.

Region statistics are *focus ratios*: the mass inside a region divided by the region's share of the image area, so
1.0 means no preference for the region, above 1 means the heatmap is drawn to it, and the maximum, ``1 / share``,
means all the mass sits inside it.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.special import xlogy
from skimage.measure import label as label_regions

#: Width of the border band as a fraction of the shorter side (4 px on a 32 px image).
BORDER_FRACTION = 0.125
#: Side of each corner square as a fraction of the image side (8 px on a 32 px image).
CORNER_FRACTION = 0.25
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
#: A map's hot spot: where it is at least this fraction of its peak (the half-maximum contour).
HOT_SPOT_LEVEL = 0.5


def to_mass(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise raw non-negative heatmaps (N, H, W) to sum 1 each.

    Returns
    -------
    mass : float32 (N, H, W); rows whose sum is zero or not finite are NaN.
    valid : bool (N,); False for those rows.
    """
    cams = np.asarray(cams)
    if cams.dtype != np.float32:
        cams = cams.astype(np.float64)
    # A NaN or infinite value anywhere makes the float64 total non-finite, so one test covers every value.
    total = cams.sum(axis=(1, 2), dtype=np.float64)
    valid = np.isfinite(total) & (total > 0)
    scale = np.where(valid, 1.0 / np.where(valid, total, 1.0), np.nan).astype(cams.dtype)
    mass = np.maximum(cams, 0)
    mass *= scale[:, None, None]
    return mass.astype(np.float32, copy=False), valid


def _interpolation_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of 1-D linear interpolation with pixel centres aligned: target pixel ``i`` samples
    the source at ``x = (i + 0.5) * source / target - 0.5``, clamped to [0, source - 1]."""
    x = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(x).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((target, source), dtype=np.float64)
    np.add.at(weights, (np.arange(target), low), 1.0 - (x - low))
    np.add.at(weights, (np.arange(target), high), x - low)
    return weights


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of maps (N, h, w) to ``size`` (H, W), pixel centres aligned; float32.

    Output pixel (i, j) is the linear interpolation of the input at ``((i + 0.5) h / H - 0.5, (j + 0.5) w / W - 0.5)``,
    clamped to the edge pixels (the convention of ``tf.image.resize(method="bilinear")`` and of OpenCV). Separable,
    so it is two small matrix products: ``R @ cam @ C.T``.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape[1:] == tuple(size):
        return cams
    rows = _interpolation_matrix(cams.shape[1], size[0])
    cols = _interpolation_matrix(cams.shape[2], size[1])
    return (rows.astype(np.float32) @ cams) @ cols.T.astype(np.float32)


def border_band(height: int, width: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Boolean (H, W) mask of the outer band, ``max(1, round(fraction * min(H, W)))`` pixels wide."""
    k = max(1, int(round(fraction * min(height, width))))
    band = np.ones((height, width), dtype=bool)
    band[k : height - k, k : width - k] = False
    return band


def corner_regions(height: int, width: int, fraction: float = CORNER_FRACTION) -> np.ndarray:
    """Boolean (4, H, W) masks of the corner squares in :data:`CORNERS` order, each ``fraction`` of a side."""
    kh, kw = max(1, int(round(fraction * height))), max(1, int(round(fraction * width)))
    regions = np.zeros((4, height, width), dtype=bool)
    regions[0, :kh, :kw] = True
    regions[1, :kh, width - kw :] = True
    regions[2, height - kh :, :kw] = True
    regions[3, height - kh :, width - kw :] = True
    return regions


def region_focus(mass: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mass inside ``region`` (H, W) divided by the region's area share.

    ``focus = sum(mass[region]) / (|region| / (H * W))``; range [0, H * W / |region|], 1 = no preference.
    """
    share = region.mean()
    return mass.reshape(len(mass), -1) @ region.ravel().astype(mass.dtype) / share


def focus_on_regions(cams: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Focus ratio of raw heatmaps (N, h, w), upsampled to the regions' size, on each of K regions (K, H, W).

    Equal to :func:`region_focus` of ``to_mass(upsample(cams, (H, W)))`` on each region, computed at the heatmaps'
    own resolution: upsampling is linear, ``U(cam) = R cam C^T`` (:func:`upsample`), so the mass of ``U(cam)`` in
    region ``S`` is ``sum(cam * R^T S C)``, and

    ``focus_nk = sum(cam_n * R^T S_k C) / sum(cam_n * R^T 1 C) / share_k``, with ``share_k = |S_k| / (H W)``.

    Range [0, 1 / share_k]; NaN for an empty or non-finite heatmap and for an empty region.
    """
    cams = np.asarray(cams, dtype=np.float64)
    regions = np.asarray(regions, dtype=np.float64)
    rows = _interpolation_matrix(cams.shape[1], regions.shape[1])
    cols = _interpolation_matrix(cams.shape[2], regions.shape[2])
    pulled = np.einsum("Hh,kHW,Ww->khw", rows, regions, cols)
    weights = rows.sum(axis=0)[:, None] * cols.sum(axis=0)[None, :]
    total = np.einsum("nhw,hw->n", cams, weights)
    valid = np.isfinite(total) & (total > 0)
    inside = np.einsum("nhw,khw->nk", np.where(valid[:, None, None], cams, 0.0), pulled)
    share = regions.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        focus = inside / np.where(valid, total, 1.0)[:, None] / share[None, :]
    return np.where(valid[:, None] & (share > 0)[None, :], focus, np.nan)


def hot_spot(heat: np.ndarray, level: float = HOT_SPOT_LEVEL) -> np.ndarray:
    """The hot spot of one map (H, W): the connected region (8-connectivity) around its peak where it is at least
    ``level`` times the peak; boolean (H, W), empty when the map has no positive value."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64))
    top = heat.max()
    if top <= 0:
        return np.zeros(heat.shape, dtype=bool)
    regions = label_regions(heat >= level * top, connectivity=2)
    return regions == regions.flat[int(np.argmax(heat))]


#: Side of the grid on which :func:`window_masses` slides its windows: 16 cells, 2 px of a 32 px image.
WINDOW_GRID = 16


def window_side(share: float, grid: int = WINDOW_GRID) -> int:
    """Side, in cells of the ``grid``, of a square window covering about ``share`` of the image (at least a cell)."""
    return int(np.clip(round(grid * np.sqrt(share)), 1, grid))


def window_masses(mass: np.ndarray, side: int, grid: int = WINDOW_GRID) -> np.ndarray:
    """The mass of each map (N, h, w) inside every ``side`` x ``side`` window of a ``grid`` x ``grid`` resampling of
    it, at stride one cell: (N, P, P) with ``P = grid - side + 1``. Maps are resampled by :func:`upsample` (areas,
    not pixels: a window of side ``s`` covers ``(s / grid)^2`` of the image whatever its size) and renormalised; a
    NaN map gives NaN."""
    up = upsample(np.nan_to_num(mass), (grid, grid)).astype(np.float64)
    total = up.sum(axis=(1, 2), keepdims=True)
    up = np.where(total > 0, up / np.where(total > 0, total, 1.0), np.nan)
    c = np.pad(up.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    return c[:, side:, side:] - c[:, :-side, side:] - c[:, side:, :-side] + c[:, :-side, :-side]


def window_region(row: int, col: int, side: int, size: tuple[int, int], grid: int = WINDOW_GRID) -> np.ndarray:
    """The window at (``row``, ``col``) of :func:`window_masses` as a boolean (H, W) mask at ``size``: the pixels
    whose centres fall inside it."""
    h, w = size
    rows = (np.arange(h) + 0.5) * grid / h
    cols = (np.arange(w) + 0.5) * grid / w
    return ((rows >= row) & (rows < row + side))[:, None] & ((cols >= col) & (cols < col + side))[None, :]


def grown(region: np.ndarray, cells: int = 1, grid: int = WINDOW_GRID) -> np.ndarray:
    """``region`` (H, W bool) grown by ``cells`` cells of the ``grid`` x ``grid`` window grid in every direction
    (a square dilation, the image's edges kept)."""
    h, w = region.shape
    rows, cols = int(np.ceil(cells * h / grid)), int(np.ceil(cells * w / grid))
    return binary_dilation(region, structure=np.ones((2 * rows + 1, 2 * cols + 1), dtype=bool))


def border_focus(mass: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """Border focus: heatmap mass in the outer band over the band's area share (see :func:`region_focus`).

    With the default 4 px band on 32 px images the band covers 43.75% of the area, so the range is [0, 2.29].
    """
    return region_focus(mass, border_band(*mass.shape[1:], fraction))


def corner_focus_each(mass: np.ndarray, fraction: float = CORNER_FRACTION) -> np.ndarray:
    """Focus ratio of each corner square, (N, 4) in :data:`CORNERS` order (see :func:`region_focus`).

    ``focus_c = sum(mass[corner_c]) / share_c``; range [0, 1 / fraction**2] (16 by default).
    """
    regions = corner_regions(*mass.shape[1:], fraction)
    inside = mass.reshape(len(mass), -1) @ regions.reshape(len(regions), -1).T.astype(mass.dtype)
    return inside / regions.mean(axis=(1, 2))


def corner_focus(mass: np.ndarray, fraction: float = CORNER_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Corner focus: the largest of the four corners' focus ratios, and which corner it is.

    ``corner_focus = max_c sum(mass[corner_c]) / share_c``; range [0, 1 / fraction**2] (16 by default).

    Returns
    -------
    focus : float (N,)
    corner : int (N,), an index into :data:`CORNERS`.
    """
    return _largest_corner(corner_focus_each(mass, fraction))


def _largest_corner(per_corner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corner = np.nanargmax(np.where(np.isnan(per_corner), -np.inf, per_corner), axis=1)
    return per_corner.max(axis=1), corner


def peak(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak location (row, column) of each map: the pixel of largest mass (the first in row-major order on ties),
    as fractions of the height and width at pixel centres; range (0, 1), NaN for an invalid map."""
    n, h, w = mass.shape
    flat = mass.reshape(n, -1).argmax(axis=1)  # stops at a NaN, but a map with one is invalid anyway
    valid = np.isfinite(mass).all(axis=(1, 2))
    rows, cols = np.divmod(flat, w)
    return np.where(valid, (rows + 0.5) / h, np.nan), np.where(valid, (cols + 0.5) / w, np.nan)


def background_attention(mass: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Background attention: the heatmap mass outside the object, ``sum(mass[~foreground])``; range [0, 1].

    ``foreground`` is a boolean (N, H, W) mask at the heatmaps' resolution, True on the object.
    """
    return _background(mass, foreground)[0]


def background_focus(mass: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Focus ratio on the background: :func:`background_attention` over the background's share of the image, so 1.0
    means no preference, as for the other regions; NaN for an image without background (all object)."""
    return _background(mass, foreground)[1]


def _background(mass: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`background_attention` and :func:`background_focus`, from one pass over the maps."""
    background = ~np.asarray(foreground, dtype=bool)
    attention = (mass * background).sum(axis=(1, 2))
    share = background.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return attention, np.where(share > 0, attention / share, np.nan)


def concentration(mass: np.ndarray) -> np.ndarray:
    """Concentration: one minus the normalised Shannon entropy of the map.

    ``1 - H(mass) / log(H * W)`` with ``H(p) = -sum p log p``; range [0, 1]: 0 for a uniform map, 1 for all the
    mass on one pixel.
    """
    entropy = -xlogy(mass, mass).sum(axis=(1, 2))  # 0 log 0 = 0
    return 1.0 - entropy / np.log(mass.shape[1] * mass.shape[2])


def centre_of_mass(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (row, column) as fractions of the height and width of pixel centres; range [0, 1]."""
    h, w = mass.shape[1:]
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    return mass.sum(axis=2) @ rows, mass.sum(axis=1) @ cols


def summarise(mass: np.ndarray, foreground: np.ndarray) -> dict[str, np.ndarray]:
    """All per-sample statistics of a batch, as columns for the samples table."""
    each = corner_focus_each(mass)
    corner, which = _largest_corner(each)
    com_row, com_col = centre_of_mass(mass)
    peak_row, peak_col = peak(mass)
    attention, background = _background(mass, foreground)
    return {
        "border_focus": border_focus(mass),
        "corner_focus": corner,
        "focus_corner": np.where(np.isnan(corner), "", np.asarray(CORNERS)[which]),
        **{"corner_focus_" + name.replace("-", "_"): each[:, c] for c, name in enumerate(CORNERS)},
        "background_attention": attention,
        "background_focus": background,
        "concentration": concentration(mass),
        "com_row": com_row,
        "com_col": com_col,
        "peak_row": peak_row,
        "peak_col": peak_col,
    }
