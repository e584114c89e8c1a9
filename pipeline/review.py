"""Reviewer decisions exported from a report (``review.csv``) -> label corrections and a manifest a data pipeline can
apply."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import AuditError, quoted

DECISIONS = ("keep", "relabel", "remove")
REVIEW_COLUMNS = ("run_id", "sample_id", "decision", "new_label")
#: The manifest's label of a sample the reviewer removed.
REMOVED = "removed"


@dataclass(frozen=True)
class Corrections:
    """What a review changes: one row per relabelled or removed sample, and where it was written."""

    table: pd.DataFrame  # sample_id, action (relabel/remove), old_label, new_label, new_label_index
    kept: int  # samples the reviewer confirmed as they are
    csv_path: Path
    json_path: Path
    manifest_path: Path  # every audited sample: sample_id, label after the review (or "removed")


def apply_review(review_csv: str | Path, report_dir: str | Path | None = None,
                 out_dir: str | Path | None = None) -> Corrections:
    """Check ``review_csv`` against the report it came from and write ``label-corrections.csv`` and ``.json``, and
    ``label-manifest.csv``.

    ``report_dir`` defaults to the folder holding ``review_csv``; the files go to ``out_dir`` (default: beside
    ``review_csv``). Refuses, with every problem listed, a review of another run (run id), of samples the run did
    not audit, or with unknown decisions or labels.

    The corrections list only what changes (sample, action, old and new label); the manifest lists every audited
    sample in the audit's order with its label after the review: the new label of a relabelled sample, ``removed``
    for a removed one, the audited label otherwise. A training pipeline reads it as ``sample_id,label`` (for an
    image folder the sample id is the file's path relative to the dataset folder) and drops the ``removed`` rows.
    """
    review_csv = Path(review_csv)
    report_dir = Path(report_dir) if report_dir else review_csv.parent
    out_dir = Path(out_dir) if out_dir else review_csv.parent
    if not review_csv.is_file():
        raise AuditError(f"review file {quoted(str(review_csv))} does not exist")
    if not (report_dir / "audit.json").is_file() or not (report_dir / "samples.parquet").is_file():
        raise AuditError(f"{quoted(str(report_dir))} is not a complete report directory; pass it with --report")
    try:
        review = pd.read_csv(review_csv, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise AuditError(f"review file {quoted(str(review_csv))} is not a CSV file ({str(err)[:200]})") from None
    missing = [c for c in REVIEW_COLUMNS if c not in review.columns]
    if missing:
        raise AuditError(f"review file {quoted(str(review_csv))} lacks the column(s) {', '.join(missing)}; export it "
                         "from the report's Review section")

    meta = json.loads((report_dir / "audit.json").read_text())
    samples = pd.read_parquet(report_dir / "samples.parquet", columns=["sample_id", "label_name"])
    classes = [str(c) for c in meta["dataset"]["classes"]]
    problems = []
    foreign = sorted(set(review["run_id"]) - {meta["run_id"]})
    if foreign:
        problems.append(f"it belongs to run(s) {', '.join(map(quoted, foreign[:3]))}, not to this report's run "
                        f"{meta['run_id']}")
    unknown = sorted(set(review["sample_id"]) - set(samples["sample_id"]))
    if unknown:
        problems.append(f"{len(unknown)} sample(s) were not audited in this run, e.g. {quoted(unknown[0])}")
    bad_decisions = sorted(set(review["decision"]) - set(DECISIONS))
    if bad_decisions:
        problems.append(f"unknown decision(s) {', '.join(map(quoted, bad_decisions[:5]))}; use {', '.join(DECISIONS)}")
    relabel = review["decision"] == "relabel"
    bad_labels = sorted(set(review.loc[relabel, "new_label"]) - set(classes))
    if bad_labels:
        problems.append(f"unknown new label(s) {', '.join(map(quoted, bad_labels[:5]))}")
    duplicated = sorted(set(review.loc[review["sample_id"].duplicated(), "sample_id"]))
    if duplicated:
        problems.append(f"{len(duplicated)} sample(s) have more than one decision, e.g. {quoted(duplicated[0])}")
    if problems:
        raise AuditError(f"review file {quoted(str(review_csv))} does not fit report {quoted(str(report_dir))}: "
                         + "; ".join(problems))

    old = samples.set_index("sample_id")["label_name"]
    changes = review[review["decision"] != "keep"].copy()
    changes["old_label"] = changes["sample_id"].map(old).astype(str)
    changes["action"] = changes["decision"]
    changes.loc[changes["action"] == "remove", "new_label"] = ""
    # A "relabel" to the label the sample already has changes nothing.
    changes = changes[~((changes["action"] == "relabel") & (changes["new_label"] == changes["old_label"]))]
    changes["new_label_index"] = changes["new_label"].map({c: i for i, c in enumerate(classes)}).astype("Int64")
    table = changes[["sample_id", "action", "old_label", "new_label", "new_label_index"]].reset_index(drop=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "label-corrections.csv", out_dir / "label-corrections.json"
    table.to_csv(csv_path, index=False)
    json_path.write_text(json.dumps({
        "run_id": meta["run_id"],
        "dataset": {k: meta["dataset"].get(k) for k in ("name", "split", "fingerprint")},
        "classes": classes,
        "kept": int((review["decision"] == "keep").sum()),
        "corrections": [
            {"sample_id": r.sample_id, "action": r.action, "old_label": r.old_label,
             "new_label": r.new_label or None,
             "new_label_index": None if pd.isna(r.new_label_index) else int(r.new_label_index)}
            for r in table.itertuples()
        ],
    }, indent=2))
    manifest_path = out_dir / "label-manifest.csv"
    final = old.copy()
    final[table["sample_id"]] = table["new_label"].where(table["action"] == "relabel", REMOVED).to_numpy()
    final.rename("label").reset_index().to_csv(manifest_path, index=False)
    return Corrections(table, int((review["decision"] == "keep").sum()), csv_path, json_path, manifest_path)
