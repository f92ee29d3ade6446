"""The pipeline on a Spark standalone cluster: a master and a worker started on loopback.

The suite's own Spark session is local and a process holds one session, so the driver runs as
a subprocess, `python -m pe_assets run`, the way a user starts it. The executors' interpreter
sees the project's third-party packages but not the project itself: pe_assets reaches them only
as the zip that the Spark resource ships.
"""

import hashlib
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyspark
import pytest
import requests

from pe_assets.config import load_settings
from pe_assets.errors import ConfigError
from pe_assets.resources import PeConfig, executor_python, zip_project
from pe_assets.samples import upload_samples_s3
from pe_assets.table import create_db_engine
from pe_assets_tests.conftest import AWS_TEST_ENV, _free_port

SPARK_HOME = Path(pyspark.__file__).resolve().parent
PROJECT_NAMES = ("pe_assets", "pe_analyzer", "__editable__")
LOOPBACK = "127.0.0.1"
STARTUP_SECONDS = 120


@dataclass
class Cluster:
    master_url: str
    webui_url: str
    work_dir: Path

    def state(self) -> dict:
        return requests.get(f"{self.webui_url}/json/", timeout=5).json()


def spark_class(main_class: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), main_class, *args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(
    ready: Callable[[], bool], what: str, processes: dict[str, subprocess.Popen], logs: Path
) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ready():
        for name, process in processes.items():
            if process.poll() is not None:
                log = (logs / f"{name}.log").read_text(errors="replace")
                pytest.fail(f"the Spark {name} exited:\n{log[-3000:]}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {STARTUP_SECONDS} s", pytrace=False)
        time.sleep(0.5)


def alive_workers(webui_url: str) -> int:
    """Workers registered with the master; -1 while the master does not answer yet."""
    try:
        return requests.get(f"{webui_url}/json/", timeout=2).json()["aliveworkers"]
    except (requests.ConnectionError, requests.Timeout, ValueError):
        return -1


