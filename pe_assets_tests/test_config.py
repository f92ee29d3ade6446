"""Settings: defaults, validation, and one readable line for a bad value."""

import subprocess
import sys
from pathlib import Path

import pytest

from pe_assets.config import load_settings
from pe_assets.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_embedded_local_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    settings = load_settings({})

    assert settings.source_url == (tmp_path / "samples").as_uri()
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'pe_metadata.sqlite'}"
    assert (settings.clean_prefix, settings.malicious_prefix) == ("0/", "1/")
    assert settings.spark_master == "local[*]" and not settings.s3_anonymous


def test_s3_settings_are_normalised():
    settings = load_settings({
        "PE_SOURCE_URL": "s3://bucket/root/", "PE_CLEAN_PREFIX": "benign",
        "PE_MALICIOUS_PREFIX": "/malware/", "PE_S3_ANONYMOUS": "yes",
        "PE_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    })

    assert settings.source_url == "s3://bucket/root" and settings.is_s3
    assert (settings.clean_prefix, settings.malicious_prefix) == ("benign/", "malware/")
    assert settings.s3_anonymous and settings.s3_endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PE_SOURCE_URL", "ftp://host/x", "is not s3:// or file://"),
        ("PE_SOURCE_URL", "s3://", "no bucket name"),
        ("PE_SOURCE_URL", "file://host/x", "three slashes"),
        ("PE_DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
        ("PE_DATABASE_URL", "mysql://u@h/db", "not supported"),
        ("PE_S3_ANONYMOUS", "maybe", "not a boolean"),
        ("PE_S3_ENDPOINT_URL", "127.0.0.1:9000", r"not an http\(s\) URL"),
        ("PE_MALICIOUS_PREFIX", "0/", "overlap"),
    ],
)
def test_bad_values_raise_a_config_error_naming_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings({name: value})
    assert name in str(raised.value) or name == "PE_MALICIOUS_PREFIX"


def test_cli_reports_a_bad_setting_as_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PE_SOURCE_URL": "ftp://nowhere/x",
           "DAGSTER_HOME": str(tmp_path)}

    done = subprocess.run(
        [sys.executable, "-m", "pe_assets", "run", "--n", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: PE_SOURCE_URL='ftp://nowhere/x': scheme 'ftp' is not s3:// or file://"
    ]


def test_cli_reports_a_missing_bucket_folder_as_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PE_SOURCE_URL": str(tmp_path / "nothing-here"),
           "PE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "DAGSTER_HOME": str(tmp_path / "home")}

    done = subprocess.run(
        [sys.executable, "-m", "pe_assets", "run", "--n", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: sample_job failed in file_manifest: "
        f"sample folder {tmp_path / 'nothing-here'} does not exist"
    ]
    assert "Traceback" not in done.stderr


def test_definitions_validate_with_and_without_workspace(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path)}
    for extra in ([], ["-w", "workspace.yaml"]):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "All code locations passed validation" in done.stderr + done.stdout
