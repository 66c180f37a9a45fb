"""Check the rule-based labeler against OpenI's human MeSH indexing.

``python -m xraygpt.evaluation.labeler_validation <openi_kaggle folder> [--uncertain negative|positive|ignore]``

OpenI (Indiana University chest X-rays) reports carry MeSH terms assigned by human indexers
(``indiana_reports.csv`` column ``MeSH``: ``;``-separated, ``Term/qualifier/...``). We map the terms that
correspond to CheXpert observations and compare them with the labeler's output on findings +
impression. The mapping (head term, qualifiers lower-cased):

* Cardiomegaly <- ``Cardiomegaly``, ``Cardiac Shadow/enlarged``; Pleural Effusion <- ``Pleural Effusion``;
  Pneumothorax <- ``Pneumothorax``; Edema <- ``Pulmonary Edema``, ``Edema``; Consolidation <-
  ``Consolidation``; Pneumonia <- ``Pneumonia``; Atelectasis <- ``Pulmonary Atelectasis``, ``Atelectasis``;
* Lung Opacity <- ``Opacity``, ``Airspace Disease``, ``Infiltrate``, ``Density`` (unless qualified ``pleura``);
* Lung Lesion <- ``Nodule``, ``Mass``, ``Lung Neoplasms``, ``Neoplasms``;
* Pleural Other <- ``Thickening``, ``Calcinosis``, ``Opacity``, ``Cicatrix`` qualified ``pleura``;
* Enlarged Cardiomediastinum <- ``Mediastinum`` qualified enlarged/widened/wide;
* Fracture <- ``Fractures, Bone``, ``Fractures``; Support Devices <- tubes, catheters, surgical instruments,
  devices, pacemakers, stents, implants (see ``_DEVICE_TERMS``);
* Lung Opacity also <- ``Cicatrix`` (scar) and ``Markings/interstitial``, as CheXpert counts them;
* No Finding: positive when every term is ``normal`` or a device (CheXpert's definition: a granuloma or a
  degenerative spine is an "other finding" that also leaves No Finding blank).

Severity qualifiers (``/mild``, ``/borderline``) do not change presence. Rows indexed ``No Indexing``
and rows with neither findings nor impression are skipped and counted.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from xraygpt.evaluation.chexpert_labeler import NO_FINDING, OBSERVATIONS, POSITIVE, SUPPORT_DEVICES, Label, label_report
from xraygpt.evaluation.clinical_efficacy import UncertainPolicy, binarize, clinical_efficacy

_HEAD_TERMS: Dict[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "pulmonary edema": "Edema",
    "edema": "Edema",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "density": "Lung Opacity",
    "cicatrix": "Lung Opacity",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "lung neoplasms": "Lung Lesion",
    "neoplasms": "Lung Lesion",
    "fractures, bone": "Fracture",
    "fractures": "Fracture",
}
_DEVICE_TERMS = {
    "tube, inserted", "catheters, indwelling", "catheters", "surgical instruments", "medical device",
    "implanted medical device", "pacemaker, artificial", "defibrillators, implantable", "stents",
    "prostheses and implants", "heart valve prosthesis", "electrodes", "electrodes, implanted",
    "surgical staples", "sutures", "central venous catheters",
}
_PLEURAL_OTHER_HEADS = {"thickening", "calcinosis", "opacity", "cicatrix"}
_WIDENED = {"enlarged", "widened", "wide"}


def mesh_term_observation(term: str) -> str | None:
    """The CheXpert observation one MeSH term (``Head/qualifier/...``) stands for, if any."""
    head, *qualifiers = [p.strip().lower() for p in term.split("/")]
    if "pleura" in qualifiers and head in _PLEURAL_OTHER_HEADS:
        return "Pleural Other"
    if head == "markings" and "interstitial" in qualifiers:
        return "Lung Opacity"
    if head == "cardiac shadow" and "enlarged" in qualifiers:
        return "Cardiomegaly"
    if head == "mediastinum" and _WIDENED.intersection(qualifiers):
        return "Enlarged Cardiomediastinum"
    if head in _DEVICE_TERMS:
        return "Support Devices"
    return _HEAD_TERMS.get(head)


def mesh_labels(mesh: str) -> Dict[str, Label]:
    """Positive for each observation a MeSH term maps to, blank otherwise; No Finding by CheXpert's rule."""
    labels: Dict[str, Label] = {o: None for o in OBSERVATIONS}
    for term in mesh.split(";"):
        observation = mesh_term_observation(term)
        if observation:
            labels[observation] = POSITIVE
    # CheXpert's No Finding: no pathology, and no other abnormal finding either (granuloma, degenerative
    # spine, hernia...): only "normal" and device terms leave it set.
    terms = [t.strip() for t in mesh.split(";") if t.strip()]
    if all(t.lower() == "normal" or mesh_term_observation(t) == SUPPORT_DEVICES for t in terms):
        labels[NO_FINDING] = POSITIVE
    return labels


