"""Readers for ROCO (Radiology Objects in COntext): the GitHub layout and the Kaggle CSV.

GitHub: ``<split>/radiology/captions.txt`` (``ROCO_ID<TAB> caption``) beside keywords / semtypes /
cuis (``ROCO_ID<TAB><TAB>v1<TAB>v2...``) and ``licences.txt`` (CSV ``ROCO_ID,PMC_ID,CC``), images at
``images/<ROCO_ID>.jpg``.  Kaggle: ``radiologyvaldata.csv`` (``id,name,caption``) with images at
``images/<name>`` beside the CSV.  Figures of one PMC article share a group, so a split never
puts the same paper (often the same patient) on both sides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from xraygpt.data_creation.records import DataCreationError, Rejection, SourceItem
from xraygpt.data_creation.tables import read_csv_rows, read_tab_lines, require_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what ROCO ships (a subset of common.constants.IMAGE_SUFFIXES)


def _article_group(pmc_name: str, fallback: str) -> str:
    """``PMC3208922_JPN-6-31-g012.jpg`` -> ``roco:PMC3208922``."""
    head = pmc_name.split("_", 1)[0]
    return f"roco:{head}" if head.startswith("PMC") else f"roco:{fallback}"


def _list_file(path: Path) -> Dict[str, List[str]]:
    if not path.is_file():
        return {}
    return {fields[0]: [v for v in fields[1:] if v.strip()] for fields in read_tab_lines(path)}


def _find_image(images_dir: Path, stem: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        path = images_dir / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def read_roco_github(folder: Path, images_dir: Optional[Path] = None) -> Tuple[List[SourceItem], List[Rejection]]:
    """``folder`` is ``data/<split>/radiology`` (the one holding ``captions.txt``)."""
    captions_path = require_file(folder / "captions.txt", "ROCO captions.txt")
    images_dir = images_dir or folder / "images"
    keywords = _list_file(folder / "keywords.txt")
    cuis = _list_file(folder / "cuis.txt")
    semtypes = _list_file(folder / "semtypes.txt")
    licences: Dict[str, Dict[str, str]] = {}
    if (folder / "licences.txt").is_file():
        rows = read_csv_rows(folder / "licences.txt", ("ROCO_ID", "PMC_ID", "CC"), "ROCO licences.txt")
        licences = {row["ROCO_ID"]: row for row in rows}

    items: List[SourceItem] = []
    rejections: List[Rejection] = []
    for line_no, fields in enumerate(read_tab_lines(captions_path), start=1):
        if len(fields) < 2:
            raise DataCreationError(f"{captions_path}, line {line_no}: expected 'ROCO_ID<TAB>caption', got {fields!r}")
        roco_id = fields[0].strip()
        caption = " ".join("\t".join(fields[1:]).split())
        image = _find_image(images_dir, roco_id)
        if image is None:
            rejections.append(Rejection(roco_id, "read", f"no image {roco_id}.jpg/.png in {images_dir}"))
            continue
        licence = licences.get(roco_id, {})
        items.append(
            SourceItem(
                source="roco",
                source_id=roco_id,
                group_id=_article_group(licence.get("PMC_ID", ""), roco_id),
                images=[image],
                text={"caption": caption, "keywords": ", ".join(keywords.get(roco_id, []))},
                meta={
                    "pmc_file": licence.get("PMC_ID", ""),
                    "licence": licence.get("CC", ""),
                    "cuis": " ".join(cuis.get(roco_id, [])),
                    # semtypes alternate code / name; keep the names.
                    "semtypes": "; ".join(semtypes.get(roco_id, [])[1::2]),
                },
            )
        )
    return items, rejections


def read_roco_kaggle(csv_path: Path, images_dir: Optional[Path] = None) -> Tuple[List[SourceItem], List[Rejection]]:
    """``radiologyvaldata.csv``-style file (``id,name,caption``); images at ``images/<name>`` by default."""
    rows = read_csv_rows(csv_path, ("id", "name", "caption"), "ROCO Kaggle CSV (id,name,caption)")
    images_dir = images_dir or csv_path.parent / "images"
    items: List[SourceItem] = []
    rejections: List[Rejection] = []
    for row in rows:
        image = images_dir / row["name"]
        if not image.is_file():
            rejections.append(Rejection(row["id"], "read", f"image file missing: {image}"))
            continue
        items.append(
            SourceItem(
                source="roco",
                source_id=row["id"],
                group_id=_article_group(row["name"], row["id"]),
                images=[image],
                text={"caption": " ".join(row["caption"].split()), "keywords": ""},
                meta={"pmc_file": row["name"]},
            )
        )
    return items, rejections
