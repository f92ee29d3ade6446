"""Real services for the test-suite: PostgreSQL, an S3 server on loopback, one Spark session.

PostgreSQL: PE_TEST_POSTGRES_URL names a server and user allowed to create databases
(default postgresql://postgres@127.0.0.1:5432/postgres); the suite works in its own
database, `pe_analyzer_test`, recreated at the start. S3: moto's server, started here on a
free loopback port. Spark: one local session for the whole run (a JVM start costs seconds).
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
import sqlalchemy as sa

from pe_assets.table import create_db_engine, metadata_obj, migrate

ADMIN_URL = os.environ.get(
    "PE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Several checkouts testing against one server at once each need a database of their own.
TEST_DATABASE = os.environ.get("PE_TEST_DATABASE", "pe_analyzer_test")
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    admin = create_db_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {TEST_DATABASE}")
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL is needed at {ADMIN_URL}: {e.orig}", pytrace=False)
    finally:
        admin.dispose()
    return sa.engine.make_url(ADMIN_URL).set(database=TEST_DATABASE).render_as_string(False)


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """The test database with an empty, fully migrated schema."""
    engine = create_db_engine(postgres_url)
    with engine.begin() as conn:
        metadata_obj.drop_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    migrate(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    port = _free_port()
    env = {**os.environ, **AWS_TEST_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto's S3 server did not start", pytrace=False)
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    # Executors inherit the JVM's environment, fixed now: they find the test S3 credentials
    # there, as production executors find theirs in their environment or instance role.
    os.environ.update(AWS_TEST_ENV)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("pe-analyzer-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


@dataclass
class Bucket:
    name: str
    endpoint: str
    client: object

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch) -> Bucket:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"pe-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, s3_endpoint, client)


@dataclass
class Pipeline:
    """A bucket, a database and a Dagster instance wired through PE_* variables."""

    bucket: Bucket
    database_url: str
    instance: object
    defs: object
    engine: sa.Engine

    def rows(self, where: str = "") -> list[dict]:
        query = "SELECT * FROM pe_metadata " + (f"WHERE {where} " if where else "")
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.exec_driver_sql(query + "ORDER BY path")]


@pytest.fixture
def pipeline(bucket: Bucket, database_url: str, spark, tmp_path: Path, monkeypatch):
    from dagster import DagsterInstance

    from pe_assets.definitions import build_definitions

    monkeypatch.setenv("PE_SOURCE_URL", bucket.url)
    monkeypatch.setenv("PE_S3_ENDPOINT_URL", bucket.endpoint)
    monkeypatch.setenv("PE_DATABASE_URL", database_url)
    monkeypatch.setenv("PE_SPARK_MASTER", "local[2]")
    for name in ("PE_CLEAN_PREFIX", "PE_MALICIOUS_PREFIX", "PE_S3_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    instance = DagsterInstance.ephemeral()
    engine = create_db_engine(database_url)
    yield Pipeline(bucket, database_url, instance, build_definitions(str(tmp_path / "wh")), engine)
    engine.dispose()
    instance.dispose()
