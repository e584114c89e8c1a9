"""Self-validation on real CIFAR-10: plant each artifact kind into one class, train, audit, measure detection.

    python benchmarks/validate_cifar10.py [--train-limit 25000] [--epochs 10] [--rate 0.5] [--sweep]

Runs what ``gradcam-audit validate`` runs, once per artifact (a corner mark on 'horse' in the top-left corner, a
border frame on 'cat', a text stamp on 'truck' in the bottom-left corner, an interior patch on 'deer' at (0.5, 0.4)
and one on 'ship' at (0.3, 0.7), each on ``--rate`` of the class's images in both splits; with ``--sweep`` also the
deer patch at rates 0.2 and 0.1, opacities 0.5 and 0.25, sizes 0.1 and 0.06), plus a control audit of the clean
dataset with the same training settings, and prints one table: the planted class's rank among the classes, whether
it is flagged, which clean classes are flagged, the sample-level AUROC and precision at k of stamped versus clean
test images, and the precision and recall of the ``uses_shortcut`` sample flag for the stamped images; side by side,
the AUROC and the flag's precision and recall by each per-sample score: the focus on the blamed region of each
image's given-label CAM, and its reliance on the region (the drop of its label's log-odds when the region is
blanked, measured for a candidate). Reference
models are cached, so a second run only audits. Reports go to ``--out`` (default: a temporary folder). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _tables import print_table

from pipeline import audit
from pipeline.artifacts import Artifact
from pipeline.validation import spot_figures, transplant_figures

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"
PLANTS = (
    {"kind": "corner", "class_name": "horse", "position": "top-left"},
    {"kind": "frame", "class_name": "cat"},
    {"kind": "stamp", "class_name": "truck", "position": "bottom-left"},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4"},
    {"kind": "patch", "class_name": "ship", "position": "0.3,0.7"},
)
#: ``--sweep``: where detection of an interior patch stops, one option changed at a time from the first patch row.
SWEEP = (
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "rate": 0.2},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "rate": 0.1},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "opacity": 0.5},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "opacity": 0.25},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "size": 0.1},
    {"kind": "patch", "class_name": "deer", "position": "0.5,0.4", "size": 0.06},
)


def spray_clusters(classes) -> dict:
    """How many SpRAy clusters each class's heatmaps fall into."""
    return dict(zip(classes["class_name"], classes["spray_clusters"].astype(int), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-limit", type=int, default=25_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--out", type=Path, help="where the reports go (default: a new temporary folder)")
    parser.add_argument("--sweep", action="store_true", help="also the interior patch at lower rate, opacity and size")
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp())  # made only when no folder is given
    options = {"train_limit": args.train_limit, "epochs": args.epochs}

    rows = []
    for n, plant in enumerate(PLANTS + (SWEEP if args.sweep else ())):
        artifact = Artifact(**{"rate": args.rate, **plant})
        start = time.perf_counter()
        result = audit(str(args.data), artifact=artifact.as_dict(), out=str(args.out / f"{n}-{artifact.kind}"),
                       **options)
        figures = result.meta["validation"]
        planted = result.classes.set_index("class_name").loc[artifact.class_name]
        rows.append({"artifact": f"{artifact.kind} ({artifact.position if artifact.kind != 'frame' else 'all round'}"
                                 f", size {artifact.size}, opacity {artifact.opacity}, rate {artifact.rate})",
                     "accuracy": result.meta["results"]["accuracy"], "seconds": time.perf_counter() - start,
                     "spray_clusters": spray_clusters(result.classes),
                     "shortcut_cluster_share": planted["shortcut_cluster_share"],
                     "shortcut_cluster_mass": planted["shortcut_cluster_focus"] * planted["region_share"], **figures})
    start = time.perf_counter()
    clean = audit(str(args.data), out=str(args.out / "clean"), **options)
    rows.append({"artifact": "none (control)", "planted_class": "-", "rank": None, "flagged": None,
                 "clean_classes_flagged": clean.flagged_classes, "accuracy": clean.meta["results"]["accuracy"],
                 "seconds": time.perf_counter() - start, "spray_clusters": spray_clusters(clean.classes),
                 "max_clean_tail_share": float(clean.classes["shortcut_score"].max()),
                 **spot_figures(clean.classes), **transplant_figures(clean.classes)})

    print(f"\nCIFAR-10, reference CNN trained on {args.train_limit} planted train images for {args.epochs} epochs; "
          f"test split audited ({len(clean.samples):,} images); artifact on {args.rate:.0%} of the class's images")
    print_table(rows, [("artifact", "artifact", 66, ""), ("class", "planted_class", 6, ""), ("rank", "rank", 4, "d"),
                       ("flag", "flagged", 5, ""), ("AUROC", "sample_auroc", 6, ".3f"),
                       ("P@k", "precision_at_stamped", 5, ".3f"), ("us.P", "uses_shortcut_precision", 5, ".3f"),
                       ("us.R", "uses_shortcut_recall", 5, ".3f"), ("score", "sample_score", 8, ""),
                       ("f.AUROC", "focus_auroc", 7, ".3f"), ("r.AUROC", "reliance_auroc", 7, ".3f"),
                       ("f.us.P", "focus_uses_precision", 6, ".3f"), ("f.us.R", "focus_uses_recall", 6, ".3f"),
                       ("r.us.P", "reliance_uses_precision", 6, ".3f"), ("r.us.R", "reliance_uses_recall", 6, ".3f"),
                       ("acc", "accuracy", 5, ".3f"),
                       ("spot.ex", "spot_excess", 7, ".3f"), ("spot.lk", "spot_consistency", 7, ".2f"),
                       ("clean.ex", "max_clean_spot_excess", 8, ".3f"),
                       ("clean.lk", "max_clean_spot_consistency", 8, ".2f"),
                       ("by", "confirmed_by", 10, ""), ("tr.ex", "transplant_excess", 6, ".2f"),
                       ("clean.tr", "max_clean_transplant_excess", 8, ".2f"),
                       ("clean classes flagged", "clean_classes_flagged", 0, "")])
    print("score: the audit's per-sample score (AUROC, P@k, us.); f.: by the focus on the blamed region, r.: by the "
          "reliance on it; spot.ex / spot.lk: the planted class's hot spot, the excess of its images peaking there and "
          "how alike they look there; clean.ex / clean.lk: the largest of the clean classes'; by: what confirmed the "
          "planted class (occlusion, reliance, transplant); tr.ex / clean.tr: the transplant check's excess, the "
          "planted class's and the largest of the clean classes' checked")
    print("\nDid the model learn it? Tail share of the planted class vs the largest clean class's; within the class, "
          "median focus on the blamed region and accuracy, stamped vs clean images; SpRAy clusters per class")
    for row in rows:
        if row["rank"] is None:
            print(f"{row['artifact']:66s} largest tail share {row['max_clean_tail_share']:.3f}; SpRAy "
                  f"{row['spray_clusters']}")
            continue
        print(f"{row['artifact']:66s} tail {row['planted_tail_share']:.3f} vs clean <= "
              f"{row['max_clean_tail_share']:.3f}; focus {row['stamped_median_focus']:.2f} vs "
              f"{row['clean_median_focus']:.2f}; accuracy "
              f"{row['stamped_accuracy']:.2f} vs {row['clean_accuracy']:.2f}; SpRAy {row['spray_clusters']}, the "
              f"shortcut cluster {row['shortcut_cluster_share']:.0%} of the class, {row['shortcut_cluster_mass']:.0%}"
              " of its mean heatmap on the blamed region")
    print(f"reports in {args.out}")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
