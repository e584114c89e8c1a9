"""Artifacts planted into a copy of a dataset, to measure whether an audit finds a shortcut it was handed.

Five kinds, each a typical real-world shortcut: a ``corner`` mark (a magenta/yellow checkerboard patch, like a logo
or a sensor tag), a ``patch`` (the same checkerboard anywhere, a logo inside the image), a ``frame`` (a solid border,
like a scanner's or a photo service's), a ``stamp`` (short white text with a dark outline, like a watermark), and a
``background`` (outside the object's true mask, a fixed texture or colour, or a tint of it: water behind the
waterbirds). Geometry is relative to the image (``size`` is a fraction of its shorter side; a ``position`` is a corner
or ``x,y`` fractions of the width and height), so the artifact looks the same at the original resolution and at the
model's input size. It is alpha-blended with ``opacity``. A sample of the chosen class carries the artifact when a
hash of its id and the seed falls below ``rate``: the same samples in every run, process and resolution, with no
stored list.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._hashing import unit_hash
from .errors import AuditError

KINDS = ("corner", "patch", "frame", "stamp", "background")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: The kinds placed at a ``position``, and where they go by default (a patch: the centre of the image).
DEFAULT_POSITIONS = {"corner": "bottom-right", "patch": "0.5,0.5", "stamp": "bottom-right"}
#: Default size (fraction of the shorter side) per kind: a 5-px patch, a 2-px frame, 8-px-high text, 4-px-wide
#: stripes of the background texture at 32x32.
DEFAULT_SIZES = {"corner": 0.15, "patch": 0.15, "frame": 0.06, "stamp": 0.25, "background": 0.125}
#: What replaces a planted background (``--fill``); with ``opacity`` below 1, it tints the background instead.
FILLS = {"texture": "diagonal stripes of blue and white, `size` of the shorter side wide",
         "colour": "a flat sky blue, (0, 160, 255)"}
#: Why a background cannot be planted into a source without true masks.
BACKGROUND_NEEDS_MASKS = ("--artifact background replaces the background outside each object's true mask, and this "
                          "dataset has no masks: give --masks DIR (an image folder with trimaps or binary masks), or "
                          "use the demo set")
TEXTURE_COLOURS = ((30.0, 90.0, 200.0), (240.0, 240.0, 240.0))
FLAT_COLOUR = (0.0, 160.0, 255.0)


def parse_position(position: str) -> str | tuple[float, float]:
    """A position as given (``--position``): a corner of :data:`POSITIONS`, or ``x,y``, the artifact's centre as
    fractions of the width and the height, each in [0, 1] (``0.5,0.4``: centred, a little above the middle)."""
    if position in POSITIONS:
        return position
    parts = position.split(",")
    try:
        x, y = (float(part) for part in parts) if len(parts) == 2 else (np.nan, np.nan)
    except ValueError:
        x = y = np.nan
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise AuditError(f"--position must be one of {', '.join(POSITIONS)} or x,y fractions in [0, 1] (e.g. "
                         f"0.5,0.4), got {position!r}")
    return x, y


@dataclass(frozen=True)
class Artifact:
    """What to plant, where, and into how many of one class's images."""

    kind: str
    class_name: str
    position: str | None = None  # corner, patch, stamp: a corner or "x,y" (parse_position); None: DEFAULT_POSITIONS
    size: float | None = None  # fraction of the shorter side; None: DEFAULT_SIZES[kind]
    opacity: float = 1.0
    rate: float = 0.5  # fraction of the class's images that carry it
    seed: int = 0
    text: str = "stock"  # stamp only
    fill: str | None = None  # background only: one of FILLS; None: "texture"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise AuditError(f"--artifact must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind in DEFAULT_POSITIONS:
            position = DEFAULT_POSITIONS[self.kind] if self.position is None else self.position.replace(" ", "")
            parse_position(position)
            object.__setattr__(self, "position", position)
        elif self.position is not None:
            raise AuditError(f"--position places a corner mark, a patch or a stamp; a {self.kind} has none (drop the "
                             "option)")
        if self.kind == "background":
            object.__setattr__(self, "fill", "texture" if self.fill is None else self.fill)
            if self.fill not in FILLS:
                raise AuditError(f"--fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        elif self.fill is not None:
            raise AuditError(f"--fill is what replaces a planted background; a {self.kind} has none (drop the option)")
        if self.size is None:
            object.__setattr__(self, "size", DEFAULT_SIZES[self.kind])
        for name, low in (("size", 0.0), ("opacity", 0.0), ("rate", 0.0)):
            value = getattr(self, name)
            if not low < value <= (0.5 if name == "size" else 1.0):
                raise AuditError(f"--{name} must be in (0, {0.5 if name == 'size' else 1}], got {value}")
        if self.kind == "stamp" and not self.text.strip():
            raise AuditError("a stamp needs some --text")

    def as_dict(self) -> dict:
        return asdict(self)

    def carriers(self, sample_ids: np.ndarray, in_class: np.ndarray) -> np.ndarray:
        """Which samples carry the artifact: those of the class whose hash of (seed, id) falls below ``rate``."""
        return np.asarray(in_class, dtype=bool) & (unit_hash(sample_ids, f"artifact:{self.seed}") < self.rate)

    def apply(self, images: np.ndarray, foreground: np.ndarray | None = None) -> np.ndarray:
        """The images (N, H, W, 3) uint8 with the artifact blended in; a background only outside ``foreground``,
        the images' true object masks (N, H, W) bool, which it needs."""
        images = np.asarray(images)
        if len(images) == 0:
            return images
        alpha, colour = _layer(self, *images.shape[1:3])
        alpha = np.broadcast_to(alpha, images.shape[:3]) * self.opacity
        if self.kind == "background":
            if foreground is None:
                raise ValueError("a background artifact needs the images' object masks")
            alpha = alpha * ~np.asarray(foreground, dtype=bool)
        alpha = alpha[..., None]
        return np.round(images * (1.0 - alpha) + colour[None] * alpha).astype(np.uint8)


def checkerboard(side: int) -> np.ndarray:
    """The corner mark's picture: a ``side`` x ``side`` 2x2 checkerboard of magenta and yellow, float RGB (s, s, 3)."""
    half = max(side // 2, 1)
    checker = (np.arange(side)[:, None] // half + np.arange(side)[None, :] // half) % 2
    return np.where(checker[..., None] == 0, [255.0, 0.0, 255.0], [255.0, 255.0, 0.0])


def _origin(position: str, height: int, width: int, h: int, w: int) -> tuple[int, int]:
    """Top-left pixel of an ``h`` x ``w`` artifact at ``position``: flush with a corner, or centred on the ``x,y``
    fractions and moved inside the image where it would cross an edge."""
    where = parse_position(position)
    if isinstance(where, str):
        return (0 if where.startswith("top") else height - h), (0 if where.endswith("left") else width - w)
    x, y = where
    top = min(max(int(round(y * height - h / 2)), 0), max(height - h, 0))
    left = min(max(int(round(x * width - w / 2)), 0), max(width - w, 0))
    return top, left


@functools.lru_cache(maxsize=64)
def _layer(artifact: Artifact, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The artifact at one resolution: its coverage (H, W) in [0, 1] and its colours (H, W, 3) float."""
    side = min(height, width)
    alpha = np.zeros((height, width), dtype=np.float32)
    colour = np.zeros((height, width, 3), dtype=np.float32)
    if artifact.kind in ("corner", "patch"):
        s = max(2, int(round(artifact.size * side)))
        top, left = _origin(artifact.position, height, width, s, s)
        colour[top:top + s, left:left + s] = checkerboard(s)
        alpha[top:top + s, left:left + s] = 1.0
    elif artifact.kind == "frame":
        k = max(1, int(round(artifact.size * side)))
        alpha[:] = 1.0
        alpha[k:height - k, k:width - k] = 0.0
        colour[:] = [255.0, 96.0, 0.0]
    elif artifact.kind == "background":
        alpha[:] = 1.0
        if artifact.fill == "colour":
            colour[:] = FLAT_COLOUR
        else:
            period = max(2, int(round(artifact.size * side)))
            stripe = ((np.arange(height)[:, None] + np.arange(width)[None, :]) // period) % 2
            colour[:] = np.asarray(TEXTURE_COLOURS, dtype=np.float32)[stripe]
    else:
        alpha, colour = _text_layer(artifact, height, width)
    return alpha, colour


def _text_layer(artifact: Artifact, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """White text with a dark outline, ``size`` of the shorter side high, at the chosen position (1-px margin)."""
    font = ImageFont.load_default(size=max(6, int(round(artifact.size * min(height, width)))))
    left, top, right, bottom = font.getbbox(artifact.text, stroke_width=1)
    h, w = min(bottom - top, height), min(right - left, width)
    row, col = _origin(artifact.position, height, width, h, w)
    row, col = min(max(row, 1), height - h) if h < height else 0, min(max(col, 1), width - w) if w < width else 0
    fill, stroke = Image.new("L", (width, height)), Image.new("L", (width, height))
    ImageDraw.Draw(stroke).text((col - left, row - top), artifact.text, font=font, fill=255, stroke_width=1,
                                stroke_fill=255)
    ImageDraw.Draw(fill).text((col - left, row - top), artifact.text, font=font, fill=255)
    alpha = np.asarray(stroke, dtype=np.float32) / 255.0
    white = np.asarray(fill, dtype=np.float32) / 255.0
    # Where the glyph itself is, white; on its outline only, near-black.
    colour = np.repeat((255.0 * np.divide(white, alpha, out=np.zeros_like(white), where=alpha > 0))[..., None], 3,
                       axis=-1)
    colour = np.where(colour > 0, colour, 20.0)
    return alpha, colour.astype(np.float32)
