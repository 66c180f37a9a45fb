"""Plain records passed between the readers, the generators and the writer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional
from xraygpt.common.errors import DataError


class DataCreationError(DataError):
    """A user-fixable problem with the inputs or options (printed without a traceback)."""


@dataclass
class SourceItem:
    """One study (OpenI) or one figure (ROCO) with everything a generator may use."""

    source: str
    """Dataset name, e.g. ``openi`` or ``roco``."""
    source_id: str
    """Stable id within the source (OpenI uid, ROCO id); the cache key starts with it."""
    group_id: str
    """Items sharing a group (patient/study/article) always land in the same split."""
    images: List[Path]
    """Candidate images, best first (e.g. the frontal views of a study)."""
    text: Dict[str, str]
    """Raw text fields (findings, impression, MeSH, caption, ...), stripped."""
    meta: Dict[str, str] = field(default_factory=dict)
    """Provenance copied to the manifest (licence, projections, ...)."""


@dataclass
class Rejection:
    """Why an item was left out; every one is counted and listed in the manifest."""

    source_id: str
    stage: str
    """``read``, ``filter``, ``image`` or ``generate``."""
    reason: str

    def as_dict(self) -> Dict[str, str]:
        return {"source_id": self.source_id, "stage": self.stage, "reason": self.reason}


@dataclass
class Job:
    """One generation request: a task (``report`` or ``vqa``) for one source item."""

    item: SourceItem
    task: str
    prompt_version: str
    image: Optional[Path] = None
    """The exported image (sent to vision models with ``--attach-image``)."""

    @property
    def key(self) -> str:
        return f"{self.item.source_id}|{self.task}|{self.prompt_version}"


class GenerationRejected(Exception):
    """A generator could not produce a valid entry for a job; the message is the reason."""
