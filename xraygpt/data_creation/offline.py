"""Rule-based generation: no API, deterministic, so every user can build a dataset.

* ``report``: cleaned findings + impression (OpenI) or the cleaned caption (ROCO), behind a
  report-request prompt picked deterministically from a small pool.
* ``vqa``: OpenI MeSH terms become yes/no and location questions (a ``No`` answer only for
  studies indexed ``normal``, where absence is stated); ROCO captions naming exactly one
  imaging modality become a modality question.
"""
from __future__ import annotations

import hashlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

from xraygpt.data_creation.records import GenerationRejected, Job, SourceItem
from xraygpt.data_creation.text import clean_report_text, join_report
from xraygpt.structured.targets import STRUCTURED_PROMPT, rule_target

PROMPT_VERSION = "offline-v1"

CHEST_REPORT_PROMPTS = (
    "Describe the findings in this chest X-ray.",
    "Write a radiology report for this chest radiograph.",
    "What do you see in this chest X-ray?",
    "Please summarise the findings and impression of this chest X-ray.",
    "Could you write the report for this frontal chest film?",
)
GENERIC_REPORT_PROMPTS = (
    "Describe this {modality}.",
    "What does this {modality} show?",
    "Write a short radiology description of this {modality}.",
)

SIDES = {"left", "right", "bilateral"}
SITES = {
    "lung", "apex", "upper lobe", "middle lobe", "lower lobe", "base", "hilum", "lingula", "pleura",
    "mediastinum", "lymph nodes", "thorax", "trachea", "carina", "retrocardiac", "pulmonary alveoli",
    "abdomen", "spine", "posterior", "anterior", "diaphragm", "costophrenic angle",
}
NOUN_QUALIFIERS = {"hypoinflation", "hyperdistention"}
# Headings naming a structure, not a finding: only meaningful with their qualifier.
ANATOMY_HEADINGS = {
    "lung", "pulmonary artery", "thorax", "spine", "thoracic vertebrae", "markings", "aorta", "heart",
    "diaphragm", "mediastinum", "trachea", "ribs", "bone",
}
NOT_A_FINDING = {"normal", "no indexing", "technical quality of image unsatisfactory"}
NORMAL_STUDY_NEGATIVES = ("cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "pulmonary edema")

MODALITIES = (
    ("computed tomography (CT) image", re.compile(r"\b(CT|CTA|computed tomograph\w*|HRCT)\b")),
    ("magnetic resonance (MR) image", re.compile(r"\b(MRI|MR|magnetic resonance|T1|T2|FLAIR)\b")),
    ("ultrasound image", re.compile(r"\b(ultrasound|ultrasonogra\w*|sonogra\w*|doppler|echocardiograph\w*)\b", re.I)),
    ("X-ray radiograph", re.compile(r"\b(x-?ray|radiograph\w*|CXR)\b", re.I)),
    ("nuclear medicine scan", re.compile(r"\b(scintigra\w*|PET|SPECT|bone scan)\b", re.I)),
    ("angiogram", re.compile(r"\b(angiogra\w*|DSA)\b", re.I)),
)


def stable_choice(options: Sequence[str], *keys: str) -> str:
    """Same keys -> same option on every run and machine (unlike ``hash()``)."""
    digest = hashlib.sha256("|".join(keys).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _phrase(head: str) -> str:
    """MeSH inverted headings read naturally: ``Hernia, Hiatal`` -> ``hiatal hernia``."""
    return " ".join(reversed([p.strip() for p in head.split(",")])).lower()


def parse_mesh(mesh: str) -> List[Tuple[str, str, str]]:
    """``Opacity/lung/apex/left/irregular`` -> ``(opacity, irregular opacity, in the left lung apex)``.

    Returns (what to ask about, described finding, location phrase or ''), one per distinct
    finding; a structure heading (``Pulmonary Artery/enlarged``) is asked about with its qualifier.
    """
    results, seen = [], set()
    for term in mesh.split(";"):
        parts = [p.strip() for p in term.split("/") if p.strip()]
        if not parts or parts[0].lower() in NOT_A_FINDING:
            continue
        finding = _phrase(parts[0])
        if finding in seen:
            continue
        seen.add(finding)
        qualifiers = [q.lower() for q in parts[1:]]
        side = next((q for q in qualifiers if q in SIDES), "")
        sites = [q for q in qualifiers if q in SITES]
        adjectives = [q for q in qualifiers if q not in SIDES and q not in SITES and q not in NOUN_QUALIFIERS]
        nouns = [q for q in qualifiers if q in NOUN_QUALIFIERS]
        described = " ".join(adjectives + [finding] + nouns)
        if finding in ANATOMY_HEADINGS:
            if described == finding:
                continue
            finding = described
        results.append((finding, described, _location(side, sites)))
    return results


def _location(side: str, sites: List[str]) -> str:
    if "lung" in sites and any("lobe" in s for s in sites):
        sites = [s for s in sites if s != "lung"]  # "right upper lobe", not "right lung upper lobe"
    place = " ".join(sites)
    if side == "bilateral":
        return f"in the {place}, bilaterally" if place else "bilaterally"
    if side:
        return f"in the {side} {place}" if place else f"on the {side} side"
    return f"in the {place}" if place else ""


def openi_questions(item: SourceItem, max_questions: int) -> List[Dict[str, str]]:
    findings = parse_mesh(item.text.get("MeSH", ""))
    if item.text.get("MeSH", "").strip().lower() == "normal":
        pool = [
            {"prompt": "Is this chest X-ray normal?", "caption": "Yes, this chest X-ray is normal."},
        ] + [
            {"prompt": f"Is there evidence of {name}?", "caption": f"No, there is no {name}."}
            for name in NORMAL_STUDY_NEGATIVES
        ]
        first, rest = pool[0], pool[1:]
        start = int(hashlib.sha256(item.source_id.encode()).hexdigest(), 16) % len(rest)
        return ([first] + rest[start:] + rest[:start])[:max_questions]
    entries = []
    for finding, described, where in findings:
        answer = f"Yes, there is {described}" + (f" {where}." if where else ".")
        entries.append({"prompt": f"Is there evidence of {finding}?", "caption": answer})
        if where:
            entries.append({"prompt": f"Where is the {finding}?", "caption": f"The {described} is {where}."})
    return entries[:max_questions]


def with_article(phrase: str) -> str:
    """``an X-ray radiograph``, ``an ultrasound image``, ``a computed tomography (CT) image``."""
    return f"{'an' if phrase[0] in 'aeiouAEIOUX' else 'a'} {phrase}"


def detect_modality(caption: str) -> Optional[str]:
    """The one imaging modality a caption names, or None when it names none or several."""
    found = [name for name, pattern in MODALITIES if pattern.search(caption)]
    return found[0] if len(found) == 1 else None


def generate_offline(job: Job, max_questions: int = 3) -> List[Dict[str, str]]:
    """Entries ``{prompt, caption}`` for one job, or :class:`GenerationRejected` with the reason."""
    item = job.item
    if job.task == "report":
        if item.source == "openi":
            report = join_report(item.text.get("findings", ""), item.text.get("impression", ""))
            prompt = stable_choice(CHEST_REPORT_PROMPTS, item.source_id, job.task)
        else:
            report = clean_report_text(item.text.get("caption", ""))
            modality = detect_modality(report) or "medical image"
            prompt = stable_choice(GENERIC_REPORT_PROMPTS, item.source_id, job.task).format(modality=modality)
        if not report:
            raise GenerationRejected("no report text left after clean-up (empty or fully masked with XXXX)")
        return [{"prompt": prompt, "caption": report}]
    if job.task == "vqa":
        if item.source == "openi":
            entries = openi_questions(item, max_questions)
        else:
            modality = detect_modality(item.text.get("caption", ""))
            entries = [] if modality is None else [
                {"prompt": "Which imaging modality was used for this image?", "caption": f"This is {with_article(modality)}."}
            ]
        if not entries:
            raise GenerationRejected("no rule-based question applies (no indexed finding or no single modality named)")
        return entries
    if job.task == "structured":
        if item.source != "openi":
            raise GenerationRejected("structured targets follow the chest x-ray schema: OpenI items only")
        findings = clean_report_text(item.text.get("findings", ""))
        impression = clean_report_text(item.text.get("impression", ""))
        if not findings and not impression:
            raise GenerationRejected("no report text left after clean-up (empty or fully masked with XXXX)")
        # The heading lets the extractor fill "impression" from the impression section.
        text = f"{findings} Impression: {impression}" if impression else findings
        return [{"prompt": STRUCTURED_PROMPT, "caption": rule_target(text)}]
    raise GenerationRejected(f"unknown task {job.task!r}")
