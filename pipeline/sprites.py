"""The explorer's thumbnails: every audited image as the model saw it, small, in JPEG sprite sheets.

The shards make them while each batch is in memory (:func:`pipeline.samples.scan`), so the report never decodes
the dataset again: it writes the sheets as they are and gives the explorer each sample's cell, its *slot*.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ._decode import preview, resize
from .datasets import Source

#: Largest side in pixels of an explorer thumbnail; smaller images keep their own size (32 px for CIFAR-10).
THUMB_SIDE = 64
#: Thumbnails per row and per column of one sprite sheet.
SHEET_GRID = 16
#: Thumbnails per sheet: slot ``s`` is cell ``s % CELLS_PER_SHEET`` (row by row) of sheet ``s // CELLS_PER_SHEET``.
CELLS_PER_SHEET = SHEET_GRID**2
#: JPEG quality of the sprite sheets: about 280 bytes per 32x32 CIFAR-10 thumbnail and 1 KB per 64x64 photo. WebP at
#: the same quality is 10-20% smaller but 40 times slower to encode (90 ms against 2 ms a 1024x1024 sheet of photos
#: here: 9 s of a 25,000-photo audit). The cells (32 or 64 px) are whole 8x8 JPEG blocks, so no cell bleeds into
#: another.
SHEET_QUALITY = 80
#: The sheets' file format and the extension of their files in the report.
SHEET_FORMAT, SHEET_SUFFIX = "JPEG", ".jpg"
#: Colour of a cell with no picture: the rest of a sheet's last row, an image that can no longer be read.
GREY = 128


def thumbnail_side(natural_size: tuple[int, int] | None) -> int:
    """Side of the thumbnails of a source whose images all have ``natural_size`` (None: sizes differ): the images'
    own side up to :data:`THUMB_SIDE`."""
    return min(THUMB_SIDE, max(natural_size)) if natural_size else THUMB_SIDE


@dataclass(frozen=True)
class SpriteSheets:
    """Thumbnails of ``side`` x ``side`` pixels in JPEG sheets of :data:`SHEET_GRID` x :data:`SHEET_GRID` cells."""

    side: int
    sheets: list[bytes]  # the JPEG files
    slots: np.ndarray  # (n,) uint32 each sample's cell: sheet * CELLS_PER_SHEET + cell, rows as in the table


def encode_sheet(thumbs: np.ndarray) -> bytes:
    """Up to :data:`CELLS_PER_SHEET` thumbnails (n, side, side, 3) uint8 as one JPEG sheet, row by row; the last
    row is filled with grey, and the sheet has only the rows it needs."""
    side = thumbs.shape[1]
    rows = -(-len(thumbs) // SHEET_GRID)
    cells = np.full((rows * SHEET_GRID, side, side, 3), GREY, dtype=np.uint8)
    cells[:len(thumbs)] = thumbs
    sheet = cells.reshape(rows, SHEET_GRID, side, side, 3).transpose(0, 2, 1, 3, 4)
    out = io.BytesIO()
    Image.fromarray(sheet.reshape(rows * side, SHEET_GRID * side, 3)).save(out, SHEET_FORMAT, quality=SHEET_QUALITY)
    return out.getvalue()


class SheetWriter:
    """Thumbnails of batches added in order, each sheet encoded as soon as it is full: at most one sheet's
    thumbnails wait as pixels. Sample ``i`` added is slot ``i``."""

    def __init__(self, side: int):
        self.side = side
        self.count = 0
        self._sheets: list[bytes] = []
        self._waiting = np.zeros((0, side, side, 3), np.uint8)

    def add(self, images: np.ndarray) -> None:
        """Add a batch of images (n, H, W, 3) uint8 of any size, resized (bilinear, antialiased) to a square from
        their reduced copy (:func:`pipeline._decode.preview`, which may be given instead of the images)."""
        images = preview(images)
        if images.shape[1:3] != (self.side, self.side) and len(images):
            images = resize(images, (self.side, self.side))
        self._waiting = np.concatenate([self._waiting, images.astype(np.uint8, copy=False)])
        self.count += len(images)
        while len(self._waiting) >= CELLS_PER_SHEET:
            self._sheets.append(encode_sheet(self._waiting[:CELLS_PER_SHEET]))
            self._waiting = self._waiting[CELLS_PER_SHEET:]

    def finish(self) -> SpriteSheets:
        if len(self._waiting):
            self._sheets.append(encode_sheet(self._waiting))
            self._waiting = self._waiting[:0]
        return SpriteSheets(self.side, self._sheets, np.arange(self.count, dtype=np.uint32))


def concatenate(parts: list[SpriteSheets | None]) -> SpriteSheets | None:
    """The sheets of ``parts`` one after another, with the slots re-based onto them; None when a part has none."""
    if not parts or any(part is None for part in parts):
        return None
    first_slot = np.cumsum([0] + [len(part.sheets) for part in parts[:-1]]) * CELLS_PER_SHEET
    return SpriteSheets(parts[0].side, [sheet for part in parts for sheet in part.sheets],
                        np.concatenate([part.slots + first for part, first in zip(parts, first_slot, strict=True)])
                        .astype(np.uint32))


def decode_sheets(source: Source, sample_ids: np.ndarray) -> SpriteSheets:
    """The sprite sheets of ``sample_ids`` made by decoding ``source`` again, for a report written from tables alone
    (an audit's shards make them as they go); grey where an image can no longer be read."""
    side = thumbnail_side(source.natural_size)
    row_of = {sample_id: i for i, sample_id in enumerate(sample_ids)}
    slots = np.full(len(sample_ids), -1, dtype=np.int64)
    writer = SheetWriter(side)
    for batch in source.batches((side, side), 512):
        rows = np.array([row_of.get(sample_id, -1) for sample_id in batch.sample_ids], dtype=np.int64)
        known = rows >= 0
        slots[rows[known]] = writer.count + np.arange(known.sum())
        writer.add(batch.images[known])
    missing = np.flatnonzero(slots < 0)
    slots[missing] = writer.count + np.arange(len(missing))
    writer.add(np.full((len(missing), side, side, 3), GREY, dtype=np.uint8))
    sheets = writer.finish()
    return SpriteSheets(side, sheets.sheets, slots.astype(np.uint32))
