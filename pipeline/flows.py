"""Prefect orchestration of an audit: open the source, get the model, one task per shard, findings, report.

Only orchestration lives here (sharding, caching and retries of shards, logging, progress, artifacts); every number,
table and sentence is computed by the core modules, and the run's record by :mod:`pipeline.runs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

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

from . import _dask_worker, _workers, findings, models, occlusion, report, runs, samples, sprites, validation
from .config import AuditConfig, AuditResult, Thresholds
from .datasets import SourceSpec, open_source
from .errors import AuditError, quoted
from .settings import cache_dir


@task(cache_policy=NO_CACHE)
def prepare_model(config: AuditConfig) -> dict:
    """The model(s) to audit with: the user's file; a reference model trained on the training split (cached); or,
    with ``cross_fit`` K, K reference models each trained without one fold of the audited split."""
    if config.model is not None:
        return runs.describe_model(config, [str(config.model)], origin="user model")
    audited = open_source(runs.source_spec(config))
    trained, trained_on = models.train_reference_models(
        runs.training_source(config, audited), cache_dir=cache_dir() / "models", weights=config.weights,
        epochs=config.epochs, train_limit=config.train_limit, cross_fit=config.cross_fit, seed=config.seed,
        progress=get_run_logger().info)
    origin = "reference model" + (", loaded from cache" if all(r.cached for r in trained) else ", trained now")
    return runs.describe_model(config, [str(r.path) for r in trained], origin=origin, trained=trained,
                               trained_on=trained_on)


def _shard_cache_key(context, parameters: dict) -> str:
    """Shard results are reused across runs (resume after a crash, re-audits) when nothing that shapes them changed:
    the dataset and model fingerprints, the shard's range, the Grad-CAM options and this package's version."""
    config: AuditConfig = parameters["config"]
    key = {"dataset": parameters["dataset_fingerprint"], "model": parameters["model_fingerprint"],
           "start": parameters["start"], "stop": parameters["stop"], "layer": config.layer, "method": config.method,
           "preprocess": runs.preprocess_name(config), "masks": config.masks, "fold_seed": config.seed,
           "version": runs.package_version("gradcam-audit"), "table_version": samples.TABLE_VERSION}
    return "gradcam-audit-shard-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _transient(task, task_run, state) -> bool:
    """Retry a shard only after an I/O error; a user error or a bug fails at once."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError)


# Persisted, not kept in memory by Prefect's result store as well: once merged, a shard's result is let go (Prefect's
# in-memory cache of results held every shard to the end of the run, beside their merged copy).
@task(cache_key_fn=_shard_cache_key, persist_result=True, cache_result_in_memory=False, result_serializer="pickle",
      retries=2, retry_delay_seconds=2, retry_condition_fn=_transient)
def audit_shard(spec: SourceSpec, model_paths: list[str], config: AuditConfig, start: int, stop: int,
                dataset_fingerprint: str, model_fingerprint: str) -> samples.ShardResult:
    """Grad-CAM and statistics of samples ``start`` to ``stop`` (each with its fold's model when cross-fitting).

    The result is persisted under a key of the fingerprints and options, so a killed run started again computes
    only the shards it had not finished. It records the process that computed it.
    """
    tick = time.perf_counter()
    # Not in the cache key: a shard reused without the explorer's thumbnails has the report decode them instead.
    # Shards on Dask workers already run side by side: there, each estimates the foreground in its own process.
    processes = 1 if config.workers or config.dask_address else _workers.PROCESSES
    result = samples.scan(open_source(spec), [runs.explainer(config, path) for path in model_paths], start, stop,
                          config.batch_size, fold_seed=config.seed, explorer_thumbnails=not config.link_images,
                          processes=processes)
    worker = {"start": start, "stop": stop, "host": socket.gethostname(), "pid": os.getpid(),
              "threads": _dask_worker.tensorflow_threads(),
              "seconds": round(time.perf_counter() - tick, 3)}
    return dataclasses.replace(result, worker=worker)


