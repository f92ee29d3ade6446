"""The Spark schema of parsed rows, in the order `processing.RESULT_FIELDS` produces them."""

from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from pe_assets.processing import RESULT_FIELDS

_TYPES = {
    "size": LongType(), "machine": LongType(), "import_count": LongType(),
    "import_dll_count": LongType(), "export_count": LongType(), "subsystem": LongType(),
    "timestamp": LongType(), "section_count": LongType(), "entry_point": LongType(),
    "overlay_size": LongType(), "has_signature": BooleanType(), "is_dotnet": BooleanType(),
    "entropy": DoubleType(), "processed_at": TimestampType(),
}

RESULT_SCHEMA = StructType(
    [StructField(name, _TYPES.get(name, StringType()), True) for name in RESULT_FIELDS]
)
