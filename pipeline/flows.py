"""Prefect orchestration of an audit: open the source, get the model, one task per shard, findings, report.

Only orchestration lives here (sharding, per-process caching of the loaded model, logging, artifacts, the run
record); every number is computed by the core modules.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import re
import time
import uuid
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from . import duplicates, findings, models, occlusion, report, samples, validation
from .artifacts import Artifact
from .config import AuditConfig, AuditResult
from .datasets import Source, SourceSpec, SyntheticSource, TfdsSource, open_source, spec_for
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
    options = {"split": split or config.split}
    if config.dataset == "demo":
        options |= {"seed": config.seed, "train_size": config.train_size, "test_size": config.test_size}
    elif config.data_dir:
        options["data_dir"] = config.data_dir
    if config.masks:
        options["masks"] = config.masks
    if config.artifact:
        options["artifact"] = Artifact(**config.artifact)
    return spec_for(config.dataset, **options)


def training_split(source: Source) -> str:
    """The split a reference model trains on: 'train' where the source has one, else the audited split itself."""
    if isinstance(source, SyntheticSource | TfdsSource):
        return "train"
    root = Path(source.spec.name)
    return "train" if source.split != "all" and (root / "train").is_dir() else source.split


def other_training_split(config: AuditConfig, audited: Source) -> Source | None:
    """The training split when it is not the audited one (duplicates across splits are leakage), else None."""
    split = training_split(audited)
    return open_source(source_spec(config, split=split)) if split != audited.split else None


def default_out_dir(source: Source, now: datetime) -> Path:
    """``reports/demo-<time>`` for the demo, ``reports/<dataset>-<split>-<time>`` otherwise."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    name = "demo" if isinstance(source, SyntheticSource) else f"{source.name}-{source.split}"
    return Path("reports") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{stamp}"


def check_config(config: AuditConfig) -> Source:
    """Open the source (and the user's model) and check what can be checked before the flow starts, so that user
    errors raise :class:`AuditError` with their message instead of failing a flow run."""
    source = open_source(source_spec(config))
    models.preprocess_function(_preprocess_name(config))
    findings.Thresholds.from_overrides(config.thresholds)
    if config.model is not None:
        explainer = _explainer(config.model, config.layer, config.method, _preprocess_name(config),
                               config.unsafe_model)
        models.check_fit(explainer.model, source.class_names)
        if config.preprocess is None and not models.has_own_preprocessing(explainer.model):
            raise AuditError("the model has no Rescaling or Normalization layer of its own: declare how it expects "
                             f"its pixels with --preprocess ({', '.join(models.PREPROCESSING)})")
    if config.out is not None and Path(config.out).exists():
        raise AuditError(f"report directory {config.out!r} already exists; choose another --out")
    return source


def _preprocess_name(config: AuditConfig) -> str:
    return config.preprocess or "none"


@functools.lru_cache(maxsize=8)
def _explainer(model_path: str, layer: str | None, method: str, preprocess: str, unsafe: bool) -> GradCAM:
    """One loaded model and compiled Grad-CAM per process and model, shared by the shards it runs."""
    return GradCAM(models.load_model(model_path, unsafe=unsafe), layer=layer, method=method,
                   preprocess=models.preprocess_function(preprocess))


#: From this many training images on, reference CNNs are wider and train longer (CIFAR-10 scale).
LARGE_TRAINING_SET = 10_000


def _train(config: AuditConfig, images, labels, class_names, key: str, logger) -> models.TrainedModel:
    large = len(images) >= LARGE_TRAINING_SET
    train_config = models.TrainConfig(
        epochs=config.epochs or (15 if large else 8), width=32 if large else 16, seed=config.seed,
        architecture="mobilenetv2" if config.weights else "cnn", weights=config.weights,
        # The demo trains like a careless pipeline, without flips and shifts that would move its planted mark,
        # so that the model is free to learn the shortcut the audit is meant to find.
        augment=config.dataset != "demo",
    )
    trained = models.train_reference_model(images, labels, len(class_names), cache_dir() / "models", key,
                                           train_config, progress=logger.info)
    logger.info("%s (%s)", "loaded from cache" if trained.cached else f"trained in {trained.seconds:.0f} s",
                trained.path)
    return trained


