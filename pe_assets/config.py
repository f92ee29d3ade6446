"""Settings from environment variables (and an optional `.env` file in the working directory).

The same settings are read by the Dagster definitions on the driver and rebuilt on Spark executors
from a plain dict, so that executors create their own S3 clients and database connections.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from pe_assets.errors import ConfigError

DEFAULT_SOURCE_DIR = Path("samples")
DEFAULT_DATABASE_PATH = Path("data") / "pe_metadata.sqlite"


@dataclass(frozen=True)
class Settings:
    source_url: str
    clean_prefix: str = "0/"
    malicious_prefix: str = "1/"
    s3_endpoint_url: str | None = None
    s3_anonymous: bool = False
    s3_region: str | None = None
    database_url: str = ""
    spark_master: str = "local[*]"

    @property
    def is_s3(self) -> bool:
        return self.source_url.startswith("s3://")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        return cls(**values)


def _flag(name: str, value: str | None) -> bool:
    if value is None or value.strip() == "":
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def _prefix(name: str, value: str) -> str:
    value = value.strip().lstrip("/")
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value if value.endswith("/") else value + "/"


def normalize_source_url(url: str) -> str:
    """Check `s3://bucket[/root]` or `file:///folder` (a bare path is taken as a folder)."""
    url = url.strip()
    if "://" not in url:
        return Path(url).expanduser().resolve().as_uri()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"PE_SOURCE_URL={url!r} has no bucket name (expected s3://bucket/root)")
        root = parsed.path.strip("/")
        return f"s3://{parsed.netloc}/{root}" if root else f"s3://{parsed.netloc}"
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"PE_SOURCE_URL={url!r}: file URLs take three slashes, file:///folder")
        return Path(parsed.path).resolve().as_uri()
    raise ConfigError(f"PE_SOURCE_URL={url!r}: scheme {parsed.scheme!r} is not s3:// or file://")


def check_database_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"PE_DATABASE_URL is not a SQLAlchemy URL: {e}") from e
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"PE_DATABASE_URL: backend {parsed.get_backend_name()!r} is not supported "
            "(use postgresql:// or sqlite:///)"
        )
    return url


def is_local_master(master: str) -> bool:
    """local, local[N] and local-cluster[...] keep every executor on this machine."""
    return master.strip().startswith("local")


def check_cluster_database(database_url: str, spark_master: str) -> None:
    """Refuse SQLite with a cluster master: executors on other machines cannot reach the file."""
    from sqlalchemy.engine import make_url

    if is_local_master(spark_master) or make_url(database_url).get_backend_name() != "sqlite":
        return
    raise ConfigError(
        f"PE_DATABASE_URL is SQLite (set or by default), which the executors of "
        f"PE_SPARK_MASTER={spark_master} cannot write to; use a postgresql:// database "
        "every worker can reach"
    )


def load_dotenv_once(path: Path = Path(".env")) -> None:
    """Read `.env` without overriding variables that are already set."""
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    if environ is None:
        load_dotenv_once()
        environ = dict(os.environ)
    get = environ.get
    source = get("PE_SOURCE_URL") or DEFAULT_SOURCE_DIR.resolve().as_uri()
    database_url = get("PE_DATABASE_URL") or f"sqlite:///{DEFAULT_DATABASE_PATH.resolve()}"
    clean = _prefix("PE_CLEAN_PREFIX", get("PE_CLEAN_PREFIX") or "0/")
    malicious = _prefix("PE_MALICIOUS_PREFIX", get("PE_MALICIOUS_PREFIX") or "1/")
    if clean.startswith(malicious) or malicious.startswith(clean):
        raise ConfigError(
            f"PE_CLEAN_PREFIX={clean!r} and PE_MALICIOUS_PREFIX={malicious!r} overlap"
        )
    endpoint = (get("PE_S3_ENDPOINT_URL") or "").strip() or None
    if endpoint and urlparse(endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"PE_S3_ENDPOINT_URL={endpoint!r} is not an http(s) URL")
    spark_master = (get("PE_SPARK_MASTER") or "local[*]").strip()
    check_cluster_database(check_database_url(database_url), spark_master)
    return Settings(
        source_url=normalize_source_url(source),
        clean_prefix=clean,
        malicious_prefix=malicious,
        s3_endpoint_url=endpoint,
        s3_anonymous=_flag("PE_S3_ANONYMOUS", get("PE_S3_ANONYMOUS")),
        s3_region=get("AWS_REGION") or get("AWS_DEFAULT_REGION") or None,
        database_url=database_url,
        spark_master=spark_master,
    )
