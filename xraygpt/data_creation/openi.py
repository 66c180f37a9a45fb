"""Reader for the OpenI / Indiana University chest X-ray release in its Kaggle layout.

``indiana_reports.csv`` (one row per study uid) + ``indiana_projections.csv`` (one row per
image, with its projection) + ``images/images_normalized/<filename>``.  The projection column,
not the file name, says which view is frontal.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from xraygpt.data_creation.records import DataCreationError, Rejection, SourceItem
from xraygpt.data_creation.tables import read_csv_rows

log = logging.getLogger(__name__)

REPORT_COLUMNS = ("uid", "MeSH", "Problems", "findings", "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
TEXT_FIELDS = ("MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")


def read_openi(
    root: Optional[Path] = None,
    reports_csv: Optional[Path] = None,
    projections_csv: Optional[Path] = None,
    images_dir: Optional[Path] = None,
    projection: str = "frontal",
    study_level: bool = False,
) -> Tuple[List[SourceItem], List[Rejection]]:
    """Studies with their usable images; studies or images that cannot be used come back as rejections.

    ``projection`` is ``frontal`` (only Frontal images count) or ``any``.  ``study_level`` takes the
    study's first Frontal and first Lateral image, in that order (``meta["views"]`` names them).  A projection row whose
    file is missing is skipped with a counted ``read`` rejection; a study left without any image
    is rejected as a whole (an entry needs an image).
    """
    if projection not in ("frontal", "any"):
        raise DataCreationError(f"projection must be 'frontal' or 'any', got {projection!r}")
    if root is None and None in (reports_csv, projections_csv, images_dir):
        raise DataCreationError("give the Kaggle folder (--root) or all of --reports-csv, --projections-csv, --images-dir")
    reports_csv = reports_csv or root / "indiana_reports.csv"
    projections_csv = projections_csv or root / "indiana_projections.csv"
    images_dir = images_dir or root / "images" / "images_normalized"
    if not images_dir.is_dir():
        raise DataCreationError(f"OpenI image folder not found: {images_dir} (it should hold the <uid>_IM-....png files)")

    reports = read_csv_rows(reports_csv, REPORT_COLUMNS, "OpenI reports CSV (indiana_reports.csv)")
    projections = read_csv_rows(projections_csv, PROJECTION_COLUMNS, "OpenI projections CSV (indiana_projections.csv)")
    rejections: List[Rejection] = []

    known_uids = {row["uid"] for row in reports}
    views: Dict[str, List[Tuple[Path, str]]] = defaultdict(list)
    for row in projections:
        uid, filename = row["uid"], row["filename"]
        if uid not in known_uids:
            rejections.append(Rejection(f"openi:{uid}", "read", f"{projections_csv.name}: image {filename} belongs to no report row"))
            continue
        path = images_dir / filename
        if not path.is_file():
            rejections.append(Rejection(f"openi:{uid}", "read", f"image listed in {projections_csv.name} is missing: {path}"))
            continue
        views[uid].append((path, row["projection"]))

    items: List[SourceItem] = []
    seen = set()
    for row in reports:
        uid = row["uid"]
        source_id = f"openi:{uid}"
        if uid in seen:
            raise DataCreationError(f"{reports_csv}: uid {uid} appears twice; each report row needs a unique uid")
        seen.add(uid)
        study_views = views.get(uid, [])
        chosen = [p for p, proj in study_views if projection == "any" or proj.lower() == "frontal"]
        names: List[str] = []
        if study_level:
            by_view = {proj.lower(): p for p, proj in reversed(study_views)}  # the first image of each view
            names = [v for v in ("Frontal", "Lateral") if v.lower() in by_view] if "frontal" in by_view else []
            chosen = [by_view[v.lower()] for v in names]
        if not chosen:
            what = "no Frontal image" if study_views else "no image"
            rejections.append(Rejection(source_id, "read", f"study has {what}"))
            continue
        items.append(
            SourceItem(
                source="openi",
                source_id=source_id,
                group_id=f"openi:{uid}",
                images=chosen,
                text={name: row.get(name, "") for name in TEXT_FIELDS},
                meta={"uid": uid, "projections": ",".join(proj for _, proj in study_views),
                      **({"views": ",".join(names)} if study_level else {})},
            )
        )
    if rejections:
        log.info("OpenI: %d studies read, %d images/studies skipped while reading", len(items), len(rejections))
    return items, rejections
