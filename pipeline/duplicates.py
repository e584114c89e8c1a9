"""Duplicate samples, within a split or leaking across splits.

Two kinds of pair are reported:

- ``exact``: the two images have identical pixels, i.e. the same :func:`pixel_digests` digest (a hash of the uint8
  pixels and the image shape). Their similarity is recorded as 1.0.
- ``near``: the two images are not exact twins, but the model sees them as (almost) the same picture. Near
  duplicates come from the model's penultimate-layer embeddings ``e``: a pair is near when its cosine similarity
  ``cos(a, b) = e_a . e_b / (||e_a|| ||e_b||)`` is at least ``min_similarity``. An embedding of zero (or non-finite)
  norm has no direction and never matches. Embeddings are centred on split A's mean first. A classifier's
  embedding is made to tell classes apart, not pictures: two different images of one class can be as close as a
  picture and its re-encoding. So, given pixel signatures (:func:`pixel_signatures`, small RGB thumbnails), a
  near pair must also look alike: the Pearson correlation of the two thumbnails is at least
  ``min_pixel_correlation``. Each sample keeps its most similar partner (by embedding) among its
  ``candidates`` nearest ones that passes both tests, so the table has at most one near row per sample and stays
  linear in the size of the data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

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


#: Side of the thumbnails that :func:`pixel_signatures` compares.
SIGNATURE_SIZE = 16


def pixel_signatures(thumbnails: np.ndarray) -> np.ndarray:
    """Pixel signatures (N, S*S*3) float16 of RGB thumbnails (N, S, S, 3): all the thumbnail's values minus their
    mean, scaled to unit norm, so that the dot product of two signatures is the Pearson correlation of the two
    thumbnails' RGB values (colour counts; a flat thumbnail has a zero signature and correlates with nothing)."""
    values = np.asarray(thumbnails, dtype=np.float32).reshape(len(thumbnails), -1)
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return np.divide(values, norms, out=np.zeros_like(values), where=norms > 1e-6).astype(np.float16)


