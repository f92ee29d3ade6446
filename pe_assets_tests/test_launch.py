"""`dagster job launch ... --config n.yaml` with the daemon up ends with the rows in the table.

The daemon runs the sensors: file_manifest_sensor turns each sampled manifest into one
process_job run. This is the path a user takes from the command line, so it runs as
subprocesses against the repository's own workspace.yaml and n.yaml.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pe_assets.pe_parser import PARSED_FIELDS
from pe_assets.samples import upload_samples_s3
from pe_assets_tests.conftest import AWS_TEST_ENV
from pe_assets_tests.pefile_reference import diff_records, reference_record

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for_rows(pipeline, count: int, daemon, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = pipeline.rows()
        if len(rows) >= count:
            time.sleep(2)  # a second run, if one were wrongly launched, would show up now
            return pipeline.rows()
        assert daemon.poll() is None, "dagster-daemon exited"
        time.sleep(2)
    pytest.fail(f"only {len(pipeline.rows())} of {count} rows after {timeout} s", pytrace=False)


def launch_sample_job(env: dict) -> None:
    command = [str(BIN / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "sample_job",
               "--config", "n.yaml"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_job_launch_with_n_yaml_stores_new_balanced_rows(pipeline, tmp_path):
    n = yaml.safe_load((REPO / "n.yaml").read_text())["ops"]["file_manifest"]["config"]["n"]
    assert n == 200
    upload_samples_s3(
        pipeline.bucket.client, pipeline.bucket.name, n_clean=n, n_malicious=n, corrupt_share=0
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ, **AWS_TEST_ENV,
        "DAGSTER_HOME": str(home),
        "PE_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "PYSPARK_PYTHON": sys.executable,
    }
    # A new SQLite instance creates its tables on first use; the daemon and `dagster job
    # launch` starting together on an empty DAGSTER_HOME would race to create them.
    migrate = subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        launch_sample_job(env)
        first = wait_for_rows(pipeline, n, daemon)
        launch_sample_job(env)
        both = wait_for_rows(pipeline, 2 * n, daemon)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)

    assert len(first) == n
    assert [r["label"] for r in first].count("malicious") == n // 2
    assert len(both) == 2 * n and len({r["path"] for r in both}) == 2 * n
    second = [r for r in both if r["path"] not in {f["path"] for f in first}]
    assert [r["label"] for r in second].count("clean") == n // 2
    for row in both:
        key = row["path"].removeprefix(f"s3://{pipeline.bucket.name}/")
        data = pipeline.bucket.client.get_object(Bucket=pipeline.bucket.name, Key=key)
        record = {f: row[f] for f in PARSED_FIELDS}
        assert diff_records(record, reference_record(data["Body"].read())) == {}, row["path"]
