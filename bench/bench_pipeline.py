"""End-to-end throughput of the pipeline on a sample bucket, against a naive baseline.

    python bench/bench_pipeline.py --source /work/bench-data/b1m --n 10000 --n 100000 --repeat 3
    python bench/bench_pipeline.py --source s3://pe-bench --s3-endpoint http://127.0.0.1:5000 \\
        --n 10000 --repeat 3 --baseline-n 1000

Every run happens in a child process of its own (a fresh driver, JVM and database
`pe_bench`), so each peak-memory figure belongs to one run. A run warms a local[2] Spark
session with the project's settings, then times `cli.run_pipeline` (sample_job, then
process_job with its checks): the real pipeline path. It reports files/s overall, per
Dagster step (wall clock) and per executor step (the counters each Spark partition leaves
in PE_TASK_STATS_DIR), the peak memory of the driver (Python and JVM) and of the Python
workers, and database rows/s. With --selection-n the run then measures choosing that many
new files against the table it just filled, and against an empty one. With --baseline-n
the naive job (bench/baseline.py) runs on that many of the same files, in the same child.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DATABASE = "pe_bench"
EMPTY_DATABASE = "pe_bench_empty"
RESULT_MARK = "BENCH-RESULT "
GIB = 2**30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="bucket folder or s3://bucket[/root]")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (moto on loopback, say)")
    parser.add_argument("--n", type=int, action="append", required=True,
                        help="files per run; repeat the flag for several sizes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (median reported)")
    parser.add_argument("--baseline-n", type=int, default=0,
                        help="run the naive baseline on this many of the same files")
    parser.add_argument("--selection-n", type=int, default=0,
                        help="after each run, time choosing this many new files (full vs empty)")
    parser.add_argument("--admin-url", default=ADMIN_URL,
                        help="PostgreSQL URL of a user that may create databases")
    parser.add_argument("--json", type=Path, help="also append every run's figures here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- child: one run

def _vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory of a process in bytes (VmHWM), 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _recreate_database(admin_url: str, name: str) -> str:
    import sqlalchemy as sa

    from pe_assets.table import create_db_engine, migrate

    admin = create_db_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    engine = create_db_engine(url)
    migrate(engine)
    engine.dispose()
    return url


def _warm_spark():
    """The session run_pipeline will reuse (getOrCreate), started and used once before timing."""
    from pyspark.sql import SparkSession

    from pe_assets.resources import spark_resource

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_resource().spark_config.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    # Start both Python workers and import the executor code in them.
    spark.sparkContext.parallelize(range(2), 2).map(
        lambda _: __import__("pe_assets.processing").__name__
    ).collect()
    return spark


def _step_seconds(instance, run_ids: list[str]) -> dict[str, float]:
    from dagster import DagsterEventType

    starts: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or entry.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                starts[entry.step_key] = entry.timestamp
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                seconds[entry.step_key] = entry.timestamp - starts[entry.step_key]
    return seconds


def _executor_stats(folder: Path) -> dict:
    stats = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    process = [s for s in stats if s["step"] == "process"]
    write = [s for s in stats if s["step"] == "write"]

    def total(items, name):
        return sum(s[name] for s in items)

    return {
        "partitions": len(process),
        "files": total(process, "files"),
        "bytes": total(process, "bytes"),
        "pending_query_s": total(process, "db_seconds"),
        "download_thread_s": total(process, "download_seconds"),
        "parse_cpu_s": total(process, "parse_seconds"),
        "process_task_s": total(process, "wall_seconds"),
        "write_rows": total(write, "files"),
        "write_db_s": total(write, "db_seconds"),
        "write_task_s": total(write, "wall_seconds"),
        "worker_pids": len({s["pid"] for s in stats}),
        "worker_peak_rss": max((s["peak_rss_bytes"] for s in stats), default=0),
    }


def _time_selection(engine, source, settings, n: int) -> float:
    """Seconds to choose n new files (list + claim), then undo the claim so it can repeat."""
    import sqlalchemy as sa

    from pe_assets.manifest import labels, sample_new_files
    from pe_assets.table import advance_watermark, get_watermark, pe_manifest, pe_scan_state

    with engine.connect() as conn:
        marks = {prefix: get_watermark(conn, prefix) for prefix in labels(settings)}
    started = time.perf_counter()
    summary = sample_new_files(engine, source, settings, n, "bench-selection")
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(sa.delete(pe_manifest).where(pe_manifest.c.sampled_by == "bench-selection"))
        conn.execute(sa.delete(pe_scan_state))
        for prefix, mark in marks.items():
            if mark is not None:
                advance_watermark(conn, prefix, mark)
    if summary.total < n:
        print(f"selection: only {summary.total} of {n} files were left to choose", flush=True)
    return seconds


def _selection_figures(args, settings_url: str, repeat: int = 3) -> dict:
    from dataclasses import replace

    import sqlalchemy as sa

    from pe_assets.config import load_settings
    from pe_assets.source import open_source
    from pe_assets.table import create_db_engine, pe_manifest

    figures = {}
    empty_url = _recreate_database(args.admin_url, EMPTY_DATABASE)
    for name, url in (("empty", empty_url), ("full", settings_url)):
        settings = replace(load_settings(), database_url=url)
        engine = create_db_engine(url)
        source = open_source(settings)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(pe_manifest)).scalar()
        runs = [_time_selection(engine, source, settings, args.selection_n) for _ in range(repeat)]
        source.close()
        engine.dispose()
        figures[name] = {"table_rows": rows, "seconds": runs,
                         "median_s": statistics.median(runs)}
    figures["ratio_full_to_empty"] = figures["full"]["median_s"] / figures["empty"]["median_s"]
    return figures


def run_once(args: argparse.Namespace) -> dict:
    """One pipeline run (and optionally the baseline) in this process; returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="pe-bench-"))
    try:
        return _run_in(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_in(work: Path, args: argparse.Namespace) -> dict:
    import sqlalchemy as sa

    n = args.n[0]
    stats_dir = work / "task-stats"
    stats_dir.mkdir()
    url = _recreate_database(args.admin_url, BENCH_DATABASE)
    os.environ.update({
        "PE_SOURCE_URL": args.source,
        "PE_DATABASE_URL": url,
        "PE_SPARK_MASTER": "local[2]",
        "PE_TASK_STATS_DIR": str(stats_dir),
        "DAGSTER_HOME": str(work / "dagster_home"),
        "PYSPARK_PYTHON": sys.executable,
        # The baseline UDF lives in bench/ and reads fields with pe_assets_tests.pefile_reference.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), str(BENCH_DIR), os.environ.get("PYTHONPATH")])
        ),
    })
    if args.s3_endpoint:
        os.environ["PE_S3_ENDPOINT_URL"] = args.s3_endpoint
    (work / "dagster_home").mkdir()

    from dagster import DagsterInstance

    from pe_assets.cli import run_pipeline
    from pe_assets.config import load_settings
    from pe_assets.definitions import build_definitions
    from pe_assets.table import create_db_engine, pe_metadata

    settings = load_settings()
    spark_started = time.perf_counter()
    spark = _warm_spark()
    spark_seconds = time.perf_counter() - spark_started
    jvm_pid = spark.sparkContext._gateway.proc.pid
    defs = build_definitions(str(work / "warehouse"))
    instance = DagsterInstance.ephemeral()

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    summary, error = run_pipeline(defs, instance, n=n)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    if error:
        raise SystemExit(f"pipeline failed: {error}")

    engine = create_db_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(pe_metadata)).scalar()
        mean_size = conn.execute(sa.select(sa.func.avg(pe_metadata.c.size))).scalar()
    steps = _step_seconds(instance, [run.run_id for run in instance.get_runs()])
    executors = _executor_stats(stats_dir)
    result = {
        "n": n,
        "source": "s3" if args.source.startswith("s3://") else "local",
        "seconds": seconds,
        "rows": rows,
        "mean_size": float(mean_size or 0),
        "files_per_s": rows / seconds,
        "spark_start_s": spark_seconds,
        "steps_s": steps,
        "executors": executors,
        "driver_python_peak": _vm_hwm(),
        "driver_jvm_peak": _vm_hwm(jvm_pid),
        "by_status": summary.by_status,
        # Other users of the machine: 1-minute load average before and after (2 cores).
        "load_average": [load_before, load_after],
    }
    engine.dispose()

    if args.selection_n:
        result["selection"] = _selection_figures(args, url)
    if args.baseline_n:
        from baseline import run_baseline

        result["baseline"] = run_baseline(spark, settings, url, args.baseline_n)
        result["baseline"]["ratio"] = result["files_per_s"] / result["baseline"]["files_per_s"]
    spark.stop()
    return result