@pytest.fixture
def cluster(tmp_path: Path):
    """A master and one 1-core worker, both bound to loopback, stopped at the end."""
    logs = tmp_path / "spark-logs"
    conf = tmp_path / "spark-conf"  # empty: no spark-defaults.conf from the machine
    for folder in (logs, conf):
        folder.mkdir()
    env = {
        **os.environ, **AWS_TEST_ENV,  # executors inherit the worker's environment
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_CONF_DIR": str(conf),
        "SPARK_LOCAL_IP": LOOPBACK,
        "SPARK_LOCAL_DIRS": str(tmp_path / "spark-local"),
        # The REST submission server would take the fixed port 6066.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    port, master_ui, worker_ui = _free_port(), _free_port(), _free_port()
    master_url = f"spark://{LOOPBACK}:{port}"
    webui_url = f"http://{LOOPBACK}:{master_ui}"
    work_dir = tmp_path / "spark-work"

    processes = {
        "master": spark_class(
            "org.apache.spark.deploy.master.Master",
            ["--host", LOOPBACK, "--port", str(port), "--webui-port", str(master_ui)],
            env, logs / "master.log",
        )
    }
    try:
        # A worker started before its master retries only after several seconds.
        wait_until(lambda: alive_workers(webui_url) >= 0, "Spark master", processes, logs)
        processes["worker"] = spark_class(
            "org.apache.spark.deploy.worker.Worker",
            [master_url, "--host", LOOPBACK, "--cores", "1", "--memory", "1g",
             "--webui-port", str(worker_ui), "--work-dir", str(work_dir)],
            env, logs / "worker.log",
        )
        wait_until(lambda: alive_workers(webui_url) >= 1, "live Spark worker", processes, logs)
        yield Cluster(master_url, webui_url, work_dir)
    finally:
        for process in reversed(processes.values()):
            stop(process)


def python_without_project(folder: Path) -> Path:
    """A virtualenv that imports this one's packages but not pe_assets.

    Its one .pth file names a folder of links to everything installed here except this
    project; .pth files inside that folder are not run, so an editable install stays out too.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    installed = Path(pyspark.__file__).resolve().parent.parent
    deps = folder / "deps"
    deps.mkdir()
    for entry in installed.iterdir():
        if not entry.name.startswith(PROJECT_NAMES) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site) / "project-deps.pth").write_text(f"{deps}\n")

    probe = (
        "import importlib.util, sys, boto3, numpy, pefile, psycopg2, sqlalchemy; "
        "sys.exit(importlib.util.find_spec('pe_assets') is not None)"
    )
    assert subprocess.run([str(python), "-c", probe], cwd=folder).returncode == 0, (
        "the executors' interpreter must see the dependencies but not pe_assets"
    )
    return python


def driver_env(tmp_path: Path, **settings: str) -> dict:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **AWS_TEST_ENV, "DAGSTER_HOME": str(home), **settings}
    for name in ("PE_CLEAN_PREFIX", "PE_MALICIOUS_PREFIX", "PE_S3_ANONYMOUS"):
        env.pop(name, None)
    return env


def run_cli(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # cwd is a scratch folder: no .env file from the repository is read.
    return subprocess.run(
        [sys.executable, "-m", "pe_assets", "run", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_process_job_runs_on_a_standalone_cluster(cluster, bucket, database_url, tmp_path):
    upload_samples_s3(bucket.client, bucket.name, n_clean=4, n_malicious=4, corrupt_share=0)
    env = driver_env(
        tmp_path,
        PE_SOURCE_URL=bucket.url,
        PE_S3_ENDPOINT_URL=bucket.endpoint,
        PE_DATABASE_URL=database_url,
        PE_SPARK_MASTER=cluster.master_url,
        PE_WAREHOUSE_DIR=str(tmp_path / "warehouse"),
        PYSPARK_PYTHON=str(python_without_project(tmp_path / "executor-python")),
        SPARK_LOCAL_IP=LOOPBACK,
    )

    done = run_cli(env, tmp_path, "--n", "6")

    assert done.returncode == 0, done.stderr[-4000:]
    assert "ok: 6" in done.stdout, done.stdout
    # Only this bucket's rows: the test database is shared with the rest of the suite.
    query = "SELECT * FROM pe_metadata WHERE path LIKE %(prefix)s"
    engine = create_db_engine(database_url)
    with engine.connect() as conn:
        result = conn.exec_driver_sql(query, {"prefix": f"{bucket.url}/%"})
        rows = [dict(r._mapping) for r in result]
    engine.dispose()
    assert len(rows) == 6
    assert sorted(r["label"] for r in rows) == ["clean"] * 3 + ["malicious"] * 3
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        key = row["path"].removeprefix(f"{bucket.url}/")
        data = bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()

    apps = cluster.state()["completedapps"]
    assert [(app["name"], app["state"]) for app in apps] == [("pe-analyzer", "FINISHED")]
    assert list(cluster.work_dir.glob(f"{apps[0]['id']}/*/pe_assets-*.zip"))


def test_sqlite_with_a_cluster_master_is_refused_in_one_line(tmp_path):
    database = tmp_path / "pe.sqlite"
    env = driver_env(
        tmp_path,
        PE_SOURCE_URL=str(tmp_path / "samples"),
        PE_DATABASE_URL=f"sqlite:///{database}",
        PE_SPARK_MASTER="spark://127.0.0.1:7077",
    )

    done = run_cli(env, tmp_path, "--n", "2")

    assert done.returncode != 0
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: PE_DATABASE_URL is SQLite")
    assert "spark://127.0.0.1:7077" in done.stderr
    assert not database.exists()


@pytest.mark.parametrize("master", ["spark://10.0.0.5:7077", "yarn", "k8s://https://k8s:6443"])
def test_sqlite_is_refused_for_cluster_masters(master, tmp_path):
    environ = {"PE_DATABASE_URL": f"sqlite:///{tmp_path / 'pe.sqlite'}", "PE_SPARK_MASTER": master}

    with pytest.raises(ConfigError, match="SQLite"):
        load_settings(environ)
    with pytest.raises(ConfigError, match="SQLite"):
        load_settings({"PE_SPARK_MASTER": master})  # the default database is SQLite too


@pytest.mark.parametrize(
    ("master", "database_url"),
    [
        ("local[2]", "sqlite:///pe.sqlite"),
        ("local-cluster[2,1,1024]", "sqlite:///pe.sqlite"),
        ("spark://10.0.0.5:7077", "postgresql://pe@db.internal/pe"),
    ],
)
def test_sqlite_on_this_machine_and_postgresql_anywhere_are_accepted(master, database_url):
    settings = load_settings({"PE_DATABASE_URL": database_url, "PE_SPARK_MASTER": master})

    assert settings.spark_master == master


def test_resource_database_override_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PE_DATABASE_URL", "postgresql://pe@db.internal/pe")
    monkeypatch.setenv("PE_SPARK_MASTER", "spark://10.0.0.5:7077")

    with pytest.raises(ConfigError, match="SQLite"):
        PeConfig(database_url=f"sqlite:///{tmp_path / 'pe.sqlite'}").settings()


def test_project_zip_holds_the_package_and_is_named_by_its_contents(tmp_path):
    first = zip_project(tmp_path)
    second = zip_project(tmp_path)

    names = zipfile.ZipFile(first).namelist()
    assert first == second and first.name.startswith("pe_assets-")
    assert {"pe_assets/__init__.py", "pe_assets/processing.py", "pe_assets/pe_parser.py"} <= set(
        names
    )
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    # zipimport cannot load an extension module: executors use the numpy byte histogram.
    assert not any(name.endswith((".so", ".pyd", ".c")) for name in names)


def test_executor_python(monkeypatch):
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    assert executor_python({}, local=True) == sys.executable
    assert executor_python({}, local=False) is None  # Spark's default: python3 on the workers

    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/venv/bin/python")
    assert executor_python({}, local=False) == "/opt/venv/bin/python"
    assert executor_python({"spark.pyspark.python": "/srv/py"}, local=False) == "/srv/py"
