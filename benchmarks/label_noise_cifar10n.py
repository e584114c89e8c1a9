"""Relabel ranking against real human label errors: CIFAR-10 training images filed under their CIFAR-10N labels.

    python benchmarks/label_noise_cifar10n.py [--images 10000] [--cross-fit 5] [--epochs N] [--out DIR]

Files a stratified subset of the CIFAR-10 training images listed in CIFAR-10N under their ``aggre_label`` (the
majority vote of three annotators; about 9% of them disagree with ``clean_label``, the original label, taken as the
truth) in a folder of symlinks, audits that folder as a user would (``gradcam-audit run FOLDER``; no split folders,
so the reference models train on the audited images and the audit uses out-of-fold predictions), and compares, from
the same out-of-fold probabilities (the report's ``probs.npz``), the audit's ``relabel_score`` with cleanlab's
rankings (``self_confidence``, ``normalized_margin``, ``confidence_weighted_entropy``) and its ``find_label_issues``:

- precision and recall at K, K = the number of wrong labels (so the two are equal for a ranking),
- AUROC of wrong against right labels,
- for a flagged set (find_label_issues, or the audit's relabel candidates), its size, precision and recall,
- how often the suggested label (the most probable class) is the clean label, among the wrong labels.

Reference models are cached (``GRADCAM_AUDIT_CACHE``), so a second run only audits. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.metrics import roc_auc_score

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
RANKINGS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def labelled_folder(images: int, seed: int, root: Path, data: Path, truth_csv: Path) -> pd.DataFrame:
    """Symlinks ``root/<aggre_label>/<stem>.jpg`` to a stratified (by ``aggre_label``) subset of the listed images;
    returns the subset with its ``sample_id`` (the folder source's id: ``<class>/<file>``)."""
    listed = pd.read_csv(truth_csv)
    share = min(1.0, images / len(listed))
    subset = listed.groupby("aggre_label", group_keys=False).sample(frac=share, random_state=seed)
    subset = subset.assign(sample_id=subset["aggre_label"] + "/" + subset["file"].str.replace("/", "_"))
    for row in subset.itertuples(index=False):
        link = root / row.sample_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(data / row.file)
    return subset.reset_index(drop=True)


def ranking_figures(score: np.ndarray, wrong: np.ndarray) -> dict:
    """Precision (= recall) at K = wrong.sum() of the ``score`` ranking (higher = likelier wrong), and its AUROC."""
    k = int(wrong.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return {"precision_at_k": round(float(wrong[top].mean()), 4), "recall_at_k": round(float(wrong[top].sum() / k), 4),
            "auroc": round(float(roc_auc_score(wrong, score)), 4)}


def set_figures(flagged: np.ndarray, wrong: np.ndarray) -> dict:
    hits = int((flagged & wrong).sum())
    return {"flagged": int(flagged.sum()), "precision": round(hits / max(1, int(flagged.sum())), 4),
            "recall": round(hits / int(wrong.sum()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--cross-fit", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED / "cifar10")
    parser.add_argument("--truth", type=Path, default=SHARED / "cifar10_truth" / "cifar10n_train_labels.csv")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cifar10n-") as work:
        work = Path(work)
        subset = labelled_folder(args.images, args.seed, work / "cifar10n", args.data, args.truth)
        out = args.out or work / "report"
        command = [sys.executable, "-m", "pipeline", "run", str(work / "cifar10n"), "--out", str(out),
                   "--cross-fit", str(args.cross_fit), "--seed", str(args.seed)]
        if args.epochs:
            command += ["--epochs", str(args.epochs)]
        print("$", " ".join(command), flush=True)
        tick = time.perf_counter()
        subprocess.run(command, check=True, env=os.environ)
        seconds = time.perf_counter() - tick

        samples = pd.read_csv(out / "samples.csv", keep_default_na=False, na_values=[""])
        stored = np.load(out / "probs.npz")
        order = pd.Series(np.arange(len(stored["sample_id"])), index=stored["sample_id"])
        probs = stored["probs"][order[samples["sample_id"]].to_numpy()].astype(np.float64)
        names = list(stored["class_names"])
        truth = subset.set_index("sample_id").loc[samples["sample_id"]]
        labels = samples["label"].to_numpy()
        clean = truth["clean_label"].map(names.index).to_numpy()
        wrong = truth["clean_label"].to_numpy() != truth["aggre_label"].to_numpy()

    accuracy = float((probs.argmax(1) == clean).mean())
    print(f"{len(samples)} images, {int(wrong.sum())} wrong labels ({wrong.mean():.1%}); audit {seconds:.0f} s; "
          f"out-of-fold accuracy against the clean labels {accuracy:.1%}, against the given labels "
          f"{(probs.argmax(1) == labels).mean():.1%}")
    rows = {"relabel_score (audit)": ranking_figures(samples["relabel_score"].to_numpy(), wrong)}
    # Ablation: self-confidence weighted by the share of the heatmap on the object (the relabel_score before issue 13).
    on_object = (1.0 - samples["background_attention"]).fillna(0.5).clip(0.0, 1.0).to_numpy()
    self_confidence = get_label_quality_scores(labels, probs, method="self_confidence")
    rows["(1 - self_confidence) x heatmap term"] = ranking_figures((1.0 - self_confidence) * (0.5 + 0.5 * on_object),
                                                                  wrong)
    for method in RANKINGS:
        rows[f"cleanlab {method}"] = ranking_figures(1.0 - get_label_quality_scores(labels, probs, method=method),
                                                     wrong)
    print(f"\n{'ranking':38} {'P@K':>6} {'R@K':>6} {'AUROC':>6}")
    for name, row in rows.items():
        print(f"{name:38} {row['precision_at_k']:6.3f} {row['recall_at_k']:6.3f} {row['auroc']:6.3f}")
    sets = {"find_label_issues (cleanlab)": set_figures(find_label_issues(labels, probs, n_jobs=1), wrong),
            "relabel candidates (audit)": set_figures(samples["relabel_reason"].fillna("").to_numpy() != "", wrong)}
    print(f"\n{'flagged set':38} {'size':>6} {'prec':>6} {'recall':>6}")
    for name, row in sets.items():
        print(f"{name:38} {row['flagged']:6d} {row['precision']:6.3f} {row['recall']:6.3f}")
    suggested_right = float((probs.argmax(1)[wrong] == clean[wrong]).mean())
    print(f"\nsuggested label = clean label on {suggested_right:.1%} of the wrong labels")
    print(json.dumps({"images": len(samples), "wrong": int(wrong.sum()), "audit_s": round(seconds, 1),
                      "accuracy_clean": round(accuracy, 4), "rankings": rows, "sets": sets,
                      "suggested_is_clean": round(suggested_right, 4), "cross_fit": args.cross_fit}))


if __name__ == "__main__":
    main()
