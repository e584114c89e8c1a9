"""Accuracy and training time of the reference CNN on real CIFAR-10 (the JPEG folders in ../shared/datasets).

    python benchmarks/reference_model_cifar10.py [--epochs 15] [--width 32]

Trains the reference CNN exactly as an audit without ``--model`` does (``pipeline.models.train_reference_model``:
Rescaling, three BatchNorm conv stages, flips and translations, Adam with warm-up and cosine decay) on the 50,000
train images, and prints the test accuracy (10,000 images) after every epoch with the minutes spent so far. Target:
at least 80% test accuracy within 20 minutes on a 2-core machine. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline import models
from pipeline.datasets import SourceSpec, open_source

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    train = open_source(SourceSpec(kind="folder", name=str(args.data), split="train"))
    test = open_source(SourceSpec(kind="folder", name=str(args.data), split="test"))
    x_train, y_train, _ = train.arrays((32, 32))
    x_test, y_test, _ = test.arrays((32, 32))
    load_s = time.perf_counter() - start
    print(f"loaded {len(x_train)} train and {len(x_test)} test images in {load_s:.1f} s")
    config = models.TrainConfig(epochs=args.epochs, width=args.width, batch_size=args.batch_size, seed=0)
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        trained = models.train_reference_model(
            x_train, y_train, len(train.class_names), cache_dir=Path(cache), dataset_fingerprint=f"bench-{time.time()}",
            config=config, validation=(x_test, y_test),
            progress=lambda line: (lines.append(line), print(line, flush=True)),
        )
    accuracy = trained.history["val_accuracy"]
    per_epoch = trained.seconds / args.epochs
    first_80 = next((i + 1 for i, a in enumerate(accuracy) if a >= 0.80), None)
    params = trained.model.count_params()
    print(f"{params:,} parameters; {trained.seconds / 60:.1f} min for {args.epochs} epochs "
          f"({per_epoch:.0f} s/epoch); final test accuracy {accuracy[-1]:.1%}; "
          + (f"80% first reached after epoch {first_80}" if first_80 else "80% not reached")
          + " (a schedule of fewer epochs decays sooner, so it ends higher than this run at that epoch)")
    print(json.dumps({"parameters": params, "epochs": args.epochs, "train_minutes": round(trained.seconds / 60, 2),
                      "seconds_per_epoch": round(per_epoch, 1), "test_accuracy": round(accuracy[-1], 4),
                      "test_accuracy_per_epoch": [round(a, 4) for a in accuracy], "load_s": round(load_s, 1)}))


if __name__ == "__main__":
    main()
