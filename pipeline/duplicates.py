"""Duplicate samples, within a split or leaking across splits.

Two kinds of pair are reported:

- ``exact``: the two images have identical pixels, i.e. the same :func:`pixel_digests` digest (a hash of the uint8
  pixels and the image shape). Their similarity is recorded as 1.0.
- ``near``: not exact twins, but the same photograph shifted, cropped, rescaled, mirrored, slightly recoloured or
  re-encoded. They are found from the pixels alone (32x32 thumbnails), not from the audited model: a classifier's
  embedding is made to tell classes apart, not pictures, and pairs different images of one class. A nearest-neighbour
  index (faiss) over blurred 8x8 grey thumbnails proposes a few candidates per image; a candidate pair is near when
  the details of the central window of one image, aligned over small scales, mirrorings and shifts, correlate with
  the other's, and their coarse colour layouts agree (:func:`find_duplicates`). Each sample has at most a few
  partners, so the table and the work after the search grow linearly with the data; the search itself is exact for
  small sets and an inverted file from :data:`EXACT_SEARCH_LIMIT` images on, whose cost per query grows as the
  square root of the indexed set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import faiss
import numpy as np
import pandas as pd
import scipy.fft
from scipy.ndimage import gaussian_filter1d

from ._decode import preview, resize
from .config import Thresholds

#: The defaults of the near-duplicate tests are those of the audit's thresholds.
DEFAULTS = Thresholds()

#: The columns of :func:`find_duplicates`' table, in order.
COLUMNS: tuple[str, ...] = ("sample_id_a", "split_a", "sample_id_b", "split_b", "similarity", "kind")


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """A hex digest of each image's pixels: equal digests mean identical images.

    ``digest = blake2b(shape || pixels, digest_size=16)`` per image, so two images are equal exactly when their
    digests are (up to a 2**-128 chance of collision).

    Parameters
    ----------
    images : uint8 (N, H, W, 3)

    Returns
    -------
    digests : str (N,), 32 hex characters each.

    Raises
    ------
    ValueError
        If ``images`` is not a uint8 array of shape (N, H, W, 3).

    Examples
    --------
    >>> images = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    >>> images[2, 0, 0, 0] = 1
    >>> d = pixel_digests(images)
    >>> bool(d[0] == d[1]), bool(d[0] == d[2])
    (True, False)
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    digests = []
    for image in images:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(image.shape).encode())
        h.update(np.ascontiguousarray(image).tobytes())
        digests.append(h.hexdigest())
    return np.array(digests, dtype="<U32")


#: Side of the RGB thumbnails kept per sample for near duplicates (every image is resized to it).
THUMBNAIL_SIZE = 32
#: Side of the central window of one image that is looked for in the other, and the largest shift tried (pixels of
#: the thumbnail): 24 + 2 * 4 = 32, so every shifted window lies inside the other thumbnail.
WINDOW, MAX_SHIFT = 24, 4
#: Scales at which the window is compared (a crop or zoom of up to about 15%), each also mirrored.
SCALES = (0.87, 0.93, 1.0, 1.07, 1.15)
#: Candidate search: each image, at these (scale, shift down, shift right, mirrored) warps, is looked up among the
#: other set's blurred 8x8 grey descriptors; the nearest ``candidates`` at each warp with a descriptor cosine of at
#: least MIN_DESCRIPTOR_SIMILARITY go on to the aligned comparison.
QUERY_WARPS = (*((scale, dy, dx, False) for scale in (1.0, 1.15)
                 for dy, dx in ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))),
               (1.0, 0, 0, True))
