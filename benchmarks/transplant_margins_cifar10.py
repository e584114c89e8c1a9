"""The hot spot rule's margins on real CIFAR-10: every class's spot, mark and transplant, planted or clean.

    python benchmarks/transplant_margins_cifar10.py [--train-limit 10000] [--epochs 10] [--out DIR]

For each of the self-validation's plants (``benchmarks/validate_cifar10.py``: the corner mark on 'horse', the frame
on 'cat', the stamp on 'truck', the interior patches on 'deer' and 'ship', half of each class) and for the clean
control, runs the same audit (the reference models are cached: with the same options as that benchmark, nothing is
retrained), then scans the audited split again with the audit's model and, for *every* class, finds its hot spot
(:func:`pipeline.findings.class_hot_spots`): how alike its peaking images look on the spot and at its mark (the most
alike window within :data:`pipeline.findings.MARK_SEARCH` window sides), and the mark put to
:func:`pipeline.occlusion.transplant_check` as a candidate that blanking did not confirm would be: pasted as found
and grown by :data:`pipeline.findings.TRANSPLANT_GROWTH` cell (and, for comparison, the window where the heatmaps
peak, grown alike: the region blamed before the mark search), from the class's images beyond the other classes' 95%
quantile of the peak margin on the spot (its tail, when each side has 50 images; else all of it). Prints one row per
model and class and a summary: the planted marks' figures against the largest of the clean classes'. The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _tables import print_table
from validate_cifar10 import DEFAULT_DATA, PLANTS

from pipeline import audit, findings, heatmaps, occlusion, runs, samples
from pipeline.artifacts import Artifact
from pipeline.config import AuditConfig
from pipeline.datasets import open_source


def class_rows(result, name: str, planted_class: str | None) -> list[dict]:
    """Every class's hot spot of one audit's model, put to the transplant check as found and grown."""
    config = AuditConfig(**{key: value for key, value in result.meta["config"].items() if key != "thresholds"})
    source = open_source(runs.source_spec(config))
    explainers = [runs.explainer(config, path) for path in result.meta["model"]["paths"]]
    scanned = samples.scan(source, explainers, 0, len(source), config.batch_size)
    labels, ids = scanned.table["label"].to_numpy(), scanned.table["sample_id"].to_numpy()
    size = tuple(result.meta["model"]["input_size"])
    spots = findings.class_hot_spots(scanned.label_cams, labels, len(source.class_names), size,
                                     thumbnails=scanned.thumbnails)
    rows, growth = [], findings.TRANSPLANT_GROWTH
    for k, class_name in enumerate(source.class_names):
        margins, mine = spots.margins[:, k], labels == k
        tail = margins > np.nanquantile(margins[~mine], findings.DEFAULT_THRESHOLDS.tail_quantile)
        population = tail if min((tail & mine).sum(), (tail & ~mine).sum()) >= findings.MIN_CHECKED_TAIL else None
        row = {"model": name, "class": class_name, "planted": class_name == planted_class,
               "excess": float(spots.peak_share[k] - spots.others_share[k]),
               "spot_likeness": float(spots.consistency_on_spot[k]), "likeness": float(spots.consistency[k])}
        # At the mark as found and grown, and, for comparison, at the window where the heatmaps peak, grown.
        for label, region in (("found", spots.marks[k]), ("grown", heatmaps.grown(spots.marks[k], growth)),
                              ("peak", heatmaps.grown(spots.masks[k], growth))):
            result_k = occlusion.transplant_check(explainers, source, labels, ids, k, region, population=population)
            row |= {f"{label}_rate": result_k.class_rate, f"{label}_control": result_k.control_rate,
                    f"{label}_excess": result_k.excess, "samples": result_k.samples}
        rows.append(row)
        print(f"{name} {class_name}: grown excess {row['grown_excess']:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, help="where the reports go (default: a new temporary folder)")
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp())  # made only when no folder is given
    options = {"train_limit": args.train_limit, "epochs": args.epochs}

    rows = []
    for n, plant in enumerate(PLANTS):
        artifact = Artifact(**{"rate": 0.5, **plant})
        result = audit(str(args.data), artifact=artifact.as_dict(), out=str(args.out / f"{n}-{artifact.kind}"),
                       **options)
        rows += class_rows(result, f"{artifact.kind} on {artifact.class_name}", artifact.class_name)
    clean = audit(str(args.data), out=str(args.out / "clean"), **options)
    rows += class_rows(clean, "control", None)

    print(f"\nCIFAR-10 test split, reference CNNs trained on {args.train_limit} images for {args.epochs} epochs: each "
          "class's hot spot (excess of its images peaking there), how alike they look on it and at its mark, and the "
          "mark pasted into other classes' images from its tail (rate called the class) and from other classes' "
          "images (control), as found and grown")
    print_table(rows, [("model", "model", 16, ""), ("class", "class", 10, ""), ("planted", "planted", 7, ""),
                       ("excess", "excess", 6, ".3f"), ("on spot", "spot_likeness", 7, ".2f"),
                       ("at mark", "likeness", 7, ".2f"), ("found", "found_rate", 6, ".2f"),
                       ("ctrl", "found_control", 5, ".2f"), ("excess", "found_excess", 6, ".2f"),
                       ("grown", "grown_rate", 6, ".2f"), ("ctrl", "grown_control", 5, ".2f"),
                       ("excess", "grown_excess", 6, ".2f"), ("peak", "peak_rate", 6, ".2f"),
                       ("ctrl", "peak_control", 5, ".2f"), ("excess", "peak_excess", 6, ".2f"),
                       ("n", "samples", 0, "d")])
    planted = [row for row in rows if row["planted"]]
    clean_rows = [row for row in rows if not row["planted"]]
    for label in ("found", "grown", "peak"):
        largest = max(clean_rows, key=lambda row: row[f"{label}_excess"])
        print(f"{label}: planted " + ", ".join(f"{row['class']} {row[f'{label}_excess']:.2f}" for row in planted)
              + f"; the {len(clean_rows)} clean classes {largest[f'{label}_excess']:.2f} at most ({largest['class']}, "
              f"{largest['model']}; likeness {largest['likeness']:.2f})")
    for key, words in (("excess", "spot excess"), ("spot_likeness", "likeness on the spot"),
                       ("likeness", "likeness at the mark")):
        print(f"{words}: planted " + ", ".join(f"{row['class']} {row[key]:.2f}" for row in planted)
              + f"; the clean classes {max(row[key] for row in clean_rows):.2f} at most")
    print(f"a spot candidate needs an excess of {findings.DEFAULT_THRESHOLDS.min_spot_excess} and a likeness of "
          f"{findings.DEFAULT_THRESHOLDS.min_spot_consistency}; a transplant, an excess of "
          f"{findings.DEFAULT_THRESHOLDS.min_transplant_excess}")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
