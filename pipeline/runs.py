"""What a run is around its tables: the source and model its configuration names, the checks made before it
starts, its default report directory, its warnings and its record (the body of ``audit.json``).

Plain functions of an :class:`~pipeline.config.AuditConfig`; the Prefect flow (:mod:`pipeline.flows`) calls them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import platform
import re
import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import duplicates, models
from .artifacts import Artifact
from .config import AuditConfig, Thresholds, out_lock, taken_by_another_run
from .datasets import Source, SourceSpec, SyntheticSource, open_source, spec_for
from .errors import AuditError, quoted
from .gradcam import GradCAM

#: Packages whose versions every run records.
PACKAGES = ("gradcam-audit", "tensorflow", "keras", "numpy", "pandas", "scikit-image", "cleanlab", "prefect", "jinja2")


def package_version(package: str) -> str:
    """The installed version of ``package``, or ``"not installed"``."""
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


#: Folds of the out-of-sample predictions an audit makes by default when a reference model would otherwise train on
#: the audited split itself (in-sample predictions hide label errors).
DEFAULT_CROSS_FIT = 5


def with_cross_fit(config: AuditConfig, audited: Source) -> AuditConfig:
    """``config`` with its number of cross-fitting folds decided: as given, else :data:`DEFAULT_CROSS_FIT` when no
    model is given and the reference model's training split is the audited one, else 0."""
    if config.cross_fit is not None:
        return config
    in_sample = config.model is None and audited.training_split() == audited.split
    return dataclasses.replace(config, cross_fit=DEFAULT_CROSS_FIT if in_sample else 0)


def training_source(config: AuditConfig, audited: Source) -> Source:
    """The source a reference model trains on: the audited split itself when cross-fitting, else the source's
    training split (:meth:`~pipeline.datasets.Source.training_split`)."""
    if config.cross_fit:
        return audited
    return open_source(source_spec(config, split=audited.training_split()))


def other_training_split(config: AuditConfig, audited: Source) -> Source | None:
    """The training split when it is not the audited one (duplicates across splits are leakage), else None."""
    split = audited.training_split()
    return open_source(source_spec(config, split=split)) if split != audited.split else None


def default_out_dir(source: Source, now: datetime) -> Path:
    """``reports/demo-<time>-<random>`` for the demo, ``reports/<dataset>-<split>-<time>-<random>`` otherwise: runs
    started in the same second get different directories."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    name = "demo" if isinstance(source, SyntheticSource) else f"{source.name}-{source.split}"
    return Path("reports") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{stamp}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def reserved(out: Path) -> Iterator[None]:
    """Hold the report directory ``out`` for the run in this block: a second run given the same ``out`` is refused
    at its start, not after its work. The hold is an exclusive lock on ``.<name>.lock`` beside ``out`` (released by
    the kernel if the process dies, so a killed run blocks nothing); the lock file is removed at the end."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out_lock(out)
    handle = open(lock, "a")  # held open, and locked, for the whole block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise taken_by_another_run(out) from None
    try:
        if out.exists():  # taken since this run's own first check?
            raise AuditError(f"report directory {quoted(str(out))} already exists; choose another --out")
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def preprocess_name(config: AuditConfig) -> str:
    """How pixels reach the model (:data:`pipeline.config.PREPROCESSING`): the configured name, else ``"none"``."""
    return config.preprocess or "none"


@functools.lru_cache(maxsize=8)
def _explainer(model_path: str, layer: str | None, method: str, preprocess: str, unsafe: bool) -> GradCAM:
    return GradCAM(models.load_model(model_path, unsafe=unsafe), layer=layer, method=method,
                   preprocess=models.preprocess_function(preprocess))


def explainer(config: AuditConfig, model_path: str) -> GradCAM:
    """The compiled Grad-CAM of the model at ``model_path`` with the configuration's layer, method and
    preprocessing; one per process and model, shared by the shards that process runs."""
    return _explainer(str(model_path), config.layer, config.method, preprocess_name(config), config.unsafe_model)


def describe_model(config: AuditConfig, paths: list[str], *, origin: str, trained: list | None = None,
                   trained_on: str | None = None) -> dict:
    """What the run records of its model(s) (``audit.json`` -> model): where they are and come from, their
    fingerprints, the target layer and input size, and for reference models their training history and time.
    ``trained`` are the :class:`~pipeline.models.TrainedModel` s behind ``paths``, if they were trained here."""
    trained = trained or []
    first = explainer(config, paths[0])
    return {
        "preprocess": preprocess_name(config),
        "cross_fit": config.cross_fit,
        "train_history": trained[0].history if len(trained) == 1 else [run.history for run in trained] or {},
        "train_seconds": sum(run.seconds for run in trained) if trained else 0.0,
        "trained_on": trained_on,
        "paths": paths,
        "name": first.model.name,
        "origin": origin,
        "fingerprint": "+".join(models.fingerprint_model(explainer(config, path).model) for path in paths),
        "layer": first.layer.name,
        "input_size": list(first.image_size()),
    }


def check_config(config: AuditConfig) -> Source:
    """Open the source (and the user's model) and check what can be checked before the flow starts, so that user
    errors raise :class:`AuditError` with their message instead of failing a flow run."""
    config.check_paths()
    Thresholds.from_overrides(config.thresholds)
    source = open_source(source_spec(config))
    if len(source.class_names) < 2:
        raise AuditError(f"{quoted(config.dataset)} has {len(source.class_names)} class "
                         f"({', '.join(map(quoted, source.class_names))}); a classifier's audit needs at least two")
    models.preprocess_function(preprocess_name(config))
    if config.model is not None:
        model = explainer(config, config.model).model
        models.check_fit(model, source.class_names)
        if config.preprocess is None and not models.has_own_preprocessing(model):
            raise AuditError("the model has no Rescaling or Normalization layer of its own: declare how it expects "
                             f"its pixels with --preprocess ({', '.join(models.PREPROCESSING)})")
    # The training split, which the duplicate search reads (and a reference model trains on): opened here, so that a
    # problem with it surfaces before the work starts, and (in pipeline.audit) while Prefect's server starts; the
    # process keeps it open (50,000 CIFAR-10 files take about 2.5 s to open).
    other_training_split(config, source)
    return source


def run_warnings(config: AuditConfig, source: Source, model_info: dict) -> list[str]:
    """What the reader of a report must know about how its predictions were made (in-sample, reduced size)."""
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
    return warnings


def run_record(config: AuditConfig, source: Source, model_info: dict, tables, thresholds: Thresholds, *,
               created: datetime, skipped: list[dict], detection: dict | None, timings: dict,
               workers: list[dict]) -> dict:
    """The body of ``audit.json``: what was run (configuration, dataset and model fingerprints, versions), what it
    found in numbers, the thresholds behind every flag, skipped inputs, warnings, timings and which worker
    process computed each shard."""
    samples, classes = tables.samples, tables.classes
    return {
        "run_id": uuid.uuid4().hex,
        "created": created.isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "dataset": source.describe(),
        "model": model_info,
        "results": {"samples": len(samples),
                    "accuracy": float((samples["label"] == samples["pred"]).mean()),
                    "flagged_classes": classes.loc[classes["flagged"], "class_name"].tolist(),
                    "duplicates": duplicates.pair_counts(tables.duplicates)},
        "thresholds": thresholds.as_dict(),
        "validation": detection,
        "skipped": skipped,
        "warnings": run_warnings(config, source, model_info),
        "versions": {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}},
        "timings": timings,
        "shards": workers,
    }
