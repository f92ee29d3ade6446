-- Runs once, when the postgres service starts on an empty volume. Dagster's own storage uses
-- the `dagster` database (POSTGRES_DB); the pe_metadata table gets a database of its own, since
-- both keep Alembic's `alembic_version` table.
CREATE DATABASE pe_analyzer;
