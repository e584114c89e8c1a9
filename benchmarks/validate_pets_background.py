"""Self-validation of the background rule on real photos with true masks: Oxford-IIIT Pet, cats against dogs.

    python benchmarks/validate_pets_background.py [--out DIR] [--epochs N]

Files the Oxford-IIIT Pet subset of ``../shared/datasets`` as a two-class folder of symlinks (cat: Abyssinian and
Bengal, 403 photos; dog: American bulldog, 200), with the trimaps as true masks, and runs what
``gradcam-audit validate --artifact background --class dog`` runs: the dogs' backgrounds (outside the trimap's
object) replaced by a texture, a flat colour, or tinted, in ``--rate`` of the dog photos; plus a control audit of
the clean folder. The folder has no split folders, so every audit cross-fits 5 reference models (out-of-fold
predictions). Prints one table: the planted class's rank, whether it is flagged and on which region, the
sample-level AUROC of the background focus of each image's given-label CAM (what the audit judges) and, for
comparison, of its predicted-class CAM, the ``uses_shortcut`` flag's precision and recall, and clean classes flagged.
The last line is one JSON object.
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
from pipeline.findings import auroc

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    args = parser.parse_args()
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
                     "predicted_cam_auroc": predicted_cam_auroc(result.samples)})
    start = time.perf_counter()
    clean = audit(str(folder), out=str(args.out / "clean"), **options)
    rows.append({"artifact": "none (control)", "rank": None, "clean_classes_flagged": clean.flagged_classes,
                 "accuracy": clean.meta["results"]["accuracy"], "seconds": round(time.perf_counter() - start, 1)})

    print("\nOxford-IIIT Pet subset, cat (403) vs dog (200), trimaps as true masks, 5-fold cross-fitted reference CNNs")
    print_table(rows, [("artifact", "artifact", 44, ""), ("rank", "rank", 4, "d"), ("flag", "flagged", 5, ""),
                       ("AUROC", "sample_auroc", 6, ".3f"), ("pred.AUROC", "predicted_cam_auroc", 10, ".3f"),
                       ("us.P", "uses_shortcut_precision", 5, ".3f"), ("us.R", "uses_shortcut_recall", 5, ".3f"),
                       ("acc", "accuracy", 5, ".3f"), ("clean classes flagged", "clean_classes_flagged", 22, ""),
                       ("region", "region", 0, "")])
    print("AUROC: the background focus of each image's given-label CAM, stamped vs clean (what the audit judges); "
          "pred.AUROC: of its predicted-class CAM")
    print(f"reports in {args.out}")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
