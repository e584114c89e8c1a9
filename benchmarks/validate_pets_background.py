"""Self-validation of the background rule on real photos with true masks: Oxford-IIIT Pet, cats against dogs.

    python benchmarks/validate_pets_background.py [--out DIR] [--epochs N]

Files the Oxford-IIIT Pet subset of ``../shared/datasets`` as a two-class folder of symlinks (cat: Abyssinian and
Bengal, 403 photos; dog: American bulldog, 200), with the trimaps as true masks, and runs what
``gradcam-audit validate --artifact background --class dog`` runs: the dogs' backgrounds (outside the trimap's
object) replaced by a texture, a flat colour, or tinted, in ``--rate`` of the dog photos; plus a control audit of
the clean folder. The folder has no split folders, so every audit cross-fits 5 reference models (out-of-fold
predictions). Prints one table: the planted class's rank, whether it is flagged and on which region, the
sample-level AUROC of the audit's per-sample score (``sample_score``), and side by side of the blamed region's
statistic from each image's given-label CAM (its focus), of each image's reliance on the region (the drop in the
log-odds of its given label when the region is blanked; measured for a candidate), of the same drop in probability
instead of log-odds and, for comparison, of the background focus of its predicted-class CAM; the ``uses_shortcut``
flag's precision and recall as the audit sets it, and as the focus, the reliance or its probability drop would set
it (the class's images above the other classes' 95% quantile); and clean classes flagged. Then the cost of the
reliance: one pass over the photos with each image's background blanked, timed again after each audit, beside the
audit's Grad-CAM time. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _tables import print_table

from pipeline import audit, occlusion, runs
from pipeline.artifacts import Artifact
from pipeline.config import AuditConfig
from pipeline.datasets import open_source
from pipeline.findings import auroc, shortcut_values

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "oxford_pets_subset"
BREEDS = {"cat": ("Abyssinian", "Bengal"), "dog": ("american_bulldog",)}
PLANTS = (
    {"fill": "texture", "rate": 0.5},
    {"fill": "colour", "rate": 0.5},
    {"fill": "colour", "rate": 0.5, "opacity": 0.4},
    {"fill": "texture", "rate": 0.2},
)


def pets_folder(source: Path, root: Path) -> Path:
    """``root/<cat|dog>/<file>.jpg`` symlinks to the subset's photos of those breeds."""
    for name, breeds in BREEDS.items():
        (root / name).mkdir(parents=True)
        for breed in breeds:
            for photo in sorted((source / "images").glob(f"{breed}_*.jpg")):
                (root / name / photo.name).symlink_to(photo)
    return root


def predicted_cam_auroc(samples) -> float:
    """AUROC, stamped vs clean images, of the background focus of each image's predicted-class CAM."""
    focus = samples["background_focus"].to_numpy(dtype=float)
    stamped = samples["planted"].to_numpy(dtype=bool)
    return auroc(focus[stamped], focus[~stamped])


def probability_drop_figures(result, k: int) -> dict:
    """The reliance of class ``k`` as a drop in probability instead of log-odds (back from the log-odds drop and the
    audit's probability): AUROC of stamped vs clean images, and the precision and recall of a ``uses_shortcut`` flag
    by it (the class's images above the other classes' 95% quantile), when the class is flagged."""
    samples, classes = result.samples, result.classes
    _, drops = shortcut_values(samples, classes, k, "reliance")
    before = samples["label_prob"].to_numpy(dtype=float)
    after = 1 / (1 + np.exp(drops - occlusion.log_odds(before)))
    values = np.clip(before, occlusion.PROBABILITY_FLOOR, 1 - occlusion.PROBABILITY_FLOOR) - after
    stamped, mine = samples["planted"].to_numpy(dtype=bool), samples["label"].to_numpy() == k
    others = values[~mine & np.isfinite(values)]
    flagged = bool(classes.loc[classes["class"] == k, "flagged"].iloc[0]) and len(others) > 0
    uses = mine & (values > np.quantile(others, 0.95)) if flagged else np.zeros(len(values), dtype=bool)
    return {"probability_drop_auroc": auroc(values[stamped], values[~stamped]),
            "probability_uses_precision": float(stamped[uses].mean()) if uses.any() else float("nan"),
            "probability_uses_recall": float(uses[stamped].mean())}


