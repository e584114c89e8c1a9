"""Prefect orchestration of an audit: open the source, get the model, one task per shard, findings, report.

Only orchestration lives here (sharding, per-process caching of the loaded model, logging, artifacts, the run
record); every number is computed by the core modules.
"""

from __future__ import annotations

import functools
import platform
import time
import uuid
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from . import findings, models, report, samples
from .config import AuditConfig, AuditResult
from .datasets import SourceSpec, check_spec, open_source
from .errors import AuditError
from .gradcam import GradCAM
from .settings import cache_dir

PACKAGES = ("gradcam-audit", "tensorflow", "keras", "numpy", "pandas", "scikit-image", "cleanlab", "prefect", "jinja2")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def source_spec(config: AuditConfig, split: str | None = None) -> SourceSpec:
    """The source a configuration names (optionally another split of it)."""
    if config.dataset != "demo":
        raise AuditError(
            f"dataset {config.dataset!r} is not supported yet: this version audits only the built-in 'demo' set "
            "(tfds datasets and image folders are planned)"
        )
    return SourceSpec(kind="synthetic", split=split or config.split, seed=config.seed,
                      train_size=config.train_size, test_size=config.test_size)


def default_out_dir(config: AuditConfig, now: datetime) -> Path:
    """``reports/demo-<time>`` for the demo, ``reports/<dataset>-<split>-<time>`` otherwise."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    name = "demo" if config.dataset == "demo" else f"{config.dataset}-{config.split}"
    return Path("reports") / f"{name}-{stamp}"


def check_config(config: AuditConfig) -> None:
    """Raise :class:`AuditError` for what can be seen to be wrong before the flow starts."""
    check_spec(source_spec(config))
    if config.model is not None:
        models.check_model_file(config.model)
    if config.out is not None and Path(config.out).exists():
        raise AuditError(f"report directory {config.out!r} already exists; choose another --out")


@functools.lru_cache(maxsize=2)
def _explainer(model_path: str, layer: str | None, method: str) -> GradCAM:
    """One loaded model and compiled Grad-CAM per process, shared by the shards it runs."""
    return GradCAM(models.load_model(model_path), layer=layer, method=method)


@task(cache_policy=NO_CACHE)
def prepare_model(config: AuditConfig) -> dict:
    """The model to audit: the user's file, or a reference model trained on the train split (cached)."""
    logger = get_run_logger()
    if config.model is not None:
        model = models.load_model(config.model)
        path, origin, history, seconds = Path(config.model), "user model", {}, 0.0
    else:
        train = open_source(source_spec(config, split="train"))
        trained = models.train_reference_model(
            train.images, train.labels, len(train.class_names), cache_dir() / "models", train.fingerprint,
            models.TrainConfig(epochs=config.epochs, seed=config.seed), progress=logger.info,
        )
        model, path, history, seconds = trained.model, trained.path, trained.history, trained.seconds
        origin = "reference model, loaded from cache" if trained.cached else "reference model, trained now"
        logger.info("%s (%s)", origin, path)
    explainer = _explainer(str(path), config.layer, config.method)
    return {"path": str(path), "name": model.name, "origin": origin, "fingerprint": models.fingerprint_model(model),
            "layer": explainer.layer.name, "train_history": history, "train_seconds": seconds}


@task(cache_policy=NO_CACHE)
def audit_shard(spec: SourceSpec, model_path: str, config: AuditConfig, start: int, stop: int) -> samples.ShardResult:
    """Grad-CAM and statistics of samples ``start`` to ``stop``."""
    explainer = _explainer(model_path, config.layer, config.method)
    return samples.scan(open_source(spec), explainer, start, stop, config.batch_size)


@task(cache_policy=NO_CACHE)
def find(spec: SourceSpec, shards: list[samples.ShardResult], thresholds: findings.Thresholds) -> findings.AuditTables:
    source = open_source(spec)
    merged = samples.merge(shards)
    return findings.build_tables(merged.table, merged.probs, merged.cams, source.class_names,
                                 source.image_shape[:2], thresholds)