def _text(row: Dict[str, str]) -> str:
    return " ".join((row.get(col) or "").strip() for col in ("findings", "impression")).strip()


def validate_on_openi(openi_dir: str | Path, uncertain: UncertainPolicy = "negative") -> Dict[str, object]:
    """Labeler vs MeSH agreement on ``<openi_dir>/indiana_reports.csv``: per observation, micro and macro."""
    csv_path = Path(openi_dir) / "indiana_reports.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: pass the folder holding OpenI's indiana_reports.csv")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"uid", "MeSH", "findings", "impression"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path} lacks column(s) {sorted(missing)}")
    predicted: List[Dict[str, Label]] = []
    reference: List[Dict[str, Label]] = []
    uids: List[str] = []
    skipped = {"no_indexing": [], "empty_text": []}
    for row in rows:
        if row["MeSH"].strip().lower() == "no indexing":
            skipped["no_indexing"].append(row["uid"])
        elif not _text(row):
            skipped["empty_text"].append(row["uid"])
        else:
            uids.append(row["uid"])
            predicted.append(label_report(_text(row)))
            reference.append(mesh_labels(row["MeSH"]))
    result = clinical_efficacy(predicted, reference, uncertain=uncertain)
    disagreements = {
        obs: [uid for uid, p, r in zip(uids, predicted, reference)
              if None not in (binarize(p[obs], uncertain), binarize(r[obs], uncertain))
              and binarize(p[obs], uncertain) != binarize(r[obs], uncertain)]
        for obs in OBSERVATIONS
    }
    return {"csv": str(csv_path), "n_reports": len(uids), "skipped": skipped, **result,
            "disagreements": {o: u for o, u in disagreements.items() if u}}


def format_summary(result: Dict[str, object]) -> str:
    lines = [f"{'observation':28s} {'agree':>6s} {'F1':>6s} {'tp':>3s} {'fp':>3s} {'fn':>3s} {'tn':>3s}"]
    for obs, s in result["per_observation"].items():
        f1 = "  n/a" if s["f1"] is None else f"{s['f1']:.3f}"
        lines.append(f"{obs:28s} {s['agreement']:6.3f} {f1:>6s} {s['tp']:3d} {s['fp']:3d} {s['fn']:3d} {s['tn']:3d}")
    macro, micro = result["macro"], result["micro"]
    lines.append(f"macro F1 {macro['f1']:.3f} over {len(result['macro_over'])} observations with positives; "
                 f"micro F1 {micro['f1']:.3f}; {result['n_reports']} reports (uncertain -> {result['uncertain']}); "
                 f"skipped {json.dumps(result['skipped'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("openi_dir", help="folder with indiana_reports.csv (the Kaggle OpenI layout)")
    parser.add_argument("--uncertain", choices=["positive", "negative", "ignore"], default="negative")
    parser.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    args = parser.parse_args(argv)
    try:
        result = validate_on_openi(args.openi_dir, uncertain=args.uncertain)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