@task(cache_policy=NO_CACHE)
def prepare_model(config: AuditConfig) -> dict:
    """The model(s) to audit with: the user's file; a reference model trained on the training split (cached); or,
    with ``cross_fit`` K, K reference models each trained without one fold of the audited split."""
    logger = get_run_logger()
    audited = open_source(source_spec(config))
    info = {"preprocess": _preprocess_name(config), "cross_fit": config.cross_fit, "train_history": {},
            "train_seconds": 0.0, "trained_on": None}
    if config.model is not None:
        paths, origin = [str(config.model)], "user model"
    else:
        train = audited if config.cross_fit else open_source(source_spec(config, split=training_split(audited)))
        size = (160, 160) if config.weights else models.reference_input_size(train.natural_size)
        logger.info("training reference model(s) on %s/%s at %dx%d", train.name, train.split, *size)
        images, labels, ids = train.arrays(size)
        key = f"{train.fingerprint}-{size}"
        if config.train_limit and len(labels) > config.train_limit:
            keep = models.training_subset(ids, config.train_limit, config.seed)
            images, labels, ids = images[keep], labels[keep], ids[keep]
            key += f"-limit{config.train_limit}"
            logger.info("training on a random subset of %d of the split's images (--train-limit)", len(labels))
        if config.cross_fit:
            folds = models.cross_fit_folds(ids, config.cross_fit, config.seed)
            runs = [_train(config, images[folds != k], labels[folds != k], train.class_names,
                           f"{key}-fold{k}of{config.cross_fit}", logger) for k in range(config.cross_fit)]
            info["trained_on"] = f"{train.name}/{train.split}, {config.cross_fit} folds (out-of-fold predictions)"
        else:
            runs = [_train(config, images, labels, train.class_names, key, logger)]
            info["trained_on"] = f"{train.name}/{train.split}"
        paths = [str(run.path) for run in runs]
        info["train_history"] = runs[0].history if len(runs) == 1 else [run.history for run in runs]
        info["train_seconds"] = sum(run.seconds for run in runs)
        origin = "reference model" + (", loaded from cache" if all(r.cached for r in runs) else ", trained now")
    explainer = _explainer(paths[0], config.layer, config.method, info["preprocess"], config.unsafe_model)
    model = explainer.model
    return info | {"paths": paths, "name": model.name, "origin": origin,
                   "fingerprint": "+".join(models.fingerprint_model(
                       _explainer(p, config.layer, config.method, info["preprocess"], config.unsafe_model).model)
                       for p in paths),
                   "layer": explainer.layer.name, "input_size": list(explainer.image_size())}


