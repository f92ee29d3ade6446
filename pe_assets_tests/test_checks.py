"""The asset checks on pe_metadata_table, each passing and failing on the real test database.

Checks run the way Dagster runs them: in a job that selects only the check, against the
instance that holds the sample runs (sample_job itself runs against moto's S3 server).
"""

from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
)

from pe_assets.checks import (
    DEFAULT_MAX_FAILED_SHARE,
    failed_share_is_low,
    last_sample_is_balanced,
    max_failed_share,
    paths_are_unique,
)
from pe_assets.definitions import build_definitions
from pe_assets.errors import ConfigError
from pe_assets.samples import upload_samples_s3
from pe_assets.table import create_db_engine, pe_manifest, pe_metadata


@dataclass
class Checked:
    """A bucket, the test database and an instance, wired through PE_* variables."""

    bucket: object
    instance: DagsterInstance
    defs: Definitions
    engine: sa.Engine

    def run_check(self, check):
        job = define_asset_job("check_job", selection=AssetSelection.checks(check))
        defs = Definitions.merge(self.defs, Definitions(jobs=[job]))
        result = defs.resolve_job_def("check_job").execute_in_process(instance=self.instance)
        assert result.success
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    def sample(self, **config) -> str:
        result = self.defs.resolve_job_def("sample_job").execute_in_process(
            run_config={"ops": {"file_manifest": {"config": config}}}, instance=self.instance
        )
        assert result.success
        return result.run_id

    def store(self, *rows: dict) -> None:
        now = datetime.now(timezone.utc)
        defaults = {"label": "clean", "status": "ok", "processed_at": now}
        with self.engine.begin() as conn:
            conn.execute(sa.insert(pe_metadata), [{**defaults, **row} for row in rows])


