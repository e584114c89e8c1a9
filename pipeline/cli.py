"""The ``gradcam-audit`` command line: a thin layer over :func:`pipeline.audit`.

Exit status: 0 on success, 2 for a user error (one line on stderr saying what to do), 1 for anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import AuditError, _supervise, artifacts, audit, synthetic
from .config import CAM_METHODS, PREPROCESSING, AuditConfig, Thresholds
from .errors import quoted
from .settings import apply_environment_defaults

DEFAULTS = AuditConfig()
#: The artifacts `validate` and `demo --plant` plant, as the help says them.
ARTIFACT_WORDS = {
    "corner": "a checkerboard mark in a corner",
    "patch": "the same checkerboard anywhere (a logo inside the image)",
    "frame": "a solid border",
    "stamp": "white text",
    "background": "the background outside the object's true mask replaced by a texture or a colour, or tinted "
                  "(needs masks: the demo, or --masks)",
}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def _add_audit_options(parser: argparse.ArgumentParser) -> None:
    """Options that keep one meaning in every subcommand that audits."""
    parser.add_argument("--model", metavar="PATH",
                        help="a .keras or .h5 classifier to audit, loaded in Keras safe mode (default: train or reuse "
                             "a cached reference CNN on the dataset's train split)")
    parser.add_argument("--preprocess", choices=list(PREPROCESSING),
                        help="how the --model expects its pixels: " + "; ".join(f"{k}: {v}" for k, v in
                                                                             PREPROCESSING.items())
                             + " (required for a model without its own Rescaling/Normalization layer)")
    parser.add_argument("--unsafe-model", action="store_true",
                        help="allow arbitrary Python code (Lambda layers) in a --model file you trust")
    parser.add_argument("--cross-fit", type=int, default=None, metavar="K",
                        help="train K reference models on K folds of the audited split and explain every sample "
                             "with the model that did not see it (out-of-sample predictions for the training split; "
                             "default: 5 when the reference model would otherwise train on the audited split, as "
                             "for a folder without split folders; 0: in-sample predictions)")
    parser.add_argument("--weights", choices=["imagenet"],
                        help="reference model: a MobileNetV2 pretrained on ImageNet at 160x160 (downloads the "
                             "weights once; default: a small CNN trained from scratch)")
    parser.add_argument("--workers", type=_positive, default=0, metavar="N",
                        help="run shards in parallel on a local Dask cluster of N worker processes")
    parser.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                        help="run shards on an existing Dask cluster (its scheduler's address)")
    parser.add_argument("--layer", metavar="NAME",
                        help="Grad-CAM target layer (default: the last layer with a spatial output)")
    parser.add_argument("--method", choices=list(CAM_METHODS), default=DEFAULTS.method,
                        help="how channel weights are computed: " + "; ".join(CAM_METHODS.values())
                             + " (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=DEFAULTS.batch_size, metavar="N",
                        help="images per Grad-CAM batch (default: %(default)s)")
    parser.add_argument("--shard-size", type=_positive, default=DEFAULTS.shard_size, metavar="N",
                        help="samples per Prefect task (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR",
                        help="report directory, must not exist (default: reports/<dataset>-<split>-<time>)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, metavar="N",
                        help="seed of data generation and training (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive, metavar="N",
                        help="reference-model training epochs (default: by the training set's size, see the "
                             "README's 'Models')")
    parser.add_argument("--train-limit", type=_positive, metavar="N",
                        help="reference models: train on a fixed random subset of at most N images of the training "
                             "split (faster, less accurate; default: all)")
    parser.add_argument("--threshold", dest="thresholds", action="append", metavar="NAME=VALUE",
                        type=_threshold,
                        help="change a threshold behind the flags (repeatable): "
                             + ", ".join(f"{name} (default {value})" for name, value in Thresholds().as_dict().items()))
    parser.add_argument("--gallery-size", type=_positive, default=DEFAULTS.gallery_size, metavar="N",
                        help="samples shown per gallery in the report (default: %(default)s)")
    parser.add_argument("--link-images", action="store_true",
                        help="image folders: the report's explorer shows the dataset's own files, linked by relative "
                             "paths, instead of thumbnails in sprite sheets (a smaller report that needs the dataset "
                             "beside it)")


def _add_demo_sizes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-size", type=_positive, default=DEFAULTS.train_size, metavar="N",
                        help="demo dataset: images in the train split (default: %(default)s)")
    parser.add_argument("--test-size", type=_positive, default=DEFAULTS.test_size, metavar="N",
                        help="demo dataset: images in the test split (default: %(default)s)")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    """DATASET and the options that say which of its images to audit."""
    parser.add_argument("dataset", metavar="DATASET", help="an image folder, a tfds name, or 'demo'")
    parser.add_argument("--split", help="split to audit; tfds slicing works ('test[:20%%]') (default: 'test' where "
                                        "there is one; 'all' for a folder without split folders)")
    parser.add_argument("--data-dir", metavar="DIR", help="tfds: where a prepared copy of the dataset lies")
    parser.add_argument("--masks", metavar="DIR",
                        help="image folders: foreground masks named like the images (<DIR>/<class>/<stem>.png or "
                             "<DIR>/<stem>.png; trimaps 1=object 2=background 3=boundary, or binary)")
    _add_demo_sizes(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradcam-audit",
        description="Audit what an image classifier looks at across a whole dataset split: Grad-CAM for every "
                    "sample, heatmap statistics (border focus, background attention, ...), likely shortcut "
                    "classes, relabel candidates, and an HTML report.",
        epilog="Reports go to reports/<run>/ (index.html, samples.csv/.parquet, classes.csv, audit.json). "
               "Trained reference models are cached in $GRADCAM_AUDIT_CACHE (default ~/.cache/gradcam-audit).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="audit a built-in synthetic dataset with a planted shortcut (offline, about a minute)",
        description=f"Generate a 5-class synthetic dataset whose {synthetic.PLANTED_CLASS!r} class carries a small "
                    f"mark in the bottom-right corner on {100 * synthetic.PLANTED_RATE:.0f}% of its images (or, with "
                    "--plant, another artifact), train a small CNN on its train split, audit every image of its test "
                    "split, and write reports/demo-<time>/.",
    )
    demo.add_argument("--plant", choices=list(artifacts.KINDS),
                      help="plant this artifact (as `validate` does, at its default position and size) into the "
                           f"{synthetic.PLANTED_CLASS!r} images instead of the demo's own corner mark: "
                           + "; ".join(f"{k}: {v}" for k, v in ARTIFACT_WORDS.items()))
    _add_audit_options(demo)
    _add_demo_sizes(demo)

    run = commands.add_parser(
        "run", help="audit one split of a dataset: an image folder, a tfds dataset, or 'demo'",
        description="Audit every sample of one split of DATASET: an image folder laid out as <root>/<class>/<file> "
                    "or <root>/<split>/<class>/<file>; a tensorflow-datasets name (cifar10, cats_vs_dogs, any "
                    "set with an image and a class label), downloaded when not prepared in --data-dir; or 'demo'. "
                    "Undecodable files are skipped and listed with their reasons in the report and audit.json.",
    )
    _add_source_options(run)
    _add_audit_options(run)

    schedule = commands.add_parser(
        "schedule", help="audit a dataset on a cron schedule, as a Prefect deployment",
        description="Create or update the Prefect deployment gradcam-audit/NAME that audits DATASET on the cron "
                    "schedule CRON, on the Prefect server named by PREFECT_API_URL (start one with `prefect server "
                    "start`; the ephemeral API cannot run schedules), and serve it: this command keeps running and "
                    "runs the scheduled audits, each writing its own report, until you stop it.",
    )
    schedule.add_argument("name", metavar="NAME", help="the deployment's name")
    _add_source_options(schedule)
    schedule.add_argument("--cron", required=True, help="when to run, e.g. '0 3 * * 1' for Mondays at 03:00 (UTC)")
    _add_audit_options(schedule)

    validate = commands.add_parser(
        "validate", help="plant an artifact into a copy of a dataset, audit it, and measure whether it is found",
        description="Blend an artifact (a corner mark, a patch anywhere, a border frame, a text stamp, or a "
                    "replaced background) into a fraction of one class's images in every split of DATASET (in "
                    "memory; nothing is written to the dataset), train a reference model on the planted training "
                    "split, audit the planted audited split, and print "
                    "the detection figures: the planted class's rank among the classes, whether a clean class was "
                    "flagged, the sample-level AUROC and precision at k of stamped versus clean images. The report "
                    "holds them too (audit.json -> validation).",
    )
    _add_source_options(validate)
    validate.add_argument("--artifact", required=True, choices=list(artifacts.KINDS),
                          help="; ".join(f"{k}: {v}" for k, v in ARTIFACT_WORDS.items()))
    validate.add_argument("--class", dest="class_name", metavar="NAME",
                          help="the class whose images get the artifact (default: the first class)")
    validate.add_argument("--position", metavar="WHERE",
                          help="corner mark, patch and stamp: a corner (" + ", ".join(artifacts.POSITIONS)
                               + ") or X,Y, the artifact's centre as fractions of the width and height in [0, 1] "
                                 "(0.5,0.4: centred, a little above the middle) (defaults: "
                               + ", ".join(f"{k} {v}" for k, v in artifacts.DEFAULT_POSITIONS.items()) + ")")
    validate.add_argument("--size", type=float, metavar="F",
                          help="fraction of the shorter side: the patch's side, the frame's width, the text's height "
                               f"(defaults: {', '.join(f'{k} {v}' for k, v in artifacts.DEFAULT_SIZES.items())})")
    validate.add_argument("--opacity", type=float, default=1.0, metavar="F",
                          help="alpha of the artifact, in (0, 1] (default: %(default)s)")
    validate.add_argument("--rate", type=float, default=0.5, metavar="F",
                          help="fraction of the class's images that carry it, in (0, 1] (default: %(default)s)")
    validate.add_argument("--text", default="stock", help="the stamp's text (default: %(default)s)")
    validate.add_argument("--fill", choices=list(artifacts.FILLS),
                          help="background: what replaces it (" + "; ".join(f"{k}: {v}" for k, v in
                                                                           artifacts.FILLS.items())
                               + "); with --opacity below 1 it tints the background instead (default: texture)")
    _add_audit_options(validate)

    review = commands.add_parser(
        "apply-review", help="turn a review.csv exported from a report into label corrections",
        description="Check REVIEW_CSV (exported from a report's Review section) against its report - same run id, "
                    "audited samples, known labels - and write label-corrections.csv and label-corrections.json "
                    "(sample_id, action relabel/remove, old and new label) for a data pipeline to apply, and "
                    "label-manifest.csv (every audited sample_id with its label after the review, or 'removed').",
    )
    review.add_argument("review_csv", metavar="REVIEW_CSV", help="the review.csv exported from the report")
    review.add_argument("--report", metavar="DIR", help="the report directory (default: the folder of REVIEW_CSV)")
    review.add_argument("--out", metavar="DIR", help="where to write the corrections (default: beside REVIEW_CSV)")
    return parser


class _ProgressBar:
    """A live progress bar (samples, images/s, ETA) in the terminal, fed after every shard of the flow.

    It draws on the same rich console as Prefect's log lines (looked up when the first shard is done, after Prefect
    has configured its logging for the run), so they scroll above the bar instead of tangling with it.
    """

    def __init__(self):
        self.progress = None

    def __call__(self, done: int, total: int, rate: float) -> None:
        if self.progress is None:
            from rich.progress import BarColumn, Progress, TextColumn

            loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
            handlers = [h for logger in loggers for h in logger.handlers if hasattr(h, "console")]
            console = handlers[0].console if handlers else None
            for handler in handlers:
                handler.console = console  # one console for every Prefect log line and the bar
            # Explicit colours: Prefect's console theme does not inherit rich's progress styles.
            self.progress = Progress(
                TextColumn("auditing"),
                BarColumn(style="bright_black", complete_style="magenta", finished_style="green",
                          pulse_style="magenta"),
                TextColumn("{task.completed}/{task.total} samples, {task.fields[rate]} images/s, "
                           "ETA {task.fields[eta]}"),
                console=console, transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("audit", total=total, rate="-", eta="-")
        eta = (total - done) / rate if rate > 0 else float("nan")
        self.progress.update(self.task, completed=done, rate=f"{rate:,.0f}", eta=f"{eta:.0f} s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class _WithoutUserErrors(logging.Filter):
    """Prefect logs the exception that ends a task or flow run with its traceback; for a user error
    (:class:`AuditError`) or an interrupt the command prints its own one-line message instead."""

    def __init__(self, interrupts: _supervise.Interrupts | None = None):
        super().__init__()
        self.interrupts = interrupts

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        interrupted = self.interrupts is not None and self.interrupts.received
        return not (interrupted or isinstance(record.exc_info[1], AuditError | KeyboardInterrupt))


def _audit_with_progress(options: dict):
    """Run the audit; on a terminal, with a live progress bar under Prefect's log lines."""
    if not sys.stderr.isatty():
        return audit(**options)
    bar = _ProgressBar()
    try:
        return audit(**options, progress=bar)
    finally:
        bar.close()


