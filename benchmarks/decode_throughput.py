"""Image loading throughput of the folder source against a plain tf.data pipeline, on real JPEG folders.

    python benchmarks/decode_throughput.py [--datasets ../shared/datasets] [--repeats 3]

For the CIFAR-10 test split (10,000 JPEGs, 32x32) and the Cats vs Dogs photos (2,002 JPEGs, up to 1023x768, resized to
224x224 and 96x96), prints images/s of (a) gradcam-audit's ``FolderSource`` (header sniffing at opening, which routes
odd files to the careful decoder, then parallel decoding with failures caught), the opening cost separately, and
(b) the plain pipeline: ``list_files`` -> ``read_file`` -> ``decode_jpeg`` (-> ``resize`` for the photos) in parallel,
no checks.
Medians of ``--repeats`` runs (5), alternating which side runs first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import tensorflow as tf

from pipeline.datasets import FolderSource, SourceSpec

DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def plain_tf_data(pattern: str, size: tuple[int, int] | None, batch_size: int) -> int:
    """Decode (and resize, unless ``size`` is None: the images already have the model's size) with no checks."""
    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return image if size is None else tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)

    stream = (tf.data.Dataset.list_files(pattern, shuffle=False)
              .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2))
    return sum(int(batch.shape[0]) for batch in stream)


def measure(name: str, root: Path, split: str | None, pattern: str, size: tuple[int, int], repeats: int,
            native: bool = False) -> dict:
    opened, ours, plain = [], [], []
    plain_size = None if native else size
    plain_tf_data(pattern, plain_size, 256)  # warm the page cache, so neither side pays the first disk read
    for repeat in range(repeats):
        start = time.perf_counter()
        source = FolderSource(SourceSpec(kind="folder", name=str(root), split=split))
        opened.append(time.perf_counter() - start)
        # Alternate which side runs first: this machine's speed drifts within seconds.
        for side in ("ours", "plain") if repeat % 2 == 0 else ("plain", "ours"):
            start = time.perf_counter()
            if side == "ours":
                count = sum(len(b.labels) for b in source.batches(size, 256))
                ours.append(count / (time.perf_counter() - start))
            else:
                plain_count = plain_tf_data(pattern, plain_size, 256)
                plain.append(plain_count / (time.perf_counter() - start))
        assert count == plain_count == len(source), (count, plain_count, len(source))
    row = {"images": count, "size": f"{size[0]}x{size[1]}", "open_s": statistics.median(opened),
           "source_img_s": statistics.median(ours), "plain_tf_data_img_s": statistics.median(plain)}
    row["source_vs_plain"] = row["source_img_s"] / row["plain_tf_data_img_s"]
    print(f"{name} at {row['size']}: {count} images; open (list, stat, sniff headers) {row['open_s']:.2f} s; "
          f"decode+resize {row['source_img_s']:,.0f} img/s vs plain tf.data {row['plain_tf_data_img_s']:,.0f} img/s "
          f"({row['source_vs_plain']:.2f}x)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cifar, cats = args.datasets / "cifar10", args.datasets / "cats_vs_dogs"
    results = {
        "cifar10_test_32": measure("CIFAR-10 test", cifar, "test", str(cifar / "test" / "*" / "*.jpg"), (32, 32),
                                   args.repeats, native=True),
        "cats_vs_dogs_224": measure("Cats vs Dogs", cats, None, str(cats / "*" / "*.jpg"), (224, 224), args.repeats),
        "cats_vs_dogs_96": measure("Cats vs Dogs", cats, None, str(cats / "*" / "*.jpg"), (96, 96), args.repeats),
    }
    print(json.dumps({k: {m: round(v, 3) if isinstance(v, float) else v for m, v in row.items()}
                      for k, row in results.items()}))


if __name__ == "__main__":
    main()
