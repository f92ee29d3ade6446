"""The end-of-run summary printed by `python -m pe_assets run`."""

from dataclasses import dataclass, field

import sqlalchemy as sa

from pe_assets.config import Settings
from pe_assets.table import create_db_engine, pe_metadata


@dataclass
class RunSummary:
    selected: int = 0
    selected_clean: int = 0
    selected_malicious: int = 0
    skipped_done: int = 0
    note: str | None = None
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def from_manifest(cls, metadata: dict) -> "RunSummary":
        def value(name: str):
            entry = metadata.get(name)
            return entry.value if entry is not None else None

        return cls(
            selected=value("selected") or 0,
            selected_clean=value("selected_clean") or 0,
            selected_malicious=value("selected_malicious") or 0,
            skipped_done=value("skipped_already_processed") or 0,
            note=value("note"),
        )

    def add_results(self, settings: Settings, run_id: str) -> None:
        """Count the rows this run stored, by status, straight from the table."""
        engine = create_db_engine(settings.database_url)
        query = (
            sa.select(pe_metadata.c.status, sa.func.count())
            .where(pe_metadata.c.run_id == run_id)
            .group_by(pe_metadata.c.status)
        )
        with engine.connect() as conn:
            self.by_status = {status: count for status, count in conn.execute(query)}
        engine.dispose()

    @property
    def stored(self) -> int:
        return sum(self.by_status.values())

    def render(self) -> str:
        failed = {k: v for k, v in sorted(self.by_status.items()) if k != "ok"}
        rate = self.stored / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"selected: {self.selected} ({self.selected_clean} clean, "
            f"{self.selected_malicious} malicious)",
            f"skipped as already done: {self.skipped_done}",
            f"ok: {self.by_status.get('ok', 0)}",
            "failed: " + (", ".join(f"{k} {v}" for k, v in failed.items()) or "0"),
            f"files/s: {rate:.1f} ({self.stored} rows in {self.seconds:.1f} s)",
        ]
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)