MIN_DESCRIPTOR_SIMILARITY = 0.8
#: The candidate index. An exact (flat) search compares every query with every descriptor of B: O(N_A * N_B) in
#: all. From EXACT_SEARCH_LIMIT descriptors of B on, an inverted file is searched instead: the descriptors are
#: grouped in IVF_LISTS_PER_ROOT * sqrt(N_B) lists around spherical k-means centres, and each query scans only the
#: IVF_PROBES lists whose centres are closest, about 16 sqrt(N_B) descriptors: O(N_A * sqrt(N_B)). Below the limit
#: the exact search (one matrix product, at the processor's full speed) is as fast as training and searching it.
#: An HNSW graph was no faster on these crowded descriptors (50,000 CIFAR-10 training images, one thread: 56 us a
#: query losing 128 of 116,000 candidates, against 50 us losing 23), took 2.4 s to build against 0.7 s, and is
#: reproducible only when built by one thread.
EXACT_SEARCH_LIMIT = 20_000
#: IVF_PROBES is the search effort: on CIFAR-10 (``benchmarks/duplicates_cifar10.py``) 48 is the fewest probes that
#: find every near pair of the exact search (32 lose 2 of 937 test/train pairs); 64 keeps a margin, for about 0.3 s
#: more of a 10 s search there.
IVF_LISTS_PER_ROOT, IVF_PROBES = 4, 64
#: Standard deviations (thumbnail pixels) of the Gaussians whose difference is the detail image.
DETAIL_SIGMAS = (1.0, 4.0)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """The RGB thumbnails (N, 32, 32, 3) uint8 that near duplicates are found from: each image resized (bilinear,
    antialiased) to :data:`THUMBNAIL_SIZE`, whatever its aspect ratio, from its reduced copy
    (:func:`pipeline._decode.preview`, which may be given instead of the images)."""
    images = preview(np.asarray(images))
    if images.shape[1:3] == (THUMBNAIL_SIZE, THUMBNAIL_SIZE):
        return images.astype(np.uint8, copy=True)
    return resize(images, (THUMBNAIL_SIZE, THUMBNAIL_SIZE))