def _apply_review(args: argparse.Namespace) -> None:
    from .review import apply_review

    corrections = apply_review(args.review_csv, args.report, args.out)
    actions = corrections.table["action"].value_counts()
    print(f"{actions.get('relabel', 0)} relabelled, {actions.get('remove', 0)} removed, {corrections.kept} kept")
    print(f"corrections: {corrections.csv_path} and {corrections.json_path}; every sample's label after the review: "
          f"{corrections.manifest_path}")


def _audit_options(args: argparse.Namespace, *extra: str) -> dict:
    """The parsed arguments as audit options (``--threshold`` pairs as a dict), without the command's own."""
    options = {k: v for k, v in vars(args).items() if k not in ("command", *extra)}
    options["thresholds"] = dict(options["thresholds"]) if options["thresholds"] else None
    return options


def _schedule(args: argparse.Namespace) -> None:
    options = _audit_options(args, "name", "cron")
    if options.get("out"):
        raise AuditError("a schedule writes a new report each run: drop --out")
    config = AuditConfig(**options)
    config.check_paths()
    Thresholds.from_overrides(config.thresholds)
    from .flows import check_cron, serve_schedule

    check_cron(args.cron)
    serve_schedule(args.name, args.cron, config)


ARTIFACT_OPTIONS = ("artifact", "class_name", "position", "size", "opacity", "rate", "text", "fill")


