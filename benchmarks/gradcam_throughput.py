"""Grad-CAM throughput against a per-image reference and against a fair floor: a compiled forward-only pass.

    python benchmarks/gradcam_throughput.py [--data ../shared/datasets/cifar10]
                                            [--photos ../shared/datasets/cats_vs_dogs] [--repeats 5]

For two models, the engine (probabilities, predicted-class and given-label CAMs of every image) is
timed against the floor: the same model's forward pass alone, compiled with ``tf.function`` and run in the same batch
loop (the same float32 conversion in, the same ``.numpy()`` out). Both are warmed first (tracing, and the tail batch
of another size), then timed alternately, ``--repeats`` times; the figures are medians:

- the 290k-parameter reference CNN on the 10,000 CIFAR-10 test images at 32x32 (plus the one-image-at-a-time
  reference of the Keras tutorial, on a subset);
- a photo model, MobileNetV2 (alpha 0.35, ``weights=None``) at 160x160, on the 2,002 Cats vs Dogs photos.

Then the peak RSS of auditing the 10,000 test images versus the 50,000 train images (each in a fresh process: decode,
Grad-CAM, statistics). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"
DEFAULT_PHOTOS = DEFAULT_DATA.parent / "cats_vs_dogs"


def small_cnn():
    """The 280k-parameter reference CNN (width 32), untrained: throughput does not depend on the weights."""
    from pipeline.models import build_reference_cnn

    return build_reference_cnn((32, 32, 3), 10, width=32)


def per_image_reference(model, layer_name: str, images, labels) -> None:
    """The tutorial's shape: a fresh GradientTape and a Python step per image, for the predicted and given label."""
    import keras
    import tensorflow as tf

    head = model.get_layer("classifier")
    linear = keras.layers.Dense(head.units)
    linear.build(head.input.shape)
    linear.set_weights(head.get_weights())
    grad_model = keras.Model(model.inputs[0], [model.get_layer(layer_name).output, head.input])
    for image, label in zip(images, labels, strict=True):
        for target in ("pred", "label"):
            with tf.GradientTape() as tape:
                acts, features = grad_model(image[None], training=False)
                logits = linear(features)
                index = int(tf.argmax(logits[0])) if target == "pred" else int(label)
                score = logits[:, index]
            grads = tape.gradient(score, acts)
            weights = tf.reduce_mean(grads, axis=(0, 1, 2))
            heatmap = tf.nn.relu(tf.reduce_sum(acts[0] * weights, axis=-1))
            heatmap.numpy()


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def peak_rss_mb(data: Path, split: str) -> float:
    """Peak RSS (MB) of a fresh process that audits a whole split: decode, Grad-CAM and statistics, shard by shard."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from gradcam_throughput import small_cnn
from pipeline.datasets import SourceSpec, open_source
from pipeline.gradcam import GradCAM
from pipeline.samples import merge, scan
source = open_source(SourceSpec(kind="folder", name={str(data)!r}, split={split!r}))
engine = GradCAM(small_cnn())
shards = [scan(source, [engine], start, start + 2048, 256) for start in range(0, len(source), 2048)]
merged = merge(shards)
assert len(merged.table) == len(source)
current = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, current / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, end = (float(x) for x in result.stdout.strip().splitlines()[-1].split())
    print(f"  {split}: peak RSS {peak:,.0f} MB, RSS at the end {end:,.0f} MB")
    return peak


def engine_and_floor(model, images, labels, batch_size: int, repeats: int, extra=None) -> dict:
    """Images/s of the engine and of the compiled forward-only floor (and of ``extra``, a name -> (function, count)),
    warmed, alternated, medians of ``repeats``."""
    import tensorflow as tf

    from pipeline.gradcam import GradCAM

    engine = GradCAM(model)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run_engine():
        for i in range(0, len(images), batch_size):
            engine.explain(images[i : i + batch_size], labels[i : i + batch_size])

    def run_floor():
        for i in range(0, len(images), batch_size):
            forward(tf.convert_to_tensor(images[i : i + batch_size], dtype=tf.float32)).numpy()

    timed = {"engine": (run_engine, len(images)), "floor": (run_floor, len(images)), **(extra or {})}
    for fn, _ in timed.values():  # warm-up: tracing (full and tail batches) and first allocations
        fn()
    figures = {name: [] for name in timed}
    for repeat in range(repeats):
        for name, (fn, count) in timed.items():
            figures[name].append(rate(fn, count))
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in figures.items()))
    return {name: statistics.median(values) for name, values in figures.items()} | {"layer": engine.layer.name}


def photos(folder: Path, size: int, limit: int | None = None):
    """The photos of an image folder at ``size`` x ``size``, with their labels."""
    from pipeline.datasets import SourceSpec, open_source

    images, labels, _ = open_source(SourceSpec(kind="folder", name=str(folder))).arrays((size, size))
    return images[:limit].astype("float32"), labels[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--photo-batch-size", type=int, default=64)
    args = parser.parse_args()

    from pipeline.datasets import SourceSpec, open_source
    from pipeline.models import build_transfer_model

    source = open_source(SourceSpec(kind="folder", name=str(args.data), split="test"))
    images, labels, _ = source.arrays((32, 32))
    images = images.astype("float32")
    model = small_cnn()
    print(f"CIFAR-10 test: {len(images)} images; model {model.count_params():,} parameters; batch size "
          f"{args.batch_size}")
    layer = model.get_layer("relu3_2").name
    subset = slice(0, args.reference_images)
    cifar = engine_and_floor(model, images, labels, args.batch_size, args.repeats, extra={
        "reference": (lambda: per_image_reference(model, layer, images[subset], labels[subset]),
                      args.reference_images)})
    print(f"(a) per-image reference: {cifar['reference']:,.0f} images/s ({args.reference_images} images)")
    print(f"(b) engine, predicted + label CAMs: {cifar['engine']:,.0f} images/s")
    print(f"(c) floor, compiled forward pass in the same loop: {cifar['floor']:,.0f} images/s")
    print(f"b/a = {cifar['engine'] / cifar['reference']:.1f}x, b/c = {cifar['engine'] / cifar['floor']:.2f} "
          f"(medians of {args.repeats})")

    photo_images, photo_labels = photos(args.photos, 160)
    mobilenet = build_transfer_model((160, 160), 2, weights=None)
    print(f"Cats vs Dogs: {len(photo_images)} photos at 160x160; MobileNetV2 (alpha 0.35) "
          f"{mobilenet.count_params():,} parameters; batch size {args.photo_batch_size}")
    photo = engine_and_floor(mobilenet, photo_images, photo_labels, args.photo_batch_size, args.repeats)
    print(f"engine {photo['engine']:,.0f} images/s, floor {photo['floor']:,.0f} images/s, "
          f"engine/floor = {photo['engine'] / photo['floor']:.2f} (target layer {photo['layer']})")

    rss_10k = peak_rss_mb(args.data, "test")
    rss_50k = peak_rss_mb(args.data, "train")
    print(f"peak RSS auditing 10,000 images: {rss_10k:,.0f} MB; 50,000 images: {rss_50k:,.0f} MB "
          f"({rss_50k / rss_10k - 1:+.1%})")
    print(json.dumps({
        "reference_img_s": round(cifar["reference"], 1), "engine_img_s": round(cifar["engine"], 1),
        "floor_img_s": round(cifar["floor"], 1), "engine_vs_reference": round(cifar["engine"] / cifar["reference"], 2),
        "engine_vs_floor": round(cifar["engine"] / cifar["floor"], 3),
        "photo_engine_img_s": round(photo["engine"], 1), "photo_floor_img_s": round(photo["floor"], 1),
        "photo_engine_vs_floor": round(photo["engine"] / photo["floor"], 3),
        "rss_10k_mb": round(rss_10k, 1), "rss_50k_mb": round(rss_50k, 1),
    }))


if __name__ == "__main__":
    main()
