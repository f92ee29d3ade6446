"""The reference record: what pefile 2024.8.26 with a full load says about a file.

Shared by the tests, the expected-values generator and the benchmark, so that all three compare
parse_pe against the same reading of pefile.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any

import pefile

from pe_assets.pe_parser import PARSED_FIELDS, empty_record

_ARCHITECTURES = {
    0x14C: "x86", 0x8664: "x64", 0x1C0: "arm", 0x1C2: "arm", 0x1C4: "arm", 0xAA64: "arm64",
    0x200: "ia64",
}

# Fields only parse_pe defines for files pefile rejects; the comparison skips them there.
COMPARED_WHEN_REJECTED = ("size", "sha256")


def reference_entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte, computed the slow, obvious way."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


def reference_record(data: bytes) -> dict[str, Any]:
    """The record pefile's full load implies; status "rejected" when pefile raises."""
    try:
        pe = pefile.PE(data=data)
    except pefile.PEFormatError as e:
        digest = hashlib.sha256(data).hexdigest()
        return empty_record(len(data), digest, "rejected", str(e)[:200])
    try:
        return reference_from_pe(pe, data)
    finally:
        pe.close()


def reference_from_pe(pe: pefile.PE, data: bytes) -> dict[str, Any]:
    """The record for a file pefile has already loaded (fully) from `data`."""
    record = empty_record(len(data), hashlib.sha256(data).hexdigest(), "ok", None)
    characteristics = pe.FILE_HEADER.Characteristics
    machine = pe.FILE_HEADER.Machine
    imports = getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
    exports = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    overlay_start = pe.get_overlay_data_start_offset()

    def present(index: int) -> bool:
        return len(directories) > index and bool(
            directories[index].VirtualAddress and directories[index].Size
        )

    if characteristics & 0x2000:
        file_type = "dll"
    elif characteristics & 0x0002:
        file_type = "exe"
    else:
        file_type = None
    record.update(
        file_type=file_type,
        architecture=_ARCHITECTURES.get(machine, "other"),
        machine=machine,
        import_count=sum(len(d.imports) for d in imports),
        import_dll_count=len(imports),
        export_count=len(exports.symbols) if exports else 0,
        pe_format={0x10B: "PE32", 0x20B: "PE32+"}.get(pe.PE_TYPE),
        subsystem=pe.OPTIONAL_HEADER.Subsystem,
        timestamp=pe.FILE_HEADER.TimeDateStamp,
        section_count=len(pe.sections),
        entry_point=pe.OPTIONAL_HEADER.AddressOfEntryPoint,
        has_signature=present(4),
        is_dotnet=present(14),
        overlay_size=0 if overlay_start is None else len(data) - overlay_start,
        entropy=reference_entropy(data),
        imphash=pe.get_imphash() or None,
    )
    return record


def diff_records(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, tuple]:
    """Fields whose values differ, as {field: (ours, reference)}; entropy to 1e-9."""
    if reference["status"] == "rejected":
        fields: tuple[str, ...] = COMPARED_WHEN_REJECTED
    else:
        fields = tuple(f for f in PARSED_FIELDS if f not in ("status", "error"))
    diffs = {}
    for field in fields:
        a, b = ours[field], reference[field]
        if field == "entropy" and a is not None and b is not None:
            if abs(a - b) > 1e-9:
                diffs[field] = (a, b)
        elif a != b:
            diffs[field] = (a, b)
    return diffs
