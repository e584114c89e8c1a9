"""Grad-CAM throughput on the real CIFAR-10 test split, against a per-image reference and the forward-pass floor.

    python benchmarks/gradcam_throughput.py [--data ../shared/datasets/cifar10] [--repeats 3]

Prints images/s of (a) the one-image-at-a-time reference (one GradientTape per image, as in the Keras tutorial; on a
subset), (b) the engine computing the predicted-class and given-label CAMs of all 10,000 images, (c) the forward-pass
floor (``model.predict``), each the median of ``--repeats`` runs, and the peak RSS of auditing the 10,000 test images
versus the 50,000 train images (each in a fresh process: decode, Grad-CAM, statistics). The last line is one JSON
object with the figures.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    from pipeline.datasets import SourceSpec, open_source
    from pipeline.gradcam import GradCAM

    source = open_source(SourceSpec(kind="folder", name=str(args.data), split="test"))
    images, labels, _ = source.arrays((32, 32))
    images = images.astype("float32")
    model = small_cnn()
    engine = GradCAM(model)
    print(f"CIFAR-10 test: {len(images)} images; model {model.count_params():,} parameters; "
          f"target layer {engine.layer.name}; batch size {args.batch_size}")

    def run_engine():
        for i in range(0, len(images), args.batch_size):
            engine.explain(images[i : i + args.batch_size], labels[i : i + args.batch_size])

    subset = slice(0, args.reference_images)
    # Warm-up: tracing and the first batch's allocations are not throughput.
    run_engine()
    model.predict(images[:512], batch_size=args.batch_size, verbose=0)
    per_image_reference(model, engine.layer.name, images[:5], labels[:5])
    figures = {"reference": [], "engine": [], "floor": []}
    for repeat in range(args.repeats):
        figures["reference"].append(rate(lambda: per_image_reference(model, engine.layer.name, images[subset],
                                                                     labels[subset]), args.reference_images))
        figures["engine"].append(rate(run_engine, len(images)))
        figures["floor"].append(rate(lambda: model.predict(images, batch_size=args.batch_size, verbose=0),
                                     len(images)))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in figures.items()))
    reference, engine_rate, floor = (statistics.median(figures[k]) for k in ("reference", "engine", "floor"))
    print(f"(a) per-image reference: {reference:,.0f} images/s (median of {args.repeats}, "
          f"{args.reference_images} images)")
    print(f"(b) engine, predicted + label CAMs: {engine_rate:,.0f} images/s")
    print(f"(c) forward pass floor (model.predict): {floor:,.0f} images/s")
    print(f"b/a = {engine_rate / reference:.1f}x, b/c = {engine_rate / floor:.2f}")
    rss_10k = peak_rss_mb(args.data, "test")
    rss_50k = peak_rss_mb(args.data, "train")
    print(f"peak RSS auditing 10,000 images: {rss_10k:,.0f} MB; 50,000 images: {rss_50k:,.0f} MB "
          f"({rss_50k / rss_10k - 1:+.1%})")
    print(json.dumps({
        "reference_img_s": round(reference, 1), "engine_img_s": round(engine_rate, 1), "floor_img_s": round(floor, 1),
        "engine_vs_reference": round(engine_rate / reference, 2), "engine_vs_floor": round(engine_rate / floor, 3),
        "rss_10k_mb": round(rss_10k, 1), "rss_50k_mb": round(rss_50k, 1),
    }))


if __name__ == "__main__":
    main()