def _demo_artifact(kind: str, seed: int) -> dict:
    """The artifact ``demo --plant KIND`` plants: into the demo's planted class, at the rate of its own mark."""
    return artifacts.Artifact(kind, synthetic.PLANTED_CLASS, rate=synthetic.PLANTED_RATE, seed=seed).as_dict()


def _planted_options(options: dict) -> dict:
    """``validate``'s options as an audit's: the artifact's own options become the ``artifact`` field."""
    planted = {name: options.pop(name) for name in ARTIFACT_OPTIONS}
    if planted["class_name"] is None:
        from .datasets import open_source
        from .runs import source_spec

        planted["class_name"] = open_source(source_spec(AuditConfig(**options))).class_names[0]
    planted["kind"] = planted.pop("artifact")
    planted["seed"] = options.get("seed", 0)
    return options | {"artifact": artifacts.Artifact(**planted).as_dict()}


def _print_detection(figures: dict) -> None:
    clean = ", ".join(figures["clean_classes_flagged"]) or "none"
    flagged = "NOT flagged" if not figures["flagged"] else (
        f"flagged (confirmed by {figures['confirmed_by']})" if figures.get("confirmed_by") else "flagged")
    print(f"planted class {figures['planted_class']!r} ({figures['stamped_samples']} stamped audited images): "
          f"rank {figures['rank']}, {flagged}; clean classes flagged: {clean}")
    print(f"sample level ({figures['sample_statistic']}, {figures['suspected_region']}): AUROC "
          f"{figures['sample_auroc']:.3f} stamped vs "
          f"clean ({figures['sample_auroc_within_class']:.3f} within the class); precision at "
          f"{figures['stamped_samples']} {figures['precision_at_stamped']:.3f}, at 100 "
          f"{figures['precision_at_100']:.3f}; uses_shortcut flag precision {figures['uses_shortcut_precision']:.3f}"
          f", recall {figures['uses_shortcut_recall']:.3f}")