def _shard_cache_key(context, parameters: dict) -> str:
    """Shard results are reused across runs (resume after a crash, re-audits) when nothing that shapes them changed:
    the dataset and model fingerprints, the shard's range, the Grad-CAM options and this package's version."""
    config: AuditConfig = parameters["config"]
    key = {"dataset": parameters["dataset_fingerprint"], "model": parameters["model_fingerprint"],
           "start": parameters["start"], "stop": parameters["stop"], "layer": config.layer, "method": config.method,
           "preprocess": _preprocess_name(config), "masks": config.masks, "fold_seed": config.seed,
           "version": _version("gradcam-audit"), "table_version": samples.TABLE_VERSION}
    return "gradcam-audit-shard-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _transient(task, task_run, state) -> bool:
    """Retry a shard only after an I/O error; a user error or a bug fails at once."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError)


@task(cache_key_fn=_shard_cache_key, persist_result=True, result_serializer="pickle", retries=2,
      retry_delay_seconds=2, retry_condition_fn=_transient)
def audit_shard(spec: SourceSpec, model_paths: list[str], config: AuditConfig, start: int, stop: int,
                dataset_fingerprint: str, model_fingerprint: str) -> samples.ShardResult:
    """Grad-CAM and statistics of samples ``start`` to ``stop`` (each with its fold's model when cross-fitting).

    The result is persisted under a key of the fingerprints and options, so a killed run started again computes
    only the shards it had not finished.
    """
    explainers = [_explainer(path, config.layer, config.method, _preprocess_name(config), config.unsafe_model)
                  for path in model_paths]
    return samples.scan(open_source(spec), explainers, start, stop, config.batch_size, fold_seed=config.seed)


@task(cache_policy=NO_CACHE)
def find(spec: SourceSpec, model_paths: list[str], config: AuditConfig, merged: samples.ShardResult,
         image_size: tuple[int, int], thresholds: findings.Thresholds) -> findings.AuditTables:
    """The findings, with the causal (occlusion) check of every shortcut candidate."""
    source = open_source(spec)
    explainer = _explainer(model_paths[0], config.layer, config.method, _preprocess_name(config),
                           config.unsafe_model)
    table = merged.table

    def occlude(k: int, region) -> occlusion.OcclusionResult:
        return occlusion.occlusion_check(explainer, source, table["label"].to_numpy(),
                                         table["sample_id"].to_numpy(), k, region, seed=config.seed)

    return findings.build_tables(table, merged.probs, merged.cams, source.class_names, image_size, thresholds,
                                 occlusion=occlude)


@task(cache_policy=NO_CACHE)
def find_duplicates(spec: SourceSpec, model_paths: list[str], config: AuditConfig, merged: samples.ShardResult,
                    image_size: tuple[int, int], thresholds: findings.Thresholds):
    """Exact and near duplicates within the audited split and, when the training split is another one, between the
    two (leakage). Embeddings come from one model (the first fold's when cross-fitting), so they are comparable."""
    logger = get_run_logger()
    audited = open_source(spec)
    explainer = _explainer(model_paths[0], config.layer, config.method, _preprocess_name(config),
                           config.unsafe_model)
    if len(model_paths) == 1:
        ids, embeddings, digests, signatures = (merged.table["sample_id"].to_numpy(), merged.embeddings,
                                                merged.digests, merged.signatures)
    else:
        ids, embeddings, digests, signatures = samples.embed(audited, explainer, image_size, config.batch_size)
    options = {"min_similarity": thresholds.min_duplicate_similarity,
               "min_pixel_correlation": thresholds.min_pixel_correlation}
    found = [duplicates.find_duplicates(ids, audited.split, embeddings, digests, signatures_a=signatures, **options)]
    train = other_training_split(config, audited)
    if train is not None:
        logger.info("looking for duplicates of the %d audited samples among the %d of %s/%s", len(ids), len(train),
                    train.name, train.split)
        train_ids, train_embeddings, train_digests, train_signatures = samples.embed(train, explainer, image_size,
                                                                                    config.batch_size)
        found.append(duplicates.find_duplicates(
            ids, audited.split, embeddings, digests, train_ids, train.split, train_embeddings, train_digests,
            signatures_a=signatures, signatures_b=train_signatures, **options))
    return pd.concat(found, ignore_index=True)


@task(cache_policy=NO_CACHE)
def write_report(out: Path, config: AuditConfig, tables: findings.AuditTables) -> Path:
    source = open_source(source_spec(config))
    return report.write_report(out, source, tables, config.gallery_size, other_training_split(config, source))


def task_runner(config: AuditConfig):
    """A DaskTaskRunner on the cluster at ``dask_address``, or on a local cluster of ``workers`` processes (one
    thread each: TensorFlow already uses the cores it has); None for the default, in-process runner."""
    if not (config.workers or config.dask_address):
        return None
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


#: Called as ``listener(samples_done, total, images_per_second)`` after every shard of a flow run in this process;
#: the CLI's live progress bar is one.
PROGRESS_LISTENERS: list = []


def _log_progress(logger, artifact_id, shards_done: int, shards: int, samples_done: int, total: int,
                  started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = samples_done / elapsed if elapsed > 0 else float("nan")
    eta = (total - samples_done) / rate if rate > 0 else float("nan")
    logger.info("shard %d/%d done: %d/%d samples, %.0f images/s, ETA %.0f s", shards_done, shards, samples_done,
                total, rate, eta)
    for listener in PROGRESS_LISTENERS:
        listener(samples_done, total, rate)
    update_progress_artifact(artifact_id, 100.0 * shards_done / shards,
                             description=f"{samples_done}/{total} samples, {rate:.0f} images/s")


@flow(name="gradcam-audit", log_prints=True)
def audit_flow(
    dataset: str = "demo",
    split: str | None = None,
    model: str | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    batch_size: int = 128,
    shard_size: int = 2048,
    out: str | None = None,
    seed: int = 0,
    epochs: int | None = None,
    train_size: int = 3000,
    test_size: int = 1000,
    gallery_size: int = 24,
    data_dir: str | None = None,
    masks: str | None = None,
    preprocess: str | None = None,
    unsafe_model: bool = False,
    cross_fit: int = 0,
    weights: str | None = None,
    workers: int = 0,
    dask_address: str | None = None,
    train_limit: int | None = None,
    artifact: dict | None = None,
    thresholds: dict | None = None,
) -> AuditResult:
    """Audit every sample of one split with Grad-CAM and write the report; parameters mirror the CLI's options.

    With ``workers`` or ``dask_address`` the shards are submitted at once to the flow's task runner (a
    DaskTaskRunner, see :func:`task_runner`); otherwise they run one after another in this process.
    """
    parameters = locals()
    config = AuditConfig(**{field.name: parameters[field.name] for field in dataclasses.fields(AuditConfig)})
    parallel = bool(workers or dask_address)
    logger = get_run_logger()
    started, now = time.perf_counter(), datetime.now()
    source = check_config(config)  # again here: deployments start the flow without pipeline.audit()
    spec = source_spec(config)
    out_dir = Path(out) if out else default_out_dir(source, now)
    logger.info("auditing %s/%s: %d samples, %d classes, %d inputs skipped", source.name, source.split,
                len(source), len(source.class_names), len(source.skipped))
    timings = {}
    tick = time.perf_counter()
    model_info = prepare_model(config)
    timings["model_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    bounds = [(start, min(start + config.shard_size, len(source)))
              for start in range(0, len(source), config.shard_size)]
    progress = create_progress_artifact(0.0, key="audit-progress", description="shards of the audit done")
    arguments = {"spec": spec, "model_paths": model_info["paths"], "config": config,
                 "dataset_fingerprint": source.fingerprint, "model_fingerprint": model_info["fingerprint"]}
    if parallel:
        futures = [audit_shard.submit(start=start, stop=stop, **arguments) for start, stop in bounds]
        pending = {future: stop - start for future, (start, stop) in zip(futures, bounds, strict=True)}
        shard_results = {}
        for future in as_completed(futures):
            shard_results[future] = future.result()
            _log_progress(logger, progress, len(shard_results), len(bounds),
                          sum(pending[f] for f in shard_results), len(source), tick)
        shards = [shard_results[future] for future in futures]
    else:
        shards = []
        for start, stop in bounds:
            shards.append(audit_shard(start=start, stop=stop, **arguments))
            _log_progress(logger, progress, len(shards), len(bounds), stop, len(source), tick)
    timings["gradcam_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    thresholds = findings.Thresholds.from_overrides(config.thresholds)
    merged = samples.merge(shards)
    if merged.table.empty:
        raise AuditError("no sample of the split could be decoded; see the skipped inputs")
    decode_skipped = merged.skipped
    size = tuple(model_info["input_size"])
    tables = find(spec, model_info["paths"], config, merged, size, thresholds)
    tables.duplicates = find_duplicates(spec, model_info["paths"], config, merged, size, thresholds)
    timings["findings_s"] = time.perf_counter() - tick
    detection = None
    if source.planted is not None:
        detection = validation.detection_figures(tables.samples, tables.classes, source.planted["class_name"])

    warnings = []
    if config.model is not None and source.split == "train":
        warnings.append("This is the training split: if your model was trained on it, its predictions are "
                        "in-sample, which hides label errors and overstates accuracy.")
    elif config.model is None and model_info["trained_on"] == f"{source.name}/{source.split}":
        warnings.append("The model was trained on the audited split: predictions are in-sample, which hides label "
                        "errors and overstates accuracy. Pass --cross-fit K for out-of-sample predictions.")
    if config.model is None and not config.weights and source.natural_size != tuple(model_info["input_size"]):
        warnings.append("No model was given: a reference CNN was trained from scratch at a reduced resolution "
                        f"({model_info['input_size'][0]}x{model_info['input_size'][1]}).")
    skipped = source.skipped + decode_skipped
    tables.meta = {
        "run_id": uuid.uuid4().hex,
        "created": now.isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "dataset": source.describe(),
        "model": model_info,
        "results": {"samples": len(tables.samples),
                    "accuracy": float((tables.samples["label"] == tables.samples["pred"]).mean()),
                    "flagged_classes": tables.classes.loc[tables.classes["flagged"], "class_name"].tolist(),
                    "duplicates": duplicates.pair_counts(tables.duplicates)},
        "thresholds": thresholds.as_dict(),
        "validation": detection,
        "skipped": skipped,
        "warnings": warnings,
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}},
        "timings": timings,
    }
    # Everything up to writing the report itself, which records this figure.
    timings["total_s"] = time.perf_counter() - started
    report_dir = write_report(out_dir, config, tables)

    flagged = tables.meta["results"]["flagged_classes"]
    create_link_artifact(key="audit-report", link=report_dir.resolve().as_uri(), link_text="Grad-CAM audit report")
    create_markdown_artifact(
        key="audit-summary",
        markdown=f"# Grad-CAM audit of {source.name}/{source.split}\n\n"
                 f"{len(tables.samples)} samples, accuracy {tables.meta['results']['accuracy']:.1%}, "
                 f"{len(skipped)} inputs skipped.\n\nFlagged classes: {', '.join(flagged) or 'none'}.\n\n"
                 f"Report: `{report_dir}`",
    )
    create_table_artifact(
        key="audit-classes",
        table=tables.classes[["class_name", "samples", "accuracy", "border_focus", "corner_focus",
                              "background_attention", "shortcut_score", "flagged", "evidence"]]
        .round(4).to_dict(orient="records"),
        description="Classes of the audited split, with the shortcut evidence behind every flag",
    )
    logger.info("report written to %s", report_dir)
    return AuditResult(report_dir, tables.samples, tables.classes, tables.meta, tables.duplicates)


def serve_schedule(name: str, cron: str, config: AuditConfig) -> None:
    """Create or update the deployment ``gradcam-audit/<name>`` with a cron schedule on the Prefect server named by
    ``PREFECT_API_URL``, and serve it: this process runs the scheduled audits until it is stopped (Ctrl-C)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise AuditError("scheduling needs a Prefect server (the ephemeral API cannot run schedules): start one with "
                         "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise AuditError(f"--cron {cron!r} is not a valid cron expression (for example '0 3 * * 1')") from None
    with get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:
            raise AuditError(f"no Prefect server answers at {url}; start one with `prefect server start`")
    check_config(config)
    audit_flow.serve(name=name, cron=cron, parameters=config.as_dict(), entrypoint_type=EntrypointType.MODULE_PATH,
                     description=f"Scheduled Grad-CAM audit of {config.dataset}")
