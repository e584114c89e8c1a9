"""The reliance rule's margins on many weak models: every candidate's images, planted or clean, on the reduced demo.

    python benchmarks/reliance_margins_demo.py [--seeds 0,1,2] [--out DIR]

Runs what ``gradcam-audit validate demo --train-size 1500 --test-size 500 --epochs 6`` runs (the command-line
tests' setting: reference CNNs near 50% accurate) for each artifact of :data:`PLANTS` and each seed (a new training
and new data per seed), and for every class that is a shortcut candidate, so that its images' reliance on its
blamed region is measured, prints: whether the artifact is planted in it, its status and what confirmed it, its
reliance tail share as the audit counts it (images losing more log-odds than 95% of the other classes' images and
at least ``min_reliance_drop``), the same share without that floor (beyond the others' 95% quantile alone), and the
class's 90% quantile of drops. The summary sets the clean candidates' largest shares against the planted classes'
smallest, with and without the floor, beside ``min_reliance_confirm_share``: a clean candidate above it is flagged
by its images one by one. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _tables import print_table

from pipeline import audit, findings
from pipeline.artifacts import Artifact

SETTING = {"train_size": 1500, "test_size": 500, "epochs": 6}
PLANTS = (
    {"kind": "patch", "class_name": "circle", "position": "0.5,0.4"},
    {"kind": "patch", "class_name": "cross", "position": "0.3,0.7"},
    {"kind": "corner", "class_name": "circle"},
    {"kind": "frame", "class_name": "square"},
    {"kind": "stamp", "class_name": "circle"},
    {"kind": "background", "class_name": "circle"},
)


def candidate_rows(result, plant: str, seed: int) -> list[dict]:
    """One row per class whose reliance was measured."""
    samples, classes = result.samples, result.classes
    labels, quantile = samples["label"].to_numpy(), findings.DEFAULT_THRESHOLDS.tail_quantile
    rows = []
    for _, row in classes[classes["reliance_column"] != ""].iterrows():
        drops, mine = samples[row["reliance_column"]].to_numpy(dtype=float), labels == row["class"]
        measured = drops[mine & np.isfinite(drops)]
        others = drops[~mine & np.isfinite(drops)]
        rows.append({"plant": plant, "seed": seed, "class": row["class_name"],
                     "planted": row["class_name"] == result.meta["dataset"]["planted"]["class_name"],
                     "status": row["status"], "confirmed_by": row["confirmed_by"] or "-",
                     "flagged": bool(row["flagged"]),
                     "region": row["region"].split(" (")[0], "share": float(row["reliance_tail_share"]),
                     "share_without_floor": float(np.mean(measured > np.quantile(others, quantile))),
                     "others_q95": float(np.quantile(others, quantile)),
                     "class_q90": float(np.quantile(measured, 0.9))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="where the reports go (default: a new temporary folder)")
    args = parser.parse_args()
    args.out = args.out or Path(tempfile.mkdtemp())  # made only when no folder is given
    seeds = [int(seed) for seed in args.seeds.split(",")]
    thresholds = findings.DEFAULT_THRESHOLDS

    rows = []
    for plant in PLANTS:
        artifact = Artifact(**plant)
        name = f"{artifact.kind} on {artifact.class_name}" + (f" at {artifact.position}" if artifact.kind == "patch"
                                                               else "")
        for seed in seeds:
            result = audit("demo", artifact=artifact.as_dict(), seed=seed,
                           out=str(args.out / f"{artifact.kind}-{artifact.class_name}-{seed}"), **SETTING)
            rows.extend(candidate_rows(result, name, seed))

    print(f"\nReduced demo ({SETTING['train_size']} training images, {SETTING['test_size']} audited, "
          f"{SETTING['epochs']} epochs), seeds {args.seeds}: every candidate whose reliance was measured")
    print_table(rows, [("plant", "plant", 26, ""), ("seed", "seed", 4, "d"), ("class", "class", 8, ""),
                       ("planted", "planted", 7, ""), ("status", "status", 13, ""), ("by", "confirmed_by", 10, ""),
                       ("flagged", "flagged", 7, ""), ("share", "share", 6, ".2f"),
                       ("no floor", "share_without_floor", 8, ".2f"), ("others q95", "others_q95", 10, ".2f"),
                       ("class q90", "class_q90", 9, ".2f"), ("region", "region", 0, "")])
    clean = [row for row in rows if not row["planted"]]
    planted = [row for row in rows if row["planted"]]
    summary = {
        "runs": len(PLANTS) * len(seeds), "clean_candidates": len(clean), "planted_candidates": len(planted),
        "min_reliance_drop": thresholds.min_reliance_drop,
        "min_reliance_confirm_share": thresholds.min_reliance_confirm_share,
        "max_clean_share": max((row["share"] for row in clean), default=float("nan")),
        "max_clean_share_without_floor": max((row["share_without_floor"] for row in clean), default=float("nan")),
        "clean_over_confirm_without_floor": sum(row["share_without_floor"] >= thresholds.min_reliance_confirm_share
                                                for row in clean),
        "min_planted_share": min((row["share"] for row in planted), default=float("nan")),
        "max_clean_q90": max((row["class_q90"] for row in clean), default=float("nan")),
        "clean_flagged": sum(row["flagged"] for row in clean),
        "planted_flagged": sum(row["flagged"] for row in planted),
    }
    print(f"\nclean candidates: {summary['clean_candidates']}, reliance tail share at most "
          f"{summary['max_clean_share']:.2f} with the floor of {summary['min_reliance_drop']} log-odds "
          f"(without it {summary['max_clean_share_without_floor']:.2f}, {summary['clean_over_confirm_without_floor']} "
          f"of them at or above the {summary['min_reliance_confirm_share']:.2f} that confirms); their images' 90% "
          f"quantile of drops at most {summary['max_clean_q90']:.2f}; flagged: {summary['clean_flagged']}")
    print(f"planted candidates: {summary['planted_candidates']}, reliance tail share at least "
          f"{summary['min_planted_share']:.2f}; flagged: {summary['planted_flagged']} of {len(planted)}")
    print(f"reports in {args.out}")
    print(json.dumps({"summary": summary, "rows": rows}, default=str))


if __name__ == "__main__":
    main()