@task(cache_policy=NO_CACHE)
def find(spec: SourceSpec, model_paths: list[str], config: AuditConfig, merged: samples.ShardResult,
         image_size: tuple[int, int], thresholds: Thresholds) -> findings.AuditTables:
    """The findings, with the causal (occlusion) check of every shortcut candidate, every sample's reliance on the
    candidates' regions and the transplant check of those neither confirms (each with every sample predicted by the
    model that audited it)."""
    source, table = open_source(spec), merged.table
    explainers = [runs.explainer(config, path) for path in model_paths]

    def occlude(k: int, region, population) -> occlusion.OcclusionResult:
        return occlusion.occlusion_check(explainers, source, table["label"].to_numpy(),
                                         table["sample_id"].to_numpy(), k, region, size=image_size,
                                         batch_size=config.batch_size, seed=config.seed, population=population,
                                         fold_seed=config.seed)

    def paste(k: int, region, population) -> occlusion.TransplantResult:
        return occlusion.transplant_check(explainers, source, table["label"].to_numpy(),
                                          table["sample_id"].to_numpy(), k, region, batch_size=config.batch_size,
                                          seed=config.seed, population=population, fold_seed=config.seed)

    def rely(regions: dict) -> dict:
        tick = time.perf_counter()
        drops = occlusion.reliance(explainers, source,
                                   table["sample_id"].to_numpy(), table["label"].to_numpy(),
                                   table["label_prob"].to_numpy(), regions, size=image_size,
                                   batch_size=config.batch_size, fold_seed=config.seed, seed=config.seed)
        get_run_logger().info("reliance on the regions of %d classes (each class's images, and %d drawn from the "
                              "split): %.1f s", len(regions), min(occlusion.MAX_OTHERS, len(table)),
                              time.perf_counter() - tick)
        return drops

    return findings.build_tables(table, merged.probs, merged.cams, merged.label_cams, source.class_names, image_size,
                                 thresholds, occlusion=occlude, reliance=rely, transplant=paste,
                                 thumbnails=merged.thumbnails)


@task(cache_policy=NO_CACHE)
def find_duplicates(spec: SourceSpec, config: AuditConfig, merged: samples.ShardResult, image_size: tuple[int, int],
                    thresholds: Thresholds):
    """Exact and near duplicates within the audited split and, when the training split is another one, between the
    two (leakage). From the pixels the model saw, not from the model."""
    audited = open_source(spec)
    other = runs.other_training_split(config, audited)
    if other is not None:
        get_run_logger().info("looking for duplicates of the %d audited samples among the %d of %s/%s",
                              len(merged.table), len(other), other.name, other.split)
    return samples.split_duplicates(audited, merged, size=image_size, batch_size=config.batch_size,
                                    thresholds=thresholds, other=other)


@task(cache_policy=NO_CACHE)
def write_report(out: Path, config: AuditConfig, tables: findings.AuditTables,
                 sprite_sheets: sprites.SpriteSheets | None) -> Path:
    source = open_source(runs.source_spec(config))
    return report.write_report(out, source, tables, gallery_size=config.gallery_size,
                               other=runs.other_training_split(config, source), link_images=config.link_images,
                               sprite_sheets=sprite_sheets)


def task_runner(config: AuditConfig):
    """A DaskTaskRunner on the cluster at ``dask_address``, or on a local cluster of ``workers`` processes (one
    task thread each, and :mod:`pipeline._dask_worker` preloaded, which gives each worker's TensorFlow its share of
    the machine's cores instead of all of them); None for the default, in-process runner."""
    if not (config.workers or config.dask_address):
        return None
    from prefect_dask import DaskTaskRunner

    _dask_worker.quiet()
    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    share = max(1, len(os.sched_getaffinity(0)) // config.workers)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "preload": ["pipeline._dask_worker"],
                                          "env": {_dask_worker.THREADS_ENV: str(share)}})


#: ``progress(samples_done, total, images_per_second)``, called after every shard (the CLI's live progress bar).
Progress = Callable[[int, int, float], None]