def find_duplicates(
    ids_a,
    split_a: str,
    embeddings_a,
    digests_a,
    *,
    ids_b=None,
    split_b: str | None = None,
    embeddings_b=None,
    digests_b=None,
    signatures_a=None,
    signatures_b=None,
    min_similarity: float = DEFAULTS.min_duplicate_similarity,
    min_pixel_correlation: float = DEFAULTS.min_pixel_correlation,
    candidates: int = 5,
    chunk: int = 1024,
    centre: bool = True,
) -> pd.DataFrame:
    """Exact and near duplicate pairs within split A, or between split A and split B.

    Within one split (``ids_b`` is None) the pairs are (i, j), i < j, of samples of A; across splits they are
    (i in A, j in B).

    - ``exact``: identical digests. A group of k identical samples within a split gives k - 1 rows, each later
      member paired with the first; across splits, each A sample with a twin in B is paired with the first one.
    - ``near``: ``cos(e_i, e_j) >= min_similarity`` on the embeddings, excluding pairs with identical digests. Each
      sample of A keeps only its most similar partner (within a split: its best j != i, each unordered pair reported
      once with the earlier sample as ``sample_id_a``), so there are at most N near rows.

    Parameters
    ----------
    ids_a, ids_b : (N,) and (M,) sample ids.
    split_a, split_b : split names written in the table; ``split_b`` is required with ``ids_b``.
    embeddings_a, embeddings_b : float (N, D) and (M, D), the model's penultimate-layer embeddings.
    digests_a, digests_b : (N,) and (M,) pixel digests from :func:`pixel_digests`.
    min_similarity : cosine similarity from which a pair counts as a near duplicate, in [-1, 1].
    chunk : rows of A compared at a time; memory is O(chunk * M).
    centre : subtract the mean embedding of A from both sets first. Penultimate layers after a ReLU are
        non-negative, so raw cosines between any two images are high; centred, they measure how alike two images
        are relative to the split.
    signatures_a, signatures_b : optional (N, S*S) and (M, S*S) from :func:`pixel_signatures`; with them a near
        pair also needs a thumbnail correlation of at least ``min_pixel_correlation``.
    candidates : how many nearest partners by embedding are checked against the pixel test.

    Returns
    -------
    pairs : DataFrame with the columns :data:`COLUMNS`; ``similarity`` is the cosine (1.0 for exact pairs) and
        ``kind`` is ``"exact"`` or ``"near"``. Sorted by kind (exact first), similarity descending, then
        ``sample_id_a``. No pairs gives an empty table with the same columns.

    Raises
    ------
    ValueError
        If the embeddings are not 2-D with one row per id, the digests are not one per id, the two sets' embeddings
        differ in width, or a B argument is missing.

    Notes
    -----
    Rows are L2-normalised and the similarities computed as a float32 matrix product, ``chunk`` rows of A against
    all of B at a time; the cosines of the selected pairs are then recomputed in float64, so a pair's value does
    not depend on the chunking or on which side found it.

    Examples
    --------
    >>> emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    >>> pairs = find_duplicates(["a", "b", "c"], "train", emb, ["x", "y", "z"])
    >>> pairs[["sample_id_a", "sample_id_b", "kind"]].values.tolist()
    [['a', 'b', 'near']]
    """
    within = ids_b is None
    if within and not (split_b is None and embeddings_b is None and digests_b is None):
        raise ValueError("split_b, embeddings_b and digests_b compare against another split: pass ids_b too")
    if not within and (split_b is None or embeddings_b is None or digests_b is None):
        raise ValueError("comparing two splits needs split_b, embeddings_b and digests_b along with ids_b")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity is a cosine similarity in [-1, 1], got {min_similarity}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")

    if centre:
        embeddings_a, embeddings_b = _centred(embeddings_a, embeddings_b)
    ids_a, unit_a, digests_a = _checked("a", ids_a, embeddings_a, digests_a)
    if within:
        split_b, ids_b, unit_b, digests_b = split_a, ids_a, unit_a, digests_a
    else:
        ids_b, unit_b, digests_b = _checked("b", ids_b, embeddings_b, digests_b)
        if unit_a.shape[1] != unit_b.shape[1]:
            raise ValueError(f"embeddings_a have {unit_a.shape[1]} columns but embeddings_b {unit_b.shape[1]}")

    codes = pd.factorize(np.concatenate([digests_a, digests_b]))[0]
    codes_a, codes_b = codes[: len(ids_a)], codes[len(ids_a) :]

    twin = _first_twin(codes_a, codes_b)
    exact_a = np.flatnonzero(twin < np.arange(len(ids_a)) if within else twin >= 0)
    exact_b = twin[exact_a]
    if within:  # the first member of a group is the earlier sample
        exact_a, exact_b = exact_b, exact_a

    if signatures_a is not None:
        signatures_a = np.asarray(signatures_a, dtype=np.float32)
        signatures_b = signatures_a if within else np.asarray(signatures_b, dtype=np.float32)
        if len(signatures_a) != len(ids_a) or len(signatures_b) != len(ids_b):
            raise ValueError("signatures_a and signatures_b need one row per id")
    near_a, near_b = _nearest_partners(unit_a, unit_b, codes_a, codes_b, min_similarity, chunk,
                                       signatures_a, signatures_b, min_pixel_correlation,
                                       candidates if signatures_a is not None else 1)
    if within:
        near_a, near_b = np.minimum(near_a, near_b), np.maximum(near_a, near_b)
        near_a, near_b = np.unique(np.stack([near_a, near_b]), axis=1).reshape(2, -1)
    # float64 cosines of at most N pairs: independent of the chunking and of which side found the pair.
    near_sim = np.einsum("ij,ij->i", unit_a[near_a].astype(np.float64), unit_b[near_b].astype(np.float64))
    keep = near_sim >= min_similarity
    near_a, near_b, near_sim = near_a[keep], near_b[keep], near_sim[keep]

    pairs = pd.DataFrame(
        {
            "sample_id_a": ids_a[np.concatenate([exact_a, near_a])],
            "split_a": split_a,
            "sample_id_b": ids_b[np.concatenate([exact_b, near_b])],
            "split_b": split_b,
            "similarity": np.concatenate([np.ones(len(exact_a)), near_sim]),
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


def _centred(embeddings_a, embeddings_b):
    """Both sets minus the mean of A's finite rows (unchanged when A is not a non-empty 2-D array, so that
    :func:`_checked` reports the problem)."""
    a = np.asarray(embeddings_a, dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all(axis=1).any():
        return embeddings_a, embeddings_b
    mean = a[np.isfinite(a).all(axis=1)].mean(axis=0)
    b = None if embeddings_b is None else np.asarray(embeddings_b, dtype=np.float64)
    if b is not None and b.ndim == 2 and b.shape[1] == a.shape[1]:
        b = b - mean
    return a - mean, b


def _checked(side: str, ids, embeddings, digests) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, L2-normalised float32 embeddings (zero rows where the norm is zero or not finite) and digests of one
    set, after checking their shapes agree."""
    ids = np.asarray(ids)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    digests = np.asarray(digests)
    if ids.ndim != 1:
        raise ValueError(f"ids_{side} must be one-dimensional, got shape {ids.shape}")
    if embeddings.ndim != 2 or len(embeddings) != len(ids):
        raise ValueError(
            f"embeddings_{side} must be 2-D with one row per id ({len(ids)}, D), got shape {embeddings.shape}"
        )
    if digests.shape != ids.shape:
        raise ValueError(f"digests_{side} must hold one digest per id ({len(ids)}), got shape {digests.shape}")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    usable = np.isfinite(norms) & (norms > 0)
    unit = np.where(usable, embeddings / np.where(usable, norms, 1.0), 0.0).astype(np.float32)
    return ids, unit, digests


def _first_twin(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """For each sample of A, the index of the first sample of B with the same digest code, or -1."""
    first = np.full(int(max(codes_a.max(initial=-1), codes_b.max(initial=-1))) + 1, -1)
    present, index = np.unique(codes_b, return_index=True)
    first[present] = index
    return first[codes_a]


def _nearest_partners(
    unit_a: np.ndarray, unit_b: np.ndarray, codes_a: np.ndarray, codes_b: np.ndarray, min_similarity: float,
    chunk: int, signatures_a: np.ndarray | None = None, signatures_b: np.ndarray | None = None,
    min_pixel_correlation: float = 0.95, candidates: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j): each sample i of A with its most similar sample j of B (by float32 cosine) that is not an exact
    twin, has a cosine of at least ``min_similarity`` and, with signatures, a thumbnail correlation of at least
    ``min_pixel_correlation``; j is sought among i's ``candidates`` most similar samples."""
    if len(unit_a) == 0 or len(unit_b) == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    usable_a, usable_b = unit_a.any(axis=1), unit_b.any(axis=1)
    k = max(1, min(candidates, len(unit_b)))
    found_a, found_b = [], []
    for start in range(0, len(unit_a), chunk):
        rows = np.arange(start, min(start + chunk, len(unit_a)))
        sim = unit_a[rows] @ unit_b.T
        sim[~usable_a[rows]] = -np.inf
        sim[:, ~usable_b] = -np.inf
        # Within a split this also masks the diagonal: every sample shares its own digest.
        sim[codes_a[rows, None] == codes_b[None, :]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        order = np.argsort(-top_sim, axis=1, kind="stable")
        top, top_sim = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sim, order, axis=1)
        ok = top_sim >= min_similarity
        if signatures_a is not None:
            correlation = np.einsum("nd,nkd->nk", signatures_a[rows], signatures_b[top])
            ok &= correlation >= min_pixel_correlation
        hit = ok.any(axis=1)
        first = ok.argmax(axis=1)
        found_a.append(rows[hit])
        found_b.append(top[hit, first[hit]])
    return np.concatenate(found_a), np.concatenate(found_b)
