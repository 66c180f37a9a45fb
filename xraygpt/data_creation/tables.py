"""CSV / TSV reading with errors that name the file, the line and the fix."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Iterable, Iterator, List

from xraygpt.data_creation.records import DataCreationError


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataCreationError(f"{what} not found: {path} (check the path or pass it explicitly; see --help)")
    return path


def read_csv_rows(path: Path, required: Iterable[str], what: str) -> List[Dict[str, str]]:
    """All rows of a header CSV as dicts of stripped strings (empty cells stay ``''``)."""
    require_file(path, what)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in required if name not in header]
        if missing:
            raise DataCreationError(
                f"{path}: missing column(s) {missing}; found {header}. "
                f"The {what} needs the columns {list(required)} in its header row."
            )
        try:
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
        except csv.Error as exc:
            raise DataCreationError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc


def read_tab_lines(path: Path) -> Iterator[List[str]]:
    """ROCO ``.txt`` files: ``id<TAB>value...`` per line; fields are not stripped here."""
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if not fields[0].strip():
                raise DataCreationError(f"{path}, line {line_no}: empty id before the first TAB")
            yield fields