#: Printed when an audit is interrupted (Ctrl-C, SIGTERM).
INTERRUPTED = ("gradcam-audit: interrupted; no report was written. Shards finished so far are kept: the next run with "
               "the same options reuses them")


def _precheck(options: dict) -> None:
    """What the supervising process checks before it starts the audit: options and paths, without TensorFlow."""
    artifact = options.get("artifact")  # demo --plant: an Artifact's fields already
    if "class_name" in options:  # validate: the artifact's own options
        planted = {name: options[name] for name in ARTIFACT_OPTIONS}
        artifact = artifacts.Artifact(**{k: v for k, v in planted.items() if k not in ("artifact", "class_name")},
                                      kind=planted["artifact"], class_name=planted["class_name"] or "?").as_dict()
    config = AuditConfig(**{k: v for k, v in options.items() if k not in ARTIFACT_OPTIONS}, artifact=artifact)
    config.check_paths()
    Thresholds.from_overrides(config.thresholds)


def main(argv: list[str] | None = None) -> int:
    """The command line. Run as a program (``argv`` None), an audit command runs in a supervised child process, so
    that Ctrl-C and SIGTERM stop it cleanly; called with ``argv`` (tests, other Python code), it runs in-process."""
    args = build_parser().parse_args(argv)
    apply_environment_defaults()  # before anything imports TensorFlow or Prefect
    interrupts = _supervise.become_child() if argv is None and _supervise.is_child() else None
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _WithoutUserErrors)]:  # main() called again
            logger.removeFilter(old)
        logger.addFilter(_WithoutUserErrors(interrupts))
    try:
        if args.command == "apply-review":
            _apply_review(args)
            return 0
        if args.command == "schedule":
            _schedule(args)
            return 0
        options = _audit_options(args, "plant")
        if args.command == "demo":
            options["dataset"] = "demo"
            if args.plant:
                options["artifact"] = _demo_artifact(args.plant, options["seed"])
        if argv is None and interrupts is None:
            _precheck(options)
            return _supervise.run_supervised(sys.argv[1:])
        if args.command == "validate":
            options = _planted_options(options)
        result = _audit_with_progress(options)
    except AuditError as err:
        message = " ".join(str(err).split())
        print(f"gradcam-audit: error: {message[:2000]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as err:
        if interrupts is not None and interrupts.received:
            print(INTERRUPTED, file=sys.stderr)
            return 130
        if not isinstance(err, OSError):
            raise
        print(f"gradcam-audit: error: {err.strerror or err}"
              + (f": {quoted(str(err.filename))}" if err.filename else ""), file=sys.stderr)
        return 1
    if result.meta.get("validation"):
        _print_detection(result.meta["validation"])
    flagged = ", ".join(result.flagged_classes) or "none"
    print(f"audited {len(result.samples)} samples; likely shortcut classes: {flagged}")
    print(f"report: {result.report_dir / 'index.html'}")
    return 0