@task(cache_policy=NO_CACHE)
def write_report(out: Path, spec: SourceSpec, tables: findings.AuditTables, gallery_size: int) -> Path:
    return report.write_report(out, open_source(spec), tables, gallery_size)


@flow(name="gradcam-audit", log_prints=True)
def audit_flow(
    dataset: str = "demo",
    split: str = "test",
    model: str | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    batch_size: int = 128,
    shard_size: int = 2048,
    out: str | None = None,
    seed: int = 0,
    epochs: int = 8,
    train_size: int = 3000,
    test_size: int = 1000,
    gallery_size: int = 24,
) -> AuditResult:
    """Audit every sample of one split with Grad-CAM and write the report; parameters mirror the CLI's options."""
    config = AuditConfig(dataset, split, model, layer, method, batch_size, shard_size, out, seed, epochs,
                         train_size, test_size, gallery_size)
    logger = get_run_logger()
    started, now = time.perf_counter(), datetime.now()
    out_dir = Path(out) if out else default_out_dir(config, now)
    if out_dir.exists():
        raise AuditError(f"report directory {str(out_dir)!r} already exists; choose another --out")
    timings = {}

    spec = source_spec(config)
    source = open_source(spec)
    logger.info("auditing %s/%s: %d samples, %d classes", source.name, source.split, len(source),
                len(source.class_names))
    tick = time.perf_counter()
    model_info = prepare_model(config)
    timings["model_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    shards = []
    bounds = list(range(0, len(source), config.shard_size))
    for index, start in enumerate(bounds):
        shards.append(audit_shard(spec, model_info["path"], config, start, start + config.shard_size))
        done = min(start + config.shard_size, len(source))
        rate = done / (time.perf_counter() - tick)
        logger.info("shard %d/%d done: %d/%d samples, %.0f images/s", index + 1, len(bounds), done, len(source), rate)
    timings["gradcam_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    thresholds = findings.Thresholds()
    tables = find(spec, shards, thresholds)
    timings["findings_s"] = time.perf_counter() - tick

    warnings = []
    if config.model is None and config.split == "train":
        warnings.append("The model was trained on the audited split: predictions are in-sample, which hides label "
                        "errors and overstates accuracy.")
    tables.meta = {
        "run_id": uuid.uuid4().hex,
        "created": now.isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "dataset": {"name": source.name, "split": source.split, "samples": len(source),
                    "classes": list(source.class_names), "image_shape": list(source.image_shape),
                    "fingerprint": source.fingerprint, "spec": spec.as_dict(), "planted": source.planted},
        "model": model_info,
        "results": {"samples": len(tables.samples),
                    "accuracy": float((tables.samples["label"] == tables.samples["pred"]).mean()),
                    "flagged_classes": tables.classes.loc[tables.classes["flagged"], "class_name"].tolist()},
        "thresholds": thresholds.as_dict(),
        "skipped": [],
        "warnings": warnings,
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}},
        "timings": timings,
    }
    # Everything up to writing the report itself, which records this figure.
    timings["total_s"] = time.perf_counter() - started
    report_dir = write_report(out_dir, spec, tables, config.gallery_size)

    flagged = tables.meta["results"]["flagged_classes"]
    create_link_artifact(key="audit-report", link=report_dir.resolve().as_uri(), link_text="Grad-CAM audit report")
    create_markdown_artifact(
        key="audit-summary",
        markdown=f"# Grad-CAM audit of {source.name}/{source.split}\n\n"
                 f"{len(tables.samples)} samples, accuracy {tables.meta['results']['accuracy']:.1%}.\n\n"
                 f"Flagged classes: {', '.join(flagged) or 'none'}.\n\nReport: `{report_dir}`",
    )
    logger.info("report written to %s", report_dir)
    return AuditResult(report_dir, tables.samples, tables.classes, tables.meta)