# ---------------------------------------------------------------- parent: repeat and report

def _child(args: argparse.Namespace, n: int) -> dict:
    argv = [sys.executable, __file__, "--one", "--source", args.source, "--n", str(n),
            "--baseline-n", str(args.baseline_n), "--selection-n", str(args.selection_n),
            "--admin-url", args.admin_url]
    if args.s3_endpoint:
        argv += ["--s3-endpoint", args.s3_endpoint]
    completed = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise SystemExit(f"run with n={n} failed (exit {completed.returncode})")


def _median(runs: list[dict], get) -> float:
    return statistics.median(get(run) for run in runs)


def _report(n: int, runs: list[dict]) -> None:
    def rate(get_seconds):
        return _median(runs, lambda r: r["rows"] / max(get_seconds(r), 1e-9))

    med = lambda get: _median(runs, get)  # noqa: E731
    print(f"\n== n={n:,} source={runs[0]['source']} runs={len(runs)} (medians)")
    print(f"files/s overall:          {med(lambda r: r['files_per_s']):10.0f}"
          f"   ({med(lambda r: r['seconds']):.1f} s; each run: "
          + ", ".join(f"{r['files_per_s']:.0f}" for r in runs) + ")")
    print(f"  list and select:        {rate(lambda r: r['steps_s']['file_manifest']):10.0f}"
          f"   (file_manifest step, {med(lambda r: r['steps_s']['file_manifest']):.1f} s)")
    print(f"  download+parse+parquet: {rate(lambda r: r['steps_s']['pe_metadata']):10.0f}"
          f"   (pe_metadata step, {med(lambda r: r['steps_s']['pe_metadata']):.1f} s)")
    print(f"  write table + summary:  {rate(lambda r: r['steps_s']['pe_metadata_table']):10.0f}"
          f"   (pe_metadata_table step, {med(lambda r: r['steps_s']['pe_metadata_table']):.1f} s)")
    print(f"  executor download:      {rate(lambda r: r['executors']['download_thread_s']):10.0f}"
          "   per download-thread second")
    print(f"  executor parse:         {rate(lambda r: r['executors']['parse_cpu_s']):10.0f}"
          "   per CPU second of parse_pe")
    print(f"  executor db write:      {rate(lambda r: r['executors']['write_db_s']):10.0f}"
          "   rows per second of COPY + INSERT")
    print(f"peak memory: driver python {med(lambda r: r['driver_python_peak']) / GIB:.2f} GiB,"
          f" driver JVM {med(lambda r: r['driver_jvm_peak']) / GIB:.2f} GiB,"
          f" python worker {med(lambda r: r['executors']['worker_peak_rss']) / GIB:.2f} GiB"
          f" (max of {runs[0]['executors']['worker_pids']} workers)")
    print(f"mean file size: {med(lambda r: r['mean_size']) / 1024:.1f} KiB")
    print(f"spark tasks: {runs[0]['executors']['partitions']}, "
          f"statuses: {runs[0]['by_status']}")
    loads = [load for run in runs for load in run.get("load_average", ())]
    if loads:
        print(f"machine load average during the runs: {min(loads):.1f} to {max(loads):.1f}")
    if "selection" in runs[0]:
        empty = med(lambda r: r["selection"]["empty"]["median_s"])
        full = med(lambda r: r["selection"]["full"]["median_s"])
        rows = runs[0]["selection"]["full"]["table_rows"]
        print(f"selection: empty table {empty:.2f} s, table of {rows:,} rows {full:.2f} s,"
              f" ratio {full / empty:.2f}")
    if "baseline" in runs[0]:
        base = med(lambda r: r["baseline"]["files_per_s"])
        ratio = med(lambda r: r["baseline"]["ratio"])
        mean = runs[0]["baseline"].get("mean_size", 0) / 1024
        print(f"baseline: {base:.1f} files/s on {runs[0]['baseline']['files']:,} of the same"
              f" files (mean size {mean:.1f} KiB); pipeline/baseline ratio {ratio:.1f}x"
              f" (each run: " + ", ".join(f"{r['baseline']['ratio']:.1f}" for r in runs) + ")")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        print(RESULT_MARK + json.dumps(run_once(args)), flush=True)
        return 0
    print(f"command: python {shlex.join(['bench/bench_pipeline.py', *argv])}", flush=True)
    for n in args.n:
        runs = []
        for attempt in range(args.repeat):
            run = _child(args, n)
            print(f"run {attempt + 1}/{args.repeat} n={n}: {run['files_per_s']:.0f} files/s "
                  f"in {run['seconds']:.1f} s", flush=True)
            runs.append(run)
            if args.json:
                with args.json.open("a") as out:
                    out.write(json.dumps(run) + "\n")
        _report(n, runs)
    print(f"\ncommand: python {shlex.join(['bench/bench_pipeline.py', *argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
