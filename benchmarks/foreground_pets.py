"""How good is the foreground estimate? Measured against the Oxford-IIIT Pet trimaps in ../shared/datasets.

    python benchmarks/foreground_pets.py [--size 96] [--epochs 15]

For every image of oxford_pets_subset with a trimap (pet = trimap 1 or 3, background = 2, as the audit reads
trimaps), at the audit's input size for photos (96x96 by default, the reference CNN's):

- mean IoU of the estimated mask (:func:`pipeline.foreground.estimate_foreground`, Zhu et al. 2014) with the true
  mask, next to two baselines: everything is foreground, and a centred ellipse covering the middle of the image;
- mean absolute error of ``background_attention`` computed with the estimated mask versus with the true mask, on
  real Grad-CAM heatmaps: a reference CNN is trained on the pet images (3 classes; in-sample heatmaps are fine
  here, they only weigh the masks) and each image's predicted-class CAM is used;
- the estimate's time per image (median of 3 passes; one BLAS thread, as in an audit).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import _decode, foreground, heatmaps, models
from pipeline.gradcam import GradCAM
from pipeline.heatmaps import upsample

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "oxford_pets_subset"


def load(root: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Images and true masks at ``size``, labels from the breed in the file name; files that are not images
    (the subset's .mat files) are left out."""
    images, masks, breeds, names = [], [], [], []
    for path in sorted((root / "images").iterdir()):
        trimap = root / "annotations" / "trimaps" / f"{path.stem}.png"
        if not trimap.is_file():
            continue
        try:
            image = Image.open(path)
            image.seek(0)
            rgb = np.asarray(image.convert("RGB"))
        except OSError:
            continue
        images.append(_decode.resize(rgb, size))
        masks.append(_decode.resize_masks((np.asarray(Image.open(trimap)) != 2)[None], size)[0])
        breeds.append(path.stem.rsplit("_", 1)[0])
        names.append(path.name)
    classes = sorted(set(breeds))
    return np.stack(images), np.stack(masks), np.array([classes.index(b) for b in breeds]), names


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, (a & b).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)


def centred_ellipse(n: int, size: tuple[int, int]) -> np.ndarray:
    """An ellipse with half-axes of 0.35 of each side around the centre (38% of the area)."""
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    inside = ((yy + 0.5) / size[0] - 0.5) ** 2 + ((xx + 0.5) / size[1] - 0.5) ** 2 <= 0.35**2
    return np.repeat(inside[None], n, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    size = (args.size, args.size)

    images, truth, labels, _ = load(args.data, size)
    print(f"{len(images)} images with trimaps at {size[0]}x{size[1]}; true foreground covers "
          f"{truth.mean():.0%} of the pixels")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        estimate = foreground.estimate_foreground(images)
        times.append((time.perf_counter() - start) / len(images))
    estimates = {"zhu2014": estimate, "all_foreground": np.ones_like(truth),
                 "centred_ellipse": centred_ellipse(len(images), size)}

    with tempfile.TemporaryDirectory() as cache:
        trained = models.train_reference_model(
            images, labels, int(labels.max()) + 1, cache_dir=Path(cache), dataset_fingerprint=f"pets-{time.time()}",
            config=models.TrainConfig(epochs=args.epochs), progress=lambda line: None)
    explainer = GradCAM(trained.model)
    cams = np.concatenate([explainer.explain(images[i:i + 64], labels[i:i + 64]).cam_pred
                           for i in range(0, len(images), 64)])
    mass, valid = heatmaps.to_mass(upsample(cams, size))
    attention_true = heatmaps.background_attention(mass[valid], truth[valid])

    figures = {"images": len(images), "size": args.size, "cams": int(valid.sum()),
               "ms_per_image": round(1000 * float(np.median(times)), 2),
               "true_background_attention_mean": round(float(attention_true.mean()), 4)}
    for name, masks in estimates.items():
        attention = heatmaps.background_attention(mass[valid], masks[valid])
        figures[f"{name}_iou"] = round(float(iou(masks, truth).mean()), 4)
        figures[f"{name}_attention_mae"] = round(float(np.abs(attention - attention_true).mean()), 4)
        print(f"{name:16s} mean IoU {figures[f'{name}_iou']:.3f}   background_attention MAE "
              f"{figures[f'{name}_attention_mae']:.3f}")
    print(f"estimate: {figures['ms_per_image']} ms per image (median of 3 passes)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
