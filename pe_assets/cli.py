"""The synchronous path for scripts and the README.

`run` executes sample_job and then process_job in this process, against the same Dagster
instance as `dagster dev` (DAGSTER_HOME), so the runs and partitions show up in the UI.
"""

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from pe_assets.errors import PeAnalyzerError

logger = logging.getLogger("pe_assets")

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2

DEFAULT_DAGSTER_HOME = Path("dagster_home")


def _instance():
    from dagster import DagsterInstance

    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


# Dagster's own event log goes to the instance; the console shows our phase lines only.
_QUIET_LOGGERS = {"console": {"config": {"log_level": "WARNING"}}}

# How often a long processing run says how far its Spark tasks have got.
PROGRESS_INTERVAL_SECONDS = 15.0


class SparkProgress:
    """Logs, every `interval` seconds, how many tasks of this process's running Spark stages
    are done: a million-file run is minutes of Spark work with nothing else to show.

    Spark's own console progress bar is off (it garbles logs); this reads the same counts
    from the status tracker of the SparkContext the job's resource started in this process.
    """

    def __init__(self, interval: float = PROGRESS_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="spark-progress", daemon=True)

    def __enter__(self) -> "SparkProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _report(self) -> None:
        from pyspark import SparkContext

        last = None
        while not self._stop.wait(self.interval):
            context = SparkContext._active_spark_context  # never create one from here
            if context is None:
                continue
            tracker = context.statusTracker()
            done = total = 0
            for stage_id in tracker.getActiveStageIds():
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks
            if total and (done, total) != last:
                logger.info("Spark: %d of %d tasks done", done, total)
                last = (done, total)


def run_pipeline(defs, instance, *, n: int | None = None, paths_file: str | None = None):
    """sample_job then process_job over the sampled shards, in this process.

    Returns (summary, error): error is one readable line when a job failed, else None.
    """
    from dagster import RunConfig

    from pe_assets.assets import MANIFEST_SHARDS_KEY, FileManifestConfig
    from pe_assets.config import load_settings
    from pe_assets.partitions import partition_range_tags, s3_prefix_partitions
    from pe_assets.sensors import PROCESSED_INLINE_TAG
    from pe_assets.summary import RunSummary

    settings = load_settings()
    started = time.perf_counter()
    config = FileManifestConfig(n=n, paths_file=paths_file)
    sample = defs.resolve_job_def("sample_job").execute_in_process(
        run_config=RunConfig({"file_manifest": config}, loggers=_QUIET_LOGGERS),
        instance=instance,
        tags={PROCESSED_INLINE_TAG: "true"},
        raise_on_error=False,
    )
    if not sample.success:
        return None, _failure_line(sample, "sample_job")
    manifest = sample.asset_materializations_for_node("file_manifest")[0].metadata
    summary = RunSummary.from_manifest(manifest)
    logger.info(
        "selected %d files (%d clean, %d malicious), %d skipped as already processed",
        summary.selected, summary.selected_clean, summary.selected_malicious,
        summary.skipped_done,
    )
    if summary.note:
        logger.warning(summary.note)

    shards = set(manifest[MANIFEST_SHARDS_KEY].value)
    keys = instance.get_dynamic_partitions(s3_prefix_partitions.name)
    tags = partition_range_tags(keys, shards)
    if tags:
        logger.info("processing %d shards with Spark (%s)", len(shards), settings.spark_master)
        with SparkProgress():
            process = defs.resolve_job_def("process_job").execute_in_process(
                run_config={"loggers": _QUIET_LOGGERS}, instance=instance, tags=tags,
                raise_on_error=False,
            )
        if not process.success:
            return summary, _failure_line(process, "process_job")
        summary.add_results(settings, process.run_id)
    summary.seconds = time.perf_counter() - started
    return summary, None


def _run(args: argparse.Namespace) -> int:
    from pe_assets.config import load_settings

    settings = load_settings()  # before importing Dagster: a bad setting is one line, no warnings
    from pe_assets.definitions import defs

    logger.info("source %s, database %s", settings.source_url, _safe_url(settings.database_url))
    summary, error = run_pipeline(defs, _instance(), n=args.n, paths_file=args.paths_file)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    print(summary.render())
    return EXIT_OK


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _failure_line(result, job_name: str) -> str:
    for event in result.all_events:
        if event.is_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            cause = error.cause or error
            return f"{job_name} failed in {event.step_key}: {_error_text(cause)}"
    return f"{job_name} failed (run {result.run_id})"


def _error_text(error) -> str:
    """The error's last message line: our own errors bare, others as `Class: message`."""
    lines = (error.message or "").strip().splitlines()
    text = lines[-1] if lines else error.cls_name
    prefix, separator, rest = text.partition(": ")
    if separator and prefix.rsplit(".", 1)[-1] == error.cls_name:
        return rest if prefix.startswith("pe_assets.") else f"{error.cls_name}: {rest}"
    return text


def _make_samples(args: argparse.Namespace) -> int:
    from pe_assets.samples import write_sample_folder

    clean = args.n - args.n // 2
    summary = write_sample_folder(
        Path(args.folder), n_clean=clean, n_malicious=args.n - clean, seed=args.seed
    )
    print(f"wrote {summary} to {Path(args.folder).resolve()}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from pe_assets.config import load_settings
    from pe_assets.export import default_export_dir, export_with_own_session

    settings = load_settings()
    out_dir = Path(args.out) if args.out else default_export_dir()
    print(export_with_own_session(settings, out_dir).render())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pe_assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="sample files and process them, in this process")
    choice = run.add_mutually_exclusive_group(required=True)
    choice.add_argument("--n", type=int, help="files to take: n/2 malicious, the rest clean")
    choice.add_argument("--paths-file", help="text file (path or s3:// URL) of keys to process")
    run.set_defaults(handler=_run)

    samples = commands.add_parser("make-samples", help="write a local folder of synthetic PEs")
    samples.add_argument("folder", nargs="?", default="samples")
    samples.add_argument("--n", type=int, default=200, help="files to write (half per label)")
    samples.add_argument("--seed", type=int, default=0)
    samples.set_defaults(handler=_make_samples)

    export = commands.add_parser(
        "export", help="write pe_metadata as Parquet by label and JSON Lines by sha256"
    )
    export.add_argument("--out", help="output folder (default: $PE_EXPORT_DIR or data/export)")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if getattr(args, "n", None) is not None and args.n < 0:
        print("error: --n must not be negative", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except PeAnalyzerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