@pytest.fixture
def checked(bucket, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("PE_SOURCE_URL", bucket.url)
    monkeypatch.setenv("PE_S3_ENDPOINT_URL", bucket.endpoint)
    monkeypatch.setenv("PE_DATABASE_URL", database_url)
    unset = ("PE_CLEAN_PREFIX", "PE_MALICIOUS_PREFIX", "PE_S3_ANONYMOUS", "PE_MAX_FAILED_SHARE")
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    instance = DagsterInstance.ephemeral()
    engine = create_db_engine(database_url)
    yield Checked(bucket, instance, build_definitions(str(tmp_path / "wh")), engine)
    engine.dispose()
    instance.dispose()


def metadata_values(evaluation) -> dict:
    return {key: value.value for key, value in evaluation.metadata.items()}


def test_process_job_runs_the_checks(checked):
    keys = checked.defs.resolve_job_def("process_job").asset_layer.asset_graph.asset_check_keys
    names = {key.name for key in keys}
    assert names == {"paths_are_unique", "last_sample_is_balanced", "failed_share_is_low"}


def test_unique_paths_pass(checked):
    checked.store({"path": "s3://b/0/aa"}, {"path": "s3://b/1/bb", "label": "malicious"})

    evaluation = checked.run_check(paths_are_unique)

    assert evaluation.passed
    assert metadata_values(evaluation)["rows"] == 2
    assert metadata_values(evaluation)["duplicated_paths"] == 0


def test_duplicate_paths_fail_and_are_named(checked):
    # Only a table without its primary key can hold duplicates: one loaded by other means.
    with checked.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE pe_metadata DROP CONSTRAINT pe_metadata_pkey")
    checked.store(
        {"path": "s3://b/0/aa"}, {"path": "s3://b/0/aa"}, {"path": "s3://b/0/aa"},
        {"path": "s3://b/0/cc"},
    )

    evaluation = checked.run_check(paths_are_unique)

    values = metadata_values(evaluation)
    assert not evaluation.passed
    assert values["duplicated_paths"] == 1 and values["surplus_rows"] == 2
    assert values["examples"] == ["s3://b/0/aa"]


def test_balanced_sample_passes(checked):
    upload_samples_s3(checked.bucket.client, checked.bucket.name, n_clean=4, n_malicious=4,
                      corrupt_share=0)
    run_id = checked.sample(n=7)
    with checked.engine.connect() as conn:
        first = conn.execute(sa.select(pe_manifest.c.path).where(pe_manifest.c.label == "clean")
                             .limit(1)).scalar_one()
    checked.store({"path": first})

    evaluation = checked.run_check(last_sample_is_balanced)

    values = metadata_values(evaluation)
    assert evaluation.passed
    assert values["sample_run"] == run_id and values["n"] == 7
    assert (values["claimed_clean"], values["claimed_malicious"]) == (4, 3)
    assert (values["stored_clean"], values["stored_malicious"]) == (1, 0)


def test_only_the_latest_sample_counts(checked):
    upload_samples_s3(checked.bucket.client, checked.bucket.name, n_clean=6, n_malicious=6,
                      corrupt_share=0)
    checked.sample(n=4)
    latest = checked.sample(n=2)

    evaluation = checked.run_check(last_sample_is_balanced)

    values = metadata_values(evaluation)
    assert evaluation.passed and values["sample_run"] == latest
    assert (values["claimed_clean"], values["claimed_malicious"]) == (1, 1)


def test_label_running_out_fails_as_a_warning(checked):
    upload_samples_s3(checked.bucket.client, checked.bucket.name, n_clean=1, n_malicious=5,
                      corrupt_share=0)
    checked.sample(n=6)

    evaluation = checked.run_check(last_sample_is_balanced)

    values = metadata_values(evaluation)
    assert not evaluation.passed
    assert evaluation.severity == AssetCheckSeverity.WARN
    assert (values["claimed_clean"], values["expected_clean"]) == (1, 3)
    assert values["claimed_malicious"] == 3


def test_manifest_disagreeing_with_n_fails_as_an_error(checked):
    upload_samples_s3(checked.bucket.client, checked.bucket.name, n_clean=4, n_malicious=4,
                      corrupt_share=0)
    run_id = checked.sample(n=6)
    with checked.engine.begin() as conn:
        conn.execute(
            sa.update(pe_manifest)
            .where(pe_manifest.c.sampled_by == run_id, pe_manifest.c.label == "malicious")
            .values(label="clean")
        )

    evaluation = checked.run_check(last_sample_is_balanced)

    assert not evaluation.passed
    assert evaluation.severity == AssetCheckSeverity.ERROR
    assert metadata_values(evaluation)["claimed_malicious"] == 0


def test_paths_file_sample_asks_for_no_balance(checked, tmp_path):
    summary = upload_samples_s3(checked.bucket.client, checked.bucket.name, n_clean=3,
                                n_malicious=1, corrupt_share=0)
    paths_file = tmp_path / "paths.txt"
    paths_file.write_text("\n".join(sorted(summary.specs)))
    run_id = checked.sample(paths_file=str(paths_file))

    evaluation = checked.run_check(last_sample_is_balanced)

    assert evaluation.passed and metadata_values(evaluation) == {"sample_run": run_id}
    assert "paths file" in evaluation.description


def test_no_sample_yet_passes(checked):
    evaluation = checked.run_check(last_sample_is_balanced)

    assert evaluation.passed and "No sample" in evaluation.description


def test_few_failed_rows_pass(checked):
    checked.store(
        {"path": "s3://b/0/a1"}, {"path": "s3://b/0/a2"}, {"path": "s3://b/0/a3"},
        {"path": "s3://b/1/b1", "status": "not_pe"},
    )

    evaluation = checked.run_check(failed_share_is_low)

    values = metadata_values(evaluation)
    assert evaluation.passed
    assert (values["rows"], values["failed"], values["failed_share"]) == (4, 1, 0.25)
    assert values["max_failed_share"] == DEFAULT_MAX_FAILED_SHARE
    assert "| not_pe | 1 |" in values["by_status"]


def test_mostly_failed_rows_fail(checked):
    checked.store(
        {"path": "s3://b/0/a1"}, {"path": "s3://b/1/b1", "status": "malformed"},
        {"path": "s3://b/1/b2", "status": "not_pe"},
        {"path": "s3://b/1/b3", "status": "download_failed"},
    )

    evaluation = checked.run_check(failed_share_is_low)

    assert not evaluation.passed
    assert metadata_values(evaluation)["failed_share"] == 0.75


def test_threshold_comes_from_the_environment(checked, monkeypatch):
    monkeypatch.setenv("PE_MAX_FAILED_SHARE", "0.2")
    checked.store(
        {"path": "s3://b/0/a1"}, {"path": "s3://b/0/a2"}, {"path": "s3://b/0/a3"},
        {"path": "s3://b/1/b1", "status": "not_pe"},
    )

    evaluation = checked.run_check(failed_share_is_low)

    assert not evaluation.passed
    assert metadata_values(evaluation)["max_failed_share"] == 0.2


def test_empty_table_passes_the_failed_share(checked):
    evaluation = checked.run_check(failed_share_is_low)

    assert evaluation.passed and metadata_values(evaluation)["rows"] == 0


@pytest.mark.parametrize(
    ("raw", "expected"), [("", 0.5), (" 0 ", 0.0), ("1", 1.0), ("0.05", 0.05)]
)
def test_max_failed_share_reads_a_fraction(raw, expected):
    assert max_failed_share({"PE_MAX_FAILED_SHARE": raw}) == expected


@pytest.mark.parametrize("raw", ["half", "1.5", "-0.1", "nan"])
def test_max_failed_share_rejects_other_values(raw):
    with pytest.raises(ConfigError, match="PE_MAX_FAILED_SHARE"):
        max_failed_share({"PE_MAX_FAILED_SHARE": raw})
