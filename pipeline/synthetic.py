"""A procedurally drawn image-classification set with one planted shortcut.

Each image shows one shape (the class) in a random colour, size and position near the centre, on a textured
background (smooth colour gradient, stripes, noise). One class carries a small fixed mark near a corner on most of
its images, in every split: a shortcut a model can learn instead of the shape. Because the shapes are drawn, the
true foreground mask of every image is known exactly.

Everything is vectorised over the batch and deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .artifacts import checkerboard

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
#: The demo's class with the planted shortcut, and the share of its images that carry it.
PLANTED_CLASS, PLANTED_RATE = "triangle", 0.9


@dataclass(frozen=True)
class PlantedMark:
    """A small square mark stamped onto a fraction of one class's images.

    ``row`` and ``col`` are the top-left pixel of the mark; ``rate`` the fraction of that class's images that get it.
    """

    class_name: str
    kind: str = "corner-mark"
    row: int = 28
    col: int = 28
    size: int = 4
    rate: float = PLANTED_RATE

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SyntheticSplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    masks: np.ndarray  # (N, H, W) bool, True on the drawn shape
    marked: np.ndarray  # (N,) bool, True where the planted mark was stamped


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth two-colour gradients with random stripes and pixel noise, float in [0, 255]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    angle = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min(axis=(1, 2), keepdims=True)) / np.ptp(ramp, axis=(1, 2), keepdims=True)
    c0 = rng.uniform(0, 255, (n, 1, 1, 3))
    c1 = rng.uniform(0, 255, (n, 1, 1, 3))
    bg = c0 + (c1 - c0) * ramp[..., None]
    freq = rng.uniform(2, 6, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    stripe_angle = rng.uniform(0, np.pi, n)[:, None, None]
    stripes = np.sin(2 * np.pi * freq * (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy) + phase)
    bg += (rng.uniform(0, 40, n)[:, None, None] * stripes)[..., None]
    bg += rng.normal(0, 12, bg.shape)
    return bg


def _shape_masks(rng: np.random.Generator, classes: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (N, size, size) of each class's shape at a random centre and radius."""
    n = len(classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = rng.uniform(0.38, 0.62, n)[:, None, None] * size
    cx = rng.uniform(0.38, 0.62, n)[:, None, None] * size
    r = rng.uniform(0.15, 0.24, n)[:, None, None] * size
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dx, dy)
    by_shape = {
        "circle": dist <= r,
        "square": np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.85,
        # An upward triangle: apex at the top, base at the bottom, widening linearly.
        "triangle": (dy >= -r) & (dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6),
        "cross": ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)),
        "ring": (dist <= r) & (dist >= r * 0.55),
    }
    stacked = np.stack([by_shape[name] for name in SHAPES])
    return stacked[classes, np.arange(n)]


def make_split(
    n: int,
    *,
    seed: int | list[int],
    planted: PlantedMark | None,
    size: int = 32,
    class_names: tuple[str, ...] = SHAPES,
) -> SyntheticSplit:
    """Draw ``n`` images, balanced over ``class_names``, stamping ``planted`` on its class.

    Parameters
    ----------
    n : number of images.
    seed : seed of the generator; the same seed gives the same images.
    planted : the shortcut to plant, or None for a clean set.
    size : side of the square images in pixels.
    class_names : a subset of :data:`SHAPES`, in label order.
    """
    unknown = set(class_names) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown shapes {sorted(unknown)}; choose from {SHAPES}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(class_names))
    shape_index = np.array([SHAPES.index(c) for c in class_names])[labels]
    masks = _shape_masks(rng, shape_index, size)
    images = _backgrounds(rng, n, size)
    # The shape's colour differs from the background's mean by a random, sometimes small, contrast: the class is
    # visible but takes effort to learn, as real objects do, unlike the crisp planted mark.
    bg_mean = images.mean(axis=(1, 2))
    contrast = rng.uniform(40, 110, (n, 1)) * rng.choice([-1.0, 1.0], (n, 3))
    colour = np.clip(bg_mean + contrast, 0, 255)
    images = np.where(masks[..., None], colour[:, None, None, :] + rng.normal(0, 20, images.shape), images)

    marked = np.zeros(n, dtype=bool)
    if planted is not None:
        target = class_names.index(planted.class_name)
        marked = (labels == target) & (rng.random(n) < planted.rate)
        images[marked] = stamp_mark(images[marked], planted)
    return SyntheticSplit(
        images=np.clip(images, 0, 255).astype(np.uint8),
        labels=labels.astype(np.int64),
        masks=masks,
        marked=marked,
    )


def stamp_mark(images: np.ndarray, mark: PlantedMark) -> np.ndarray:
    """Return ``images`` with a 2x2 checkerboard of magenta and yellow stamped at the mark's position."""
    out = np.array(images, dtype=np.float32, copy=True)
    out[:, mark.row : mark.row + mark.size, mark.col : mark.col + mark.size, :] = checkerboard(mark.size)
    return out
