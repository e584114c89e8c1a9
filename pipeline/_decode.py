"""Reading image files as they really are: sniffing, the careful (Pillow) decoder, and resizing.

Most files (baseline RGB/grey JPEG, PNG, GIF, BMP without transparency or EXIF rotation) take TensorFlow's fast
parallel decoder; :func:`sniff` sends the others to :func:`decode_careful`, which composites transparency over white,
converts CMYK and palettes, scales 16-bit images, applies the EXIF orientation and takes an animation's first frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

#: What the report and audit.json say about how images reach the model.
RESIZE_POLICY = ("bilinear resize with antialiasing to the model's input size; aspect ratio not kept; a JPEG at least "
                 "twice that size on both sides is first decoded at 1/2, 1/4 or 1/8 scale (libjpeg, in the DCT "
                 "domain), the largest that stays at least that size")
#: Transparent pixels are composited over this background.
BACKGROUND = (255, 255, 255)
_FAST_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
_FAST_MODES = {"RGB", "L", "P"}
_ORIENTATION_TAG = 0x0112

#: Options of every tf.data stream of the package (the sources' decoding, a reference model's training data): no
#: autotuning (``AUTOTUNE`` parallelism is then one call per core). An autotuned stream's iterator, when it is
#: deleted, waits for the tuning thread's current round: at the end of a shard, 3.6-4.1 s in 6 of 8 shards of 2,048
#: photos (a third of the shard's 6.3 s, while Grad-CAM and the foreground estimate's workers kept both cores busy);
#: at the end of a training epoch (Keras makes an iterator per epoch), about 6 s in 5 of 6 epochs of 5,000 CIFAR-10
#: images (10.2 s against 4.1 s an epoch). Without it, none.
STREAM_OPTIONS = tf.data.Options()
STREAM_OPTIONS.autotune.enabled = False


#: Images with more pixels are skipped (with this reason) instead of decoded: at the limit, decoding and resizing one
#: takes about 0.8 GB (uint8 RGB, then float32 for the resize). Pillow's own guard against decompression bombs
#: stops at 179 megapixels.
MAX_PIXELS = 50_000_000


class Unreadable(Exception):
    """A file that cannot be decoded as an image; the message is the reason recorded for it."""


def sniff(path: Path) -> tuple[bool, tuple[int, int], str]:
    """Whether TensorFlow's decoder reads the file correctly (else it needs :func:`decode_careful`), the image's
    (height, width) as displayed (after its EXIF orientation), and its format (``JPEG``, ``PNG``, ...).

    Raises :class:`Unreadable` with the reason for an empty, unreadable or non-image file. Reads only the header.
    """
    try:
        if path.stat().st_size == 0:
            raise Unreadable("empty file (0 bytes)")
        with Image.open(path) as image:
            orientation = image.getexif().get(_ORIENTATION_TAG, 1) if image.format == "JPEG" else 1
            fast = (
                image.format in _FAST_FORMATS
                and image.mode in _FAST_MODES
                and "transparency" not in image.info
                and orientation == 1
            )
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Unreadable(_too_large(width, height))
            # Orientations 5 to 8 turn the image by 90 degrees.
            return fast, ((width, height) if orientation in (5, 6, 7, 8) else (height, width)), image.format
    except PermissionError:
        raise Unreadable("permission denied") from None
    except FileNotFoundError:
        raise Unreadable(GONE) from None
    except UnidentifiedImageError:
        raise Unreadable(f"not an image file ({path.suffix or 'no extension'})") from None
    except Image.DecompressionBombError as err:
        raise Unreadable(f"refused as a decompression bomb: {err}") from None
    except OSError as err:
        raise Unreadable(f"unreadable: {err}") from None


GONE = "the file is gone (deleted or moved during the audit)"


def _too_large(width: int, height: int) -> str:
    return (f"too large to decode safely: {width}x{height} pixels ({width * height / 1e6:.0f} megapixels; the limit "
            f"is {MAX_PIXELS / 1e6:.0f})")


def decode_careful(path: Path) -> np.ndarray:
    """Decode any image Pillow can read into RGB uint8 (H, W, 3); raises :class:`Unreadable` with the reason."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise Unreadable(_too_large(image.width, image.height))
            image.seek(0)  # the first frame of an animation
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: scale to 8 bits instead of letting a mode conversion clip.
                grey = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if grey.max() > 255 else 255.0
                return np.repeat((grey / peak * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
                image = Image.alpha_composite(canvas, rgba)
            return np.asarray(image.convert("RGB"))
    except PermissionError:
        raise Unreadable("permission denied") from None
    except FileNotFoundError:
        raise Unreadable(GONE) from None
    except Image.DecompressionBombError as err:
        raise Unreadable(f"refused as a decompression bomb: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise Unreadable(f"undecodable: {err}") from None


#: Reduced scales at which libjpeg can decode a JPEG in the DCT domain (1/2, 1/4, 1/8 of each side).
JPEG_SCALES = (1, 2, 4, 8)


def jpeg_scale(shape: tuple[int, int], size: tuple[int, int]) -> int:
    """The largest of :data:`JPEG_SCALES` at which a JPEG of ``shape`` (height, width) still decodes to at least
    ``size`` on both sides (libjpeg rounds up), so that the resize to ``size`` only ever shrinks: decoding a large
    photo at 1/4 scale costs about a sixteenth of the full decode."""
    fits = [r for r in JPEG_SCALES if -(-shape[0] // r) >= size[0] and -(-shape[1] // r) >= size[1]]
    return max(fits, default=1)


def resize_tensor(images: np.ndarray | tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Resize a batch (N, H, W, 3) or one image (H, W, 3) to ``size`` by :data:`RESIZE_POLICY`, as a uint8 tensor
    (usable inside tf.data pipelines)."""
    resized = tf.image.resize(images, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize(images: np.ndarray | tf.Tensor, size: tuple[int, int]) -> np.ndarray:
    """:func:`resize_tensor` as a numpy array."""
    return resize_tensor(images, size).numpy()


#: Largest side of the one reduced copy of a batch that its small images are made from: the explorer's thumbnails
#: (64 px), the foreground estimate's working images (48 px) and the duplicate search's thumbnails (32 px). One
#: resize from the model's input size (0.2 ms a 160 px photo here) and two cheap ones from this copy, instead of three
#: from the input size.
PREVIEW_SIDE = 64


def preview(images: np.ndarray) -> np.ndarray:
    """``images`` (N, H, W, 3) with each side reduced to at most :data:`PREVIEW_SIDE` by :data:`RESIZE_POLICY` (as
    they are when no side is larger). A small image made by resizing ``preview(images)`` is the same whether it is
    given the images or their preview, so callers can share one."""
    size = tuple(min(side, PREVIEW_SIDE) for side in images.shape[1:3])
    return images if size == tuple(images.shape[1:3]) or not len(images) else resize(images, size)


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize boolean masks (N, H, W) to ``size``: a pixel is foreground when most of its area was."""
    area = tf.image.resize(masks[..., None].astype(np.float32), size, method="area")
    return area.numpy()[..., 0] >= 0.5