def _run_shards(source, config: AuditConfig, model_info: dict, progress: Progress | None) -> list[samples.ShardResult]:
    """Every shard of the audited split: submitted at once to the flow's task runner when it has workers, else one
    after another here; progress is logged, reported to ``progress`` and to a progress artifact as shards finish."""
    logger, started = get_run_logger(), time.perf_counter()
    bounds = [(start, min(start + config.shard_size, len(source))) for start in range(0, len(source),
                                                                                      config.shard_size)]
    artifact = create_progress_artifact(0.0, key="audit-progress", description="shards of the audit done")
    arguments = {"spec": runs.source_spec(config), "model_paths": model_info["paths"], "config": config,
                 "dataset_fingerprint": source.fingerprint, "model_fingerprint": model_info["fingerprint"]}
    done = {}

    def finished(index: int, result: samples.ShardResult) -> None:
        done[index] = result
        total = sum(stop - start for start, stop in (bounds[i] for i in done))
        elapsed = time.perf_counter() - started
        rate = total / elapsed if elapsed > 0 else float("nan")
        eta = (len(source) - total) / rate if rate > 0 else float("nan")
        logger.info("shard %d/%d done: %d/%d samples, %.0f images/s, ETA %.0f s", len(done), len(bounds), total,
                    len(source), rate, eta)
        if progress is not None:
            progress(total, len(source), rate)
        update_progress_artifact(artifact, 100.0 * len(done) / len(bounds),
                                 description=f"{total}/{len(source)} samples, {rate:.0f} images/s")

    if config.workers or config.dask_address:
        futures = {audit_shard.submit(start=start, stop=stop, **arguments): i for i, (start, stop) in
                   enumerate(bounds)}
        for future in as_completed(list(futures)):
            finished(futures[future], future.result())
    else:
        for i, (start, stop) in enumerate(bounds):
            finished(i, audit_shard(start=start, stop=stop, **arguments))
    return [done[i] for i in range(len(bounds))]


def _publish(report_dir: Path, tables: findings.AuditTables) -> None:
    """Artifacts that make the run inspectable in Prefect's UI: a link to the report, a summary, the class table."""
    meta, flagged = tables.meta, tables.meta["results"]["flagged_classes"]
    create_link_artifact(key="audit-report", link=report_dir.resolve().as_uri(), link_text="Grad-CAM audit report")
    create_markdown_artifact(
        key="audit-summary",
        markdown=f"# Grad-CAM audit of {meta['dataset']['name']}/{meta['dataset']['split']}\n\n"
                 f"{meta['results']['samples']} samples, accuracy {meta['results']['accuracy']:.1%}, "
                 f"{len(meta['skipped'])} inputs skipped.\n\nFlagged classes: {', '.join(flagged) or 'none'}.\n\n"
                 f"Report: `{report_dir}`",
    )
    create_table_artifact(
        key="audit-classes",
        table=tables.classes[["class_name", "samples", "accuracy", "border_focus", "corner_focus",
                              "background_attention", "shortcut_score", "flagged", "evidence"]]
        .round(4).to_dict(orient="records"),
        description="Classes of the audited split, with the shortcut evidence behind every flag",
    )


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
    link_images: bool = False,
    data_dir: str | None = None,
    masks: str | None = None,
    preprocess: str | None = None,
    unsafe_model: bool = False,
    cross_fit: int | None = None,
    weights: str | None = None,
    workers: int = 0,
    dask_address: str | None = None,
    train_limit: int | None = None,
    artifact: dict | None = None,
    thresholds: dict | None = None,
    progress: Any = None,
) -> AuditResult:
    """Audit every sample of one split with Grad-CAM and write the report; parameters mirror the CLI's options,
    plus ``progress``, an optional :data:`Progress` callback (not part of a deployment's parameters).

    With ``workers`` or ``dask_address`` the shards are submitted at once to the flow's task runner (a
    DaskTaskRunner, see :func:`task_runner`); otherwise they run one after another in this process.
    """
    parameters = locals()
    config = AuditConfig(**{field.name: parameters[field.name] for field in dataclasses.fields(AuditConfig)})
    source = runs.check_config(config)  # again here: deployments start the flow without pipeline.audit()
    out_dir = Path(out) if out else runs.default_out_dir(source, datetime.now())
    with runs.reserved(out_dir):
        try:
            return _audit(config, source, out_dir, progress)
        finally:
            _workers.stop()  # the foreground estimate's worker processes, if the shards started them