def find_duplicates(
    ids_a,
    split_a: str,
    thumbnails_a,
    digests_a,
    *,
    ids_b=None,
    split_b: str | None = None,
    thumbnails_b=None,
    digests_b=None,
    min_correlation: float = DEFAULTS.min_duplicate_correlation,
    min_colour_correlation: float = DEFAULTS.min_colour_correlation,
    candidates: int = 3,
    chunk: int = 1024,
) -> pd.DataFrame:
    """Exact and near duplicate pairs within split A, or between split A and split B.

    Within one split (``ids_b`` is None) the pairs are (i, j), i < j, of samples of A; across splits they are
    (i in A, j in B).

    - ``exact``: identical digests. A group of k identical samples within a split gives k - 1 rows, each later
      member paired with the first; across splits, each A sample with a twin in B is paired with the first one.
    - ``near``: the same photograph shifted, cropped, rescaled, mirrored, recoloured a little or re-encoded, found
      from the two images' thumbnails (:func:`thumbnails`) in two steps:

      1. *Candidates*: B's blurred 8x8 grey thumbnails go into a nearest-neighbour index (faiss, inner product of
         unit vectors; exact below :data:`EXACT_SEARCH_LIMIT` images of B, an inverted file from there on); each
         image of A, warped by each of :data:`QUERY_WARPS`, brings its ``candidates`` nearest with a cosine of at
         least :data:`MIN_DESCRIPTOR_SIMILARITY`.
      2. *Aligned comparison* of the two grey *detail* images (difference of Gaussians, :data:`DETAIL_SIGMAS`: the
         structure of the picture without its smooth shading, so that a shared flat sky or sea with different small
         objects on it does not look alike): the central 24x24 window of a's, at each of :data:`SCALES` and
         mirrored, is compared with b's at every shift of up to :data:`MAX_SHIFT` pixels. ``correlation`` is the
         largest normalised cross-correlation (Pearson's r of the window and the part of b under it). The pair is
         near when ``correlation >= min_correlation`` and each colour channel's 8x8 block means correlate at least
         ``min_colour_correlation`` between the two images (one of them mirrored or not), so that a red ship does
         not match a white one of the same shape (a global change of brightness, contrast or colour balance keeps
         every channel's correlation).

      Every candidate that passes is reported (within a split each unordered pair once, the earlier sample as
      ``sample_id_a``): an image with two twins in the other split (themselves duplicates) is paired with both. A
      sample has at most ``candidates * len(QUERY_WARPS)`` partners, so the table stays linear in N.

    Parameters
    ----------
    ids_a, ids_b : (N,) and (M,) sample ids.
    split_a, split_b : split names written in the table; ``split_b`` is required with ``ids_b``.
    thumbnails_a, thumbnails_b : uint8 (N, 32, 32, 3) and (M, 32, 32, 3) from :func:`thumbnails`.
    digests_a, digests_b : (N,) and (M,) pixel digests from :func:`pixel_digests`.
    min_correlation, min_colour_correlation : correlations in [-1, 1].
    candidates : nearest neighbours kept per query warp.
    chunk : images of A handled at a time; memory is O(chunk * candidates) beyond the inputs, the index and a
        colour layout per image of B (768 bytes); a larger chunk is no faster.

    Returns
    -------
    pairs : DataFrame with the columns :data:`COLUMNS`; ``similarity`` is the aligned correlation (1.0 for exact
        pairs) and ``kind`` is ``"exact"`` or ``"near"``. Sorted by kind (exact first), similarity descending, then
        ``sample_id_a``. No pairs gives an empty table with the same columns.

    Raises
    ------
    ValueError
        If the thumbnails are not uint8 (n, 32, 32, 3) with one per id, the digests are not one per id, or a B
        argument is missing.

    Notes
    -----
    The correlations are computed in the Fourier domain: for a unit-norm, zero-mean window ``w`` and an image ``b``,
    ``r(y, x) = sum(w * b[y:y+24, x:x+24]) / sqrt(sum(b^2) - sum(b)^2 / 576)`` over the 24x24 patch at (y, x); the
    numerator is the inverse DFT of the product of the two spectra, evaluated at the 9 x 9 shifts only (two small
    matrix products, :func:`_shift_dft`), the denominator comes from box sums. Cost per candidate pair: one 32x32
    FFT and 10 such partial inverses. Validated on CIFAR-10 against ciFAIR's hand-checked list of test images with a
    near duplicate in the training split (``benchmarks/duplicates_cifar10.py``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> scene = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8).repeat(5, axis=1).repeat(5, axis=2)  # 5x5 blocks
    >>> images = np.stack([scene[0, 4:36, 4:36], scene[0, 6:38, 5:37], scene[1, 4:36, 4:36]])  # b: a shifted copy of a
    >>> pairs = find_duplicates(["a", "b", "c"], "train", images, pixel_digests(images))
    >>> pairs[["sample_id_a", "sample_id_b", "kind"]].values.tolist()
    [['a', 'b', 'near']]
    """
    within = ids_b is None
    if within and not (split_b is None and thumbnails_b is None and digests_b is None):
        raise ValueError("split_b, thumbnails_b and digests_b compare against another split: pass ids_b too")
    if not within and (split_b is None or thumbnails_b is None or digests_b is None):
        raise ValueError("comparing two splits needs split_b, thumbnails_b and digests_b along with ids_b")
    for name, value in (("min_correlation", min_correlation), ("min_colour_correlation", min_colour_correlation)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{name} is a correlation in [-1, 1], got {value}")
    if chunk < 1 or candidates < 1:
        raise ValueError(f"chunk and candidates must be positive, got {chunk} and {candidates}")

    ids_a, thumbs_a, digests_a = _checked("a", ids_a, thumbnails_a, digests_a)
    if within:
        split_b, ids_b, thumbs_b, digests_b = split_a, ids_a, thumbs_a, digests_a
    else:
        ids_b, thumbs_b, digests_b = _checked("b", ids_b, thumbnails_b, digests_b)

    codes = pd.factorize(np.concatenate([digests_a, digests_b]))[0]
    codes_a, codes_b = codes[: len(ids_a)], codes[len(ids_a) :]

    twin = _first_twin(codes_a, codes_b)
    exact_a = np.flatnonzero(twin < np.arange(len(ids_a)) if within else twin >= 0)
    exact_b = twin[exact_a]
    if within:  # the first member of a group is the earlier sample
        exact_a, exact_b = exact_b, exact_a

    near_a, near_b, near_r = _near_pairs(thumbs_a, thumbs_b, codes_a, codes_b, within=within,
                                         min_correlation=min_correlation,
                                         min_colour_correlation=min_colour_correlation, candidates=candidates,
                                         chunk=chunk)
    pairs = pd.DataFrame(
        {
            "sample_id_a": ids_a[np.concatenate([exact_a, near_a])],
            "split_a": split_a,
            "sample_id_b": ids_b[np.concatenate([exact_b, near_b])],
            "split_b": split_b,
            "similarity": np.concatenate([np.ones(len(exact_a)), near_r]),
            "kind": np.repeat(["exact", "near"], [len(exact_a), len(near_a)]),
        },
        columns=list(COLUMNS),
    )
    # "exact" sorts before "near" alphabetically.
    pairs = pairs.sort_values(["kind", "similarity", "sample_id_a"], ascending=[True, False, True], kind="stable")
    return pairs.reset_index(drop=True)


def pair_counts(pairs: pd.DataFrame) -> list[dict]:
    """How many pairs of each kind between each two splits: ``[{"kind", "split_a", "split_b", "pairs"}, ...]``."""
    return pairs.groupby(["kind", "split_a", "split_b"]).size().reset_index(name="pairs").to_dict(orient="records")


def _checked(side: str, ids, thumbs, digests) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, thumbnails and digests of one set, after checking their shapes agree."""
    ids, thumbs, digests = np.asarray(ids), np.asarray(thumbs), np.asarray(digests)
    if ids.ndim != 1:
        raise ValueError(f"ids_{side} must be one-dimensional, got shape {ids.shape}")
    if thumbs.dtype != np.uint8 or thumbs.shape != (len(ids), THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3):
        raise ValueError(f"thumbnails_{side} must be uint8 ({len(ids)}, {THUMBNAIL_SIZE}, {THUMBNAIL_SIZE}, 3), one "
                         f"per id, got {thumbs.dtype} {thumbs.shape}")
    if digests.shape != ids.shape:
        raise ValueError(f"digests_{side} must hold one digest per id ({len(ids)}), got shape {digests.shape}")
    return ids, thumbs, digests


def _first_twin(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """For each sample of A, the index of the first sample of B with the same digest code, or -1."""
    first = np.full(int(max(codes_a.max(initial=-1), codes_b.max(initial=-1))) + 1, -1)
    present, index = np.unique(codes_b, return_index=True)
    first[present] = index
    return first[codes_a]


def _grey(thumbs: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) of RGB thumbnails, float32 (N, 32, 32)."""
    thumbs = np.asarray(thumbs)
    grey = thumbs[..., 0] * np.float32(0.299)
    grey += thumbs[..., 1] * np.float32(0.587)
    grey += thumbs[..., 2] * np.float32(0.114)
    return grey


def _filter_matrix(sigma: float, n: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian blur (scipy's, edges reflected): ``F @ x`` blurs the columns of x."""
    return gaussian_filter1d(np.eye(n, dtype=np.float32), sigma, axis=0)


def _separable(images: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``rows @ image @ columns.T`` of each image (N, H, W), as two large matrix products."""
    out = np.matmul(images.reshape(-1, images.shape[-1]), columns.T)
    out = out.reshape(len(images), images.shape[1], len(columns))
    return np.matmul(rows, out)


def _warp_matrix(scale: float, shift: float, n: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(n, n) linear interpolation matrix of a 1-D zoom by ``scale`` about the centre, then a shift: output pixel
    ``p`` samples the input at ``c + (p - c) / scale + shift`` (clamped to the edges)."""
    centre = (n - 1) / 2
    source = np.clip(centre + (np.arange(n) - centre) / scale + shift, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    matrix = np.zeros((n, n), dtype=np.float32)
    np.add.at(matrix, (np.arange(n), low), 1 - (source - low))
    np.add.at(matrix, (np.arange(n), high), source - low)
    return matrix


def _detail(grey: np.ndarray) -> np.ndarray:
    """The difference of two Gaussian blurs (:data:`DETAIL_SIGMAS`) of grey images (N, 32, 32)."""
    fine, coarse = (_filter_matrix(sigma) for sigma in DETAIL_SIGMAS)
    return _separable(grey, fine, fine) - _separable(grey, coarse, coarse)


def _descriptors(grey: np.ndarray, scale: float = 1.0, dy: float = 0.0, dx: float = 0.0,
                 mirror: bool = False) -> np.ndarray:
    """Unit-norm, zero-mean 8x8 block means of the blurred grey thumbnails (N, 64) float32, after a warp
    (:func:`_warp_matrix`; ``mirror`` flips the warped image left to right)."""
    # Warp, mirror, blur (sigma 1) and 4x4 block means are all linear: one (8, 32) matrix per side.
    pool = np.kron(np.eye(8, dtype=np.float32), np.full((1, 4), 0.25, dtype=np.float32)) @ _filter_matrix(1.0)
    columns = _warp_matrix(scale, dx)
    flat = _separable(grey, pool @ _warp_matrix(scale, dy), pool @ (columns[::-1] if mirror else columns))
    flat = flat.reshape(len(grey), -1)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 1e-3).astype(np.float32)


def _window_spectra(grey: np.ndarray) -> np.ndarray:
    """FFTs (N, 10, 32, 17) of each (detail) image's central window at every scale and mirroring, zero-mean and
    unit-norm (a flat window stays zero and correlates with nothing)."""
    # Only the window's rows of each zoom matrix are needed; the columns of every scale come from one product.
    crops = [_warp_matrix(scale, 0.0)[MAX_SHIFT : MAX_SHIFT + WINDOW] for scale in SCALES]
    across = (grey.reshape(-1, THUMBNAIL_SIZE) @ np.concatenate(crops).T).reshape(len(grey), THUMBNAIL_SIZE,
                                                                                len(SCALES), WINDOW)
    windows = np.stack([np.matmul(rows, across[:, :, s]) for s, rows in enumerate(crops)], axis=1)
    windows -= windows.mean(axis=(2, 3), keepdims=True)
    norms = np.sqrt((windows**2).sum(axis=(2, 3), keepdims=True))
    windows = np.divide(windows, norms, out=np.zeros_like(windows), where=norms > 1e-3)
    # Zero-padded to the thumbnail's size, then a mirrored window is the same window read right to left (the crop is
    # centred).
    padded = np.zeros((len(grey), 2 * len(SCALES), THUMBNAIL_SIZE, THUMBNAIL_SIZE), dtype=np.float32)
    padded[:, : len(SCALES), :WINDOW, :WINDOW] = windows
    padded[:, len(SCALES) :, :WINDOW, :WINDOW] = windows[..., ::-1]
    return scipy.fft.rfft2(padded, workers=-1)


def _window_spread(grey: np.ndarray) -> np.ndarray:
    """The norm about its mean of every 24x24 patch at the (2 * MAX_SHIFT + 1)**2 shifts of each image (N, 9, 9):
    ``sqrt(sum(b^2) - sum(b)^2 / 576)``, the patch sums as one (9, 32) box matrix per side."""
    span = 2 * MAX_SHIFT + 1
    offset = np.arange(THUMBNAIL_SIZE) - np.arange(span)[:, None]
    box = ((offset >= 0) & (offset < WINDOW)).astype(np.float32)  # row s sums the pixels s to s + 23
    s1, s2 = (_separable(values, box, box) for values in (grey, grey**2))
    return np.sqrt(np.maximum(s2 - s1**2 / WINDOW**2, 0.0))


def _shift_dft(n: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse real 2-D DFT of size (n, n) at the first ``span`` shifts of each axis only, as two matrices: the
    correlation is needed at 9 x 9 shifts, and two small matrix products cost less than the whole 32 x 32 inverse.
    For a half spectrum X (..., n, n // 2 + 1), ``H = X @ along_x`` (complex, (n // 2 + 1, span)) sums over the half
    axis, every frequency but 0 and n / 2 twice for its conjugate twin; then with H moved to (..., span, n),
    ``[Re H | Im H] @ along_y`` (real, (2 n, span)) sums over the full axis and keeps the real part: (..., x, y)."""
    frequencies, shifts = np.arange(n // 2 + 1), np.arange(span)
    twice = np.where((frequencies == 0) | (frequencies == n // 2), 1.0, 2.0)
    along_x = twice[:, None] * np.exp(2j * np.pi * np.outer(frequencies, shifts) / n)
    along_y = np.exp(2j * np.pi * np.outer(np.arange(n), shifts) / n) / n**2
    return along_x.astype(np.complex64), np.concatenate([along_y.real, -along_y.imag]).astype(np.float32)


def _aligned_correlation(spectra: np.ndarray, rows: np.ndarray, thumbs: np.ndarray, columns: np.ndarray,
                         block: int = 128) -> np.ndarray:
    """For pairs (row of ``spectra`` (N, 10, 32, 17), column of ``thumbs`` (M, 32, 32, 3)): the largest normalised
    cross-correlation of the row's windows with the column's detail image over every shift of up to MAX_SHIFT
    pixels (P,). Computed ``block`` pairs at a time, each with the detail image of its column made for it: the
    per-pair spectra stay in cache, and memory follows the block, not the pairs or M (an image in several blocks'
    pairs gets its detail image in each, which costs no more time than collecting them once: 25,000 photos' search
    took 16.7 s either way, its traced peak 160 MB instead of 169)."""
    span = 2 * MAX_SHIFT + 1
    along_x, along_y = _shift_dft(THUMBNAIL_SIZE, span)
    best = np.zeros(len(rows), dtype=np.float32)
    for start in range(0, len(rows), block):
        part = slice(start, start + block)
        grey = _detail(_grey(thumbs[columns[part]]))
        product = spectra[rows[part]]  # a copy, conjugated and multiplied in place
        np.conjugate(product, out=product)
        product *= scipy.fft.rfft2(grey, workers=-1)[:, None]
        half = (product.reshape(-1, product.shape[-1]) @ along_x).reshape(*product.shape[:-1], span)
        half = np.swapaxes(half, 2, 3)
        numerator = (np.concatenate([half.real, half.imag], axis=-1) @ along_y).max(axis=1)  # (P, x, y)
        # The same spread divides every window variant at a shift, so the maximum over variants can come first.
        norm = np.swapaxes(_window_spread(grey), 1, 2)
        r = np.divide(numerator, norm, out=np.zeros_like(numerator), where=norm > 1e-2)
        best[part] = r.max(axis=(1, 2))
    return best


def _descriptor_index(descriptors: np.ndarray) -> faiss.Index:
    """A faiss index of unit descriptors (N, 64) searched by inner product: exact below :data:`EXACT_SEARCH_LIMIT`
    descriptors, an inverted file (:data:`IVF_LISTS_PER_ROOT`, :data:`IVF_PROBES`) from there on."""
    dimension = descriptors.shape[1]
    if len(descriptors) < EXACT_SEARCH_LIMIT:
        index = faiss.IndexFlatIP(dimension)
    else:
        lists = int(IVF_LISTS_PER_ROOT * np.sqrt(len(descriptors)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, lists, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = IVF_PROBES
        # Spherical k-means from a fixed seed: the same lists every run. It trains on at most 64 descriptors a list,
        # so its cost grows linearly with N; from the limit on there are at least 35 a list, plenty for k-means, so
        # faiss's warning below 39 is turned off.
        index.cp.spherical, index.cp.seed, index.cp.niter = True, 0, 10
        index.cp.max_points_per_centroid, index.cp.min_points_per_centroid = 64, 1
        index.train(descriptors)
    index.add(descriptors)
    return index


def _near_pairs(thumbs_a, thumbs_b, codes_a, codes_b, *, within: bool, min_correlation: float,
                min_colour_correlation: float, candidates: int, chunk: int):
    """The near pairs (i in A, j in B) (see :func:`find_duplicates`): indices and correlations."""
    empty = np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp), np.empty(0)
    if len(thumbs_a) == 0 or len(thumbs_b) == 0:
        return empty
    # Per image of B, only what every chunk of A needs is kept whole: its descriptor (in the index) and colour
    # layout; detail images are made for the candidates of each chunk (memory O(N + M) in a few hundred bytes).
    index = _descriptor_index(np.concatenate([_descriptors(_grey(thumbs_b[start:start + chunk]))
                                              for start in range(0, len(thumbs_b), chunk)]))
    k = min(candidates + int(within), len(thumbs_b))  # within a split, each image finds itself too
    colour_b = _by_parts(_colour_layout, thumbs_b)
    found = []
    for start in range(0, len(thumbs_a), chunk):
        rows = np.arange(start, min(start + chunk, len(thumbs_a)))
        grey_a = _grey(thumbs_a[rows])
        # One search of every warp of every image of the chunk: faiss is far faster on large query batches.
        queries = np.concatenate([_descriptors(grey_a, *warp) for warp in QUERY_WARPS])
        similarity, partner = index.search(queries, k)
        local = np.tile(np.repeat(np.arange(len(rows)), k), len(QUERY_WARPS))
        keep = (similarity.ravel() >= MIN_DESCRIPTOR_SIMILARITY) & (partner.ravel() >= 0)
        pairs = np.unique(np.stack([local[keep], partner.ravel()[keep]], axis=1), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
        # Not an exact twin (within a split this also drops each image paired with itself).
        ok = codes_a[rows[i]] != codes_b[j]
        colour_a = _colour_layout(thumbs_a[rows])[i]
        colour = np.maximum(*((layout * colour_b[j]).sum(axis=(1, 2)).min(axis=1)
                              for layout in (colour_a, colour_a[:, :, ::-1])))  # as it is, or mirrored
        ok &= colour >= min_colour_correlation
        # Only the images of the chunk with a candidate left need the spectra of their windows.
        needed, i = np.unique(i[ok], return_inverse=True)
        j = j[ok]
        r = _aligned_correlation(_window_spectra(_detail(grey_a[needed])), i, thumbs_b, j)
        i = needed[i]
        ok = r >= min_correlation
        found.append((rows[i[ok]], j[ok], r[ok]))
    a, b, r = (np.concatenate(parts) for parts in zip(*found, strict=True))
    if within:  # one row per unordered pair, the earlier sample first
        a, b = np.minimum(a, b), np.maximum(a, b)
        _, unique = np.unique(np.stack([a, b]), axis=1, return_index=True)
        a, b, r = a[unique], b[unique], r[unique]
    return a.astype(np.intp), b.astype(np.intp), r.astype(np.float64)


def _by_parts(function: Callable[[np.ndarray], np.ndarray], items: np.ndarray, part: int = 2048) -> np.ndarray:
    """``function(items)`` for a function that maps each item to one row, computed ``part`` items at a time into one
    array: the function's temporaries are those of a part, not of all the items (on 25,000 photos, the duplicate
    search's peak memory above its inputs fell from 330 to 240 MB, its time unchanged)."""
    out = None
    for start in range(0, len(items), part):
        rows = function(items[start:start + part])
        if out is None:
            out = np.empty((len(items), *rows.shape[1:]), dtype=rows.dtype)
        out[start:start + len(rows)] = rows
    return function(items) if out is None else out


def _colour_layout(thumbs: np.ndarray) -> np.ndarray:
    """Each channel's 8x8 block means, zero-mean and unit-norm per channel (N, 8, 8, 3): the dot product of two is
    each channel's Pearson correlation (a flat channel is zero and correlates with nothing)."""
    # Sums of 4 rows, then of 4 columns (exact in float32), over contiguous axes: faster than one mean over both.
    rows = np.asarray(thumbs).reshape(len(thumbs), 8, 4, 32 * 3).sum(axis=2, dtype=np.float32)
    blocks = rows.reshape(len(thumbs), 8, 8, 4, 3).sum(axis=3) / 16
    blocks -= blocks.mean(axis=(1, 2), keepdims=True)
    norms = np.sqrt((blocks**2).sum(axis=(1, 2), keepdims=True))
    return np.divide(blocks, norms, out=np.zeros_like(blocks), where=norms > 1e-3)