def reliance_seconds(result) -> float:
    """Seconds of one reliance pass over the audited photos as the audit makes it for a class blamed for its
    background: each photo decoded, its background (outside its trimap's object) filled with grey, one forward pass
    by the model of its fold."""
    config = AuditConfig(**result.meta["config"])
    explainers = [runs.explainer(config, path) for path in result.meta["model"]["paths"]]
    source, samples = open_source(runs.source_spec(config)), result.samples
    start = time.perf_counter()
    occlusion.reliance(explainers, source, samples["sample_id"].to_numpy(), samples["label"].to_numpy(),
                       samples["label_prob"].to_numpy(), {0: None}, size=tuple(result.meta["model"]["input_size"]),
                       batch_size=config.batch_size, fold_seed=config.seed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, help="where the reports go (default: a new temporary folder)")
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp())  # made only when no folder is given
    folder = pets_folder(args.data, args.out / "pets")
    options = {"masks": str(args.data / "annotations" / "trimaps"), "epochs": args.epochs}

    rows = []
    for n, plant in enumerate(PLANTS):
        artifact = Artifact(kind="background", class_name="dog", **plant)
        start = time.perf_counter()
        result = audit(str(folder), artifact=artifact.as_dict(), out=str(args.out / f"{n}-background"), **options)
        dog = result.classes.set_index("class_name").loc["dog"]
        rows.append({"artifact": f"background {artifact.fill}, opacity {artifact.opacity}, rate {artifact.rate}",
                     "region": dog["region"], "accuracy": result.meta["results"]["accuracy"],
                     "seconds": round(time.perf_counter() - start, 1), **result.meta["validation"],
                     "predicted_cam_auroc": predicted_cam_auroc(result.samples),
                     **probability_drop_figures(result, int(dog["class"])),
                     "reliance_mean": dog["reliance_mean"], "reliance_tail_share": dog["reliance_tail_share"],
                     "alternatives": dog["alternatives_reliance"] or "",
                     "reliance_s": reliance_seconds(result), "gradcam_s": result.meta["timings"]["gradcam_s"],
                     "findings_s": result.meta["timings"]["findings_s"]})
    start = time.perf_counter()
    clean = audit(str(folder), out=str(args.out / "clean"), **options)
    rows.append({"artifact": "none (control)", "rank": None, "clean_classes_flagged": clean.flagged_classes,
                 "accuracy": clean.meta["results"]["accuracy"], "seconds": round(time.perf_counter() - start, 1),
                 "candidates": clean.classes.loc[clean.classes["candidate"], "class_name"].tolist(),
                 "reliance_s": reliance_seconds(clean), "gradcam_s": clean.meta["timings"]["gradcam_s"],
                 "findings_s": clean.meta["timings"]["findings_s"]})

    print("\nOxford-IIIT Pet subset, cat (403) vs dog (200), trimaps as true masks, 5-fold cross-fitted reference CNNs")
    print_table(rows, [("artifact", "artifact", 44, ""), ("rank", "rank", 4, "d"), ("flag", "flagged", 5, ""),
                       ("score", "sample_score", 8, ""), ("AUROC", "sample_auroc", 6, ".3f"),
                       ("f.AUROC", "focus_auroc", 7, ".3f"), ("r.AUROC", "reliance_auroc", 7, ".3f"),
                       ("pred.AUROC", "predicted_cam_auroc", 10, ".3f"),
                       ("us.P", "uses_shortcut_precision", 5, ".3f"), ("us.R", "uses_shortcut_recall", 5, ".3f"),
                       ("f.us.P", "focus_uses_precision", 6, ".3f"), ("f.us.R", "focus_uses_recall", 6, ".3f"),
                       ("r.us.P", "reliance_uses_precision", 6, ".3f"), ("r.us.R", "reliance_uses_recall", 6, ".3f"),
                       ("p.AUROC", "probability_drop_auroc", 7, ".3f"),
                       ("p.us.P", "probability_uses_precision", 6, ".3f"),
                       ("p.us.R", "probability_uses_recall", 6, ".3f"),
                       ("acc", "accuracy", 5, ".3f"), ("by", "confirmed_by", 10, ""),
                       ("clean classes flagged", "clean_classes_flagged", 22, ""),
                       ("region", "region", 0, "")])
    print("AUROC, us.P, us.R: the audit's per-sample score (score) and its uses_shortcut flag, stamped vs clean; "
          "f.: the blamed region's statistic from each image's given-label CAM (its focus); r.: each image's "
          "reliance on the blamed region (drop of its label's log-odds when blanked; measured for candidates); p.: "
          "the same drop in probability; pred.AUROC: the background focus of its predicted-class CAM")
    print("\nWithin the dogs, stamped vs clean: median focus and reliance; the dog class's reliance: mean, tail share")
    for row in rows[:-1]:
        print(f"{row['artifact']:44s} focus {row['stamped_median_focus']:.2f} vs {row['clean_median_focus']:.2f}; "
              f"reliance {row['stamped_median_reliance']:.2f} vs {row['clean_median_reliance']:.2f}; mean "
              f"{row['reliance_mean']:.2f}, tail share {row['reliance_tail_share']:.2f} (focus tail share "
              f"{row['planted_tail_share']:.2f})" + (f"; regions put to the model (excess mean drop): "
                                                     f"{row['alternatives']}" if row["alternatives"] else ""))
    print(f"control: candidates {', '.join(rows[-1]['candidates']) or 'none'}")
    print("\nCost of the reliance: one pass over the photos with each background blanked (timed again after the "
          "audit), against the audit's Grad-CAM of all photos (shards) and its whole findings step")
    for row in rows:
        print(f"{row['artifact']:44s} reliance pass {row['reliance_s']:.1f} s; Grad-CAM {row['gradcam_s']:.1f} s; "
              f"findings {row['findings_s']:.1f} s")
    print(f"reports in {args.out}")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