def _audit(config: AuditConfig, source, out_dir: Path, progress: Progress | None) -> AuditResult:
    """The plan of an audit: the model, the shards, the findings and duplicates, the run's record, the report."""
    logger, started, now, timings = get_run_logger(), time.perf_counter(), datetime.now(), {}
    config = runs.with_cross_fit(config, source)
    logger.info("auditing %s/%s: %d samples, %d classes, %d inputs skipped", source.name, source.split,
                len(source), len(source.class_names), len(source.skipped))
    tick = time.perf_counter()
    model_info = prepare_model(config)
    timings["model_s"], tick = time.perf_counter() - tick, time.perf_counter()
    shards = _run_shards(source, config, model_info, progress)
    timings["gradcam_s"], tick = time.perf_counter() - tick, time.perf_counter()

    thresholds = Thresholds.from_overrides(config.thresholds)
    merged, workers = samples.merge(shards), [shard.worker for shard in shards]
    del shards  # the merged copy is all the run needs of them
    if merged.table.empty:
        raise AuditError("no sample of the split could be decoded; see the skipped inputs")
    spec, size = runs.source_spec(config), tuple(model_info["input_size"])
    # Seconds per stage inside the shards, summed over them (worker-seconds when shards run in parallel; a shard
    # reused from the result store keeps the figures of the run that computed it).
    timings["shard_stages_s"] = {stage: round(seconds, 3) for stage, seconds in merged.stages.items()}
    tables = find(spec, model_info["paths"], config, merged, size, thresholds)
    timings["findings_s"], tick = time.perf_counter() - tick, time.perf_counter()
    tables.duplicates = find_duplicates(spec, config, merged, size, thresholds)
    timings["duplicates_s"] = time.perf_counter() - tick
    detection = None if source.planted is None else validation.detection_figures(
        tables.samples, tables.classes, source.planted["class_name"])
    tables.meta = runs.run_record(config, source, model_info, tables, thresholds, created=now,
                                  skipped=source.skipped + merged.skipped, detection=detection, timings=timings,
                                  workers=workers)
    timings["total_s"] = time.perf_counter() - started  # everything up to writing the report, which records it
    report_dir = write_report(out_dir, config, tables, merged.sprite_sheets)
    _publish(report_dir, tables)
    logger.info("report written to %s", report_dir)
    return AuditResult(report_dir, tables.samples, tables.classes, tables.meta, tables.duplicates)


def check_cron(cron: str) -> None:
    """Refuse a cron expression Prefect would not schedule, before anything else is checked or started."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise AuditError(f"--cron {quoted(cron)} is not a valid cron expression (for example '0 3 * * 1')") from None


def serve_schedule(name: str, cron: str, config: AuditConfig) -> None:
    """Create or update the deployment ``gradcam-audit/<name>`` with a cron schedule on the Prefect server named by
    ``PREFECT_API_URL``, and serve it: this process runs the scheduled audits until it is stopped (Ctrl-C)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL

    check_cron(cron)
    url = PREFECT_API_URL.value()
    if not url:
        raise AuditError("scheduling needs a Prefect server (the ephemeral API cannot run schedules): start one with "
                         "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    with get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:
            raise AuditError(f"no Prefect server answers at {url}; start one with `prefect server start`")
    runs.check_config(config)
    audit_flow.serve(name=name, cron=cron, parameters=config.as_dict(), entrypoint_type=EntrypointType.MODULE_PATH,
                     description=f"Scheduled Grad-CAM audit of {config.dataset}")
