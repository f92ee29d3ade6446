"""The web UI as a person uses it, on the PostgreSQL instance of the repository's dagster.yaml.

`dagster dev` (webserver and daemon) runs as a subprocess against workspace.yaml. The test asks
the webserver's GraphQL API what a person sees on the first page (the code location loaded,
its assets, jobs, sensors and checks), launches sample_job the way the Launchpad does, waits
for the daemon's file_manifest_sensor to process the sample into the table, runs one check the
way its Execute button does, and has headless Chromium load the asset graph and the partitions
page (and the Checks tab): their visible text is asserted and their screenshots kept.

Screenshots go to the test's tmp folder; with PE_UPDATE_SCREENSHOTS=1 they also replace the
ones in docs/screenshots/ that the README shows.
"""

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa

from pe_assets.samples import upload_samples_s3
from pe_assets.table import create_db_engine
from pe_assets_tests.conftest import ADMIN_URL, AWS_TEST_ENV

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCREENSHOTS = REPO / "docs" / "screenshots"

LOCATION = "pe_assets"
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions object
DAGSTER_DATABASE = "pe_dagster_test"
N = 10

# Waits, each well above what it takes on a 2-core machine: `dagster dev` starts in 10-20 s,
# a run with a Spark JVM takes 20-40 s, and the sensor ticks every 5 s.
START_TIMEOUT = 120
RUN_TIMEOUT = 300
# Chromium's virtual time: the page's GraphQL requests settle well within it.
PAGE_BUDGET_MS = 15_000

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1000",
)

STATUS_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus } }
  }
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name }
        sensors { name sensorState { status } }
        assetNodes {
          assetKey { path }
          assetChecksOrError { ... on AssetChecks { checks { name } } }
        }
      }
    }
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""

RUNS_QUERY = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""

RUN_QUERY = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

CHECKS_QUERY = """
query {
  assetNodes(assetKeys: [{path: ["pe_metadata_table"]}]) {
    assetChecksOrError {
      ... on AssetChecks {
        checks { name executionForLatestMaterialization { runId status evaluation { success } } }
      }
    }
  }
}
"""

FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is needed for the UI screenshots and was not found on PATH "
        f"(looked for {', '.join(CHROMIUM_NAMES)}); on Debian: "
        "apt-get install chromium fonts-dejavu-core",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"dagster dev exited:\n{self.log_tail()}", pytrace=False)

    def launch(self, selector: dict, run_config: dict | None = None) -> str:
        params = {"selector": {"repositoryLocationName": LOCATION,
                               "repositoryName": REPOSITORY, **selector}}
        if run_config is not None:
            params["runConfigData"] = run_config
        result = self.graphql(LAUNCH_MUTATION, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def wait_for_run(self, run_id: str) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            status = self.graphql(RUN_QUERY, {"id": run_id})["runOrError"]["status"]
            if status in FINISHED:
                return status
            self.assert_running()
            time.sleep(2)
        pytest.fail(f"run {run_id} did not finish in {RUN_TIMEOUT} s", pytrace=False)


@pytest.fixture
def dagster_database() -> dict[str, str]:
    """A fresh database for Dagster's own storage, as DAGSTER_PG_* variables."""
    admin = create_db_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {DAGSTER_DATABASE} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {DAGSTER_DATABASE}")
    admin.dispose()
    url = sa.engine.make_url(ADMIN_URL)
    return {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": DAGSTER_DATABASE,
    }


@pytest.fixture
def webserver(pipeline, dagster_database, tmp_path):
    # Uploaded before the daemon starts: new_s3_objects_sensor's first tick takes these as
    # already there, so only the launched sample is processed.
    upload_samples_s3(pipeline.bucket.client, pipeline.bucket.name, n_clean=N, n_malicious=N,
                      corrupt_share=0.1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ, **AWS_TEST_ENV, **dagster_database,
        "DAGSTER_HOME": str(home),
        "PE_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "PYSPARK_PYTHON": sys.executable,
    }
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop(process)


def wait_until_serving(server: Webserver) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        server.assert_running()
        try:
            if requests.get(f"{server.url}/server_info", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not serve in {START_TIMEOUT} s:\n{server.log_tail()}",
                pytrace=False)


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C, as a person stops `dagster dev`; then whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # code servers and run workers it started
    except ProcessLookupError:
        pass


def wait_for_rows(pipeline, server: Webserver, count: int) -> list[dict]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        rows = pipeline.rows(f"starts_with(path, 's3://{pipeline.bucket.name}/')")
        if len(rows) >= count:
            return rows
        server.assert_running()
        time.sleep(2)
    pytest.fail(f"{len(rows)} of {count} rows after {RUN_TIMEOUT} s:\n"
                f"{server.log_tail()}", pytrace=False)


def visible_text(dom: str) -> str:
    """The words a person can read on the page: the DOM without scripts, styles and tags."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def capture_page(chromium: str, url: str, png: Path, profile: Path) -> str:
    """Screenshot a page after its requests settle; returns the page's visible text."""
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={PAGE_BUDGET_MS}", "--dump-dom", f"--screenshot={png}", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and png.is_file(), done.stderr[-3000:]
    return visible_text(done.stdout)


def keep_screenshot(png: Path) -> None:
    if os.environ.get("PE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, SCREENSHOTS / png.name)


def assert_location_lists_everything(server: Webserver) -> None:
    data = server.graphql(STATUS_QUERY)
    entries = {e["name"]: e["loadStatus"] for e in data["workspaceOrError"]["locationEntries"]}
    assert entries == {LOCATION: "LOADED"}
    [repository] = data["repositoriesOrError"]["nodes"]
    assert repository["location"]["name"] == LOCATION
    assert {"sample_job", "process_job"} <= {job["name"] for job in repository["jobs"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors == {"file_manifest_sensor": "RUNNING", "new_s3_objects_sensor": "RUNNING"}
    nodes = {"/".join(n["assetKey"]["path"]): n for n in repository["assetNodes"]}
    assert set(nodes) == {"file_manifest", "pe_metadata", "pe_metadata_table", "pe_dataset_export"}
    checks = nodes["pe_metadata_table"]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in checks} == {
        "paths_are_unique", "last_sample_is_balanced", "failed_share_is_low"
    }


def latest_check_executions(server: Webserver) -> dict[str, dict]:
    [node] = server.graphql(CHECKS_QUERY)["assetNodes"]
    checks = node["assetChecksOrError"]["checks"]
    return {c["name"]: c["executionForLatestMaterialization"] for c in checks}


@pytest.mark.slow
def test_ui_launches_a_sample_and_shows_the_processed_partitions(pipeline, webserver, tmp_path):
    chromium = find_chromium()
    assert_location_lists_everything(webserver)

    sample_run = webserver.launch(
        {"jobName": "sample_job"}, {"ops": {"file_manifest": {"config": {"n": N}}}}
    )
    rows = wait_for_rows(pipeline, webserver, N)
    assert webserver.wait_for_run(sample_run) == "SUCCESS"
    assert len(rows) == N and len({r["path"] for r in rows}) == N
    assert [r["label"] for r in rows].count("malicious") == N // 2

    # The sensor's run: one process_job over the sampled shards, which also ran the checks.
    [process] = webserver.graphql(RUNS_QUERY, {"job": "process_job"})["runsOrError"]["results"]
    assert {"key": "dagster/sensor_name", "value": "file_manifest_sensor"} in process["tags"]
    assert webserver.wait_for_run(process["runId"]) == "SUCCESS"
    executions = latest_check_executions(webserver)
    for name, execution in executions.items():
        assert execution["runId"] == process["runId"], name
        assert execution["status"] == "SUCCEEDED" and execution["evaluation"]["success"], name

    # A check on its own, as the Execute button on the asset's Checks tab launches it.
    check_run = webserver.launch({
        "jobName": "__ASSET_JOB",
        "assetSelection": [],
        "assetCheckSelection": [
            {"assetKey": {"path": ["pe_metadata_table"]}, "name": "paths_are_unique"}
        ],
    })
    assert webserver.wait_for_run(check_run) == "SUCCESS"
    assert latest_check_executions(webserver)["paths_are_unique"]["runId"] == check_run

    with pipeline.engine.connect() as conn:
        shards = conn.exec_driver_sql("SELECT DISTINCT shard FROM pe_manifest").scalars().all()
    shard = sorted(shards)[0]
    pages = {
        "asset_graph.png": f"/locations/{REPOSITORY}@{LOCATION}/asset-groups/pe",
        "pe_metadata_table_partitions.png":
            f"/assets/pe_metadata_table?view=partitions&partition={quote(shard, safe='')}",
        "pe_metadata_table_checks.png": "/assets/pe_metadata_table?view=checks",
    }
    seen = {}
    for name, path in pages.items():
        seen[name] = capture_page(
            chromium, webserver.url + path, tmp_path / name, tmp_path / f"chromium-{name}"
        )
        keep_screenshot(tmp_path / name)

    graph = seen["asset_graph.png"]
    for asset in ("file_manifest", "pe_metadata", "pe_metadata_table"):
        assert asset in graph
    assert "3 / 3 Passed" in graph and f"{len(shards)} partitions" in graph
    partitions = seen["pe_metadata_table_partitions.png"]
    assert f"Materialized ({len(shards)})" in partitions and "Missing (0)" in partitions
    assert shard in partitions and "rows_written" in partitions
    checks = seen["pe_metadata_table_checks.png"]
    for check in ("paths_are_unique", "last_sample_is_balanced", "failed_share_is_low"):
        assert check in checks
    assert "Passed" in checks
