"""Phrase tables of the CheXpert-style labeler: what counts as a mention of each observation.

Our own lists, written from the CheXpert labeler's documented behaviour (Irvin et al. 2019: mention
phrases per observation, *unmention* phrases that veto a match, and a set of "other findings" whose
mention keeps a report from being "No Finding"). Every table is one precompiled regular expression
over the normalised (lower-case, single-spaced) report.

* ``MENTIONS``: a finding named outright ("cardiomegaly", "small left effusion"); its label then
  comes from the negation / uncertainty cues around it (``labeler_context``).
* ``UNMENTIONS``: spans that look like a mention but are not one for that observation ("pericardial
  effusion", "bony lesion", "surgical clips", "platelike atelectasis"); they are masked first.
* ``STRUCTURES``: the heart and mediastinum described by a predicate ("heart size is normal",
  "stable cardiomediastinal silhouette"); ``STRUCTURE_STATES`` map the predicate to a label.
* ``OTHER_FINDINGS``: abnormal findings outside the 14 observations (degenerative change, granuloma,
  emphysema, hiatal hernia...): when one is asserted, No Finding stays blank.
"""
from __future__ import annotations

import re
from typing import Dict, Pattern, Tuple


def rx(*alternatives: str) -> Pattern[str]:
    """One compiled alternation of the given regular expressions (none of which may match '')."""
    if not alternatives:
        raise ValueError("rx() needs at least one alternative")
    pattern = re.compile("|".join(f"(?:{a})" for a in alternatives))
    if pattern.match(""):
        raise ValueError(f"pattern matches the empty string: {pattern.pattern[:80]}")
    return pattern


_W = r"(?: [\w/-]+)"  # one more word inside a phrase

MENTIONS: Dict[str, Pattern[str]] = {
    "Enlarged Cardiomediastinum": rx(
        r"\b(?:widen\w*|enlarg\w*|prominen\w*) (?:of )?(?:the )?(?:superior |upper )?(?:cardio ?)?mediastin\w*",
        r"\bmediastinal (?:widening|enlargement|prominence)\b",
        r"\b(?:cardio ?)?mediastin\w*(?: \w+){0,2} (?:widen\w*|enlarg\w*)",
        r"\b(?:prominen\w*|enlarg\w*|full\w*) (?:of )?(?:the )?(?:bilateral |right |left )?hil(?:a|um|ar)\b"
        r"(?! (?:lymph|node|calcif))",
        r"\bhilar (?:prominence|enlargement|fullness)\b",
        r"\bmediastinal mass\b",
    ),
    "Cardiomegaly": rx(
        r"\bcardiomegaly\b",
        r"\b(?:enlarg\w*|large|increased) (?:of )?(?:the )?(?:heart|cardiac silhouette|cardiac size|cardiac shadow)\b",
        r"\bcardiac enlargement\b",
        r"\b(?:heart|cardiac silhouette) enlargement\b",
    ),
    "Lung Lesion": rx(
        r"\bnodul(?:e|es|ar|arity|arities)\b",
        r"\bmass(?:es|like)?\b",
        r"\blesions?\b",
        r"\btumou?rs?\b",
        r"\bneoplas\w*",
        r"\bcarcinoma\w*",
        r"\bmalignan\w*",
        r"\bmetasta\w*",
        r"\bblebs?\b|\bbullae\b|\bbulla\b|\bbullous\b",
    ),
    "Lung Opacity": rx(
        r"\bopaci(?:ty|ties|fication|fications|fied)\b",
        r"\binfiltrat\w*",
        r"\bair ?space (?:disease|process|abnormalit\w*|opacit\w*|filling)",
        r"\bdensit(?:y|ies)\b",
        r"\bground[- ]glass\b",
        r"\breticul\w*",
        r"\binterstitial (?:markings?|pattern|opacit\w*|thickening|changes?|disease|lung disease|process)",
        r"\bprominen\w* (?:of )?(?:the )?(?:\w+ )?interstitial markings\b",
        r"\bperibronchial (?:thickening|changes?|opacit\w*)",
        r"\bscar(?:s|ring|red)?\b",
        r"\bfibronodular\b",
        r"\bparenchymal (?:disease|abnormalit\w*|scar\w*)",
        r"\b(?:increased|coarse\w*|prominent) (?:lung |bronchovascular |pulmonary |interstitial )?markings\b",
    ),
    "Edema": rx(
        r"\bedema\b",
        r"\b(?:vascular|pulmonary|venous) (?:congestion|engorgement)\b",
        r"\bchf\b|\bcongestive heart failure\b|\bheart failure\b",
        r"\bfluid overload\b",
    ),
    "Consolidation": rx(r"\bconsolidat\w*"),
    "Pneumonia": rx(
        r"\b(?:broncho)?pneumoni\w*",
        r"\binfecti\w*",
    ),
    "Atelectasis": rx(
        r"\batelecta\w*",
        r"\b(?:lobar|lobe|lung) collapse\b",
        r"\bcollapse of the(?: \w+){0,3}? (?:lobe|lung)\b",
    ),
    "Pneumothorax": rx(r"\b\w*pneumothora\w*"),
    "Pleural Effusion": rx(
        r"\beffusions?\b",
        r"\bpleural fluid\b",
        r"\bhydrothorax\b",
    ),
    "Pleural Other": rx(
        r"\bpleural (?:thickening|plaques?|scar\w*|calcification\w*|opacit\w*|reaction|based opacit\w*)",
        r"\bcalcified pleura\w*",
        r"\bthickening of the pleura\b",
        r"\bfibrothorax\b",
        r"\bfibros[ie]s\b",
        r"\bpleuro-?parenchymal (?:scar\w*|thickening|opacit\w*)",
        r"\bpleural-parenchymal (?:scar\w*|thickening)",
    ),
    "Fracture": rx(r"\bfractur\w*"),
    "Support Devices": rx(
        r"\b(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|et|ng|og|enteric|nephrostomy|"
        r"gastrostomy|dobhoff|thoracostomy|drainage) tubes?\b",
        r"\btubes?\b",
        r"\btubing\b",
        r"\btracheostomy\b",
        r"\bcatheters?\b",
        r"\bpicc\b",
        r"\b(?:central|venous|arterial|jugular|subclavian|dialysis|hickman|ij|midline|picc)(?: venous)? lines?\b",
        r"\bport-?a-?cath\b|\bmediport\b|\bport\b",
        r"\bpace(?:maker|r)s?\b",
        r"\b(?:defibrillator|aicd|icd)s?\b",
        r"\b(?:pacemaker|pacer|icd|aicd|cardiac|epicardial|transvenous) (?:leads?|wires?|generator)\b",
        r"\bleads?\b(?= (?:terminat|project|overl|in|to)\w*)",
        r"\belectrodes?\b",
        r"\bhardware\b",
        r"\b(?:valve|valvular) prosthe\w*|\bprosthetic (?:\w+ )?valve\b",
        r"\bvalve replacement\b|\b(?:mitral|aortic|tricuspid) valve (?:prosthesis|repair)\b|\bannuloplasty\b",
        r"\bshunt\b(?! vascularity)",
        r"\bdrains?\b",
        r"\bdevices?\b",
        r"\b(?:screw|plate|rod) fixation\b|\bscrews?\b|\bfixation\b|\brods?\b",
        r"\b(?:ivc|vena cava) filter\b",
        r"\bcoils?\b",
        r"\bswan[- ]ganz\b",
        r"\bballoon pump\b|\biabp\b",
    ),
}

# Substrings that every match of an observation's patterns contains: a clause without any of them
# skips that observation's regular expressions (the labeler's main speed-up; a test checks it is exact).
TRIGGERS: Dict[str, Tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("mediastin", "hil"),
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac", "cardio"),
    "Lung Lesion": ("nodul", "mass", "lesion", "tumor", "tumour", "neoplas", "carcinoma", "malignan", "metasta",
                    "bleb", "bull"),
    "Lung Opacity": ("opaci", "infiltrat", "air", "densit", "glass", "reticul", "interstiti", "peribronchial", "scar",
                     "fibronodular", "parenchymal", "markings"),
    "Edema": ("edema", "congestion", "engorgement", "chf", "failure", "overload"),
    "Consolidation": ("consolidat",),
    "Pneumonia": ("pneumoni", "infecti"),
    "Atelectasis": ("atelecta", "collapse"),
    "Pneumothorax": ("pneumothora",),
    "Pleural Effusion": ("effusion", "pleural fluid", "hydrothorax"),
    "Pleural Other": ("pleur", "fibrothorax", "fibros"),
    "Fracture": ("fractur",),
    "Support Devices": ("tube", "tubing", "tracheostomy", "catheter", "picc", "line", "port", "pace", "defibrillator",
                        "icd", "lead", "electrode", "hardware", "prosthe", "valve", "annuloplasty", "shunt", "drain",
                        "device", "screw", "fixation", "rod", "filter", "coil", "swan", "balloon", "iabp"),
}
STRUCTURE_TRIGGERS: Dict[str, Tuple[str, ...]] = {
    "Cardiomegaly": ("heart", "cardiac", "cardio"),
    "Enlarged Cardiomediastinum": ("mediastin", "hilar contour"),
}

# Mentions that suggest the finding without stating it: uncertain even when asserted.
HEDGED_MENTIONS: Dict[str, Pattern[str]] = {
    "Edema": rx(r"congestion|engorgement"),
}

UNMENTIONS: Dict[str, Pattern[str]] = {
    "Enlarged Cardiomediastinum": rx(r"\bhilar (?:lymph|nodes?|calcifi\w*)"),
    "Cardiomegaly": rx(r"\benlarged (?:left |right )?(?:atrium|ventricle)\b"),
    "Lung Lesion": rx(
        r"\b(?:bony|bone|lytic|osseous|sclerotic|skin|rib|blastic|expansile|spine|spinal|vertebral|breast|soft tissue|"
        r"osteo\w*) lesions?\b",
        r"\blesions? (?:of|in|involving) the(?: \w+)? (?:rib|ribs|spine|vertebra\w*|clavicle|humer\w*|scapula)\b",
        r"\bnipple\w*(?: \w+){0,2}? (?:shadow|nodul\w*)",
        r"\bnodul\w* (?:shadows?|densit\w*)(?= \w* ?(?:consistent with|representing) nipple)",
        r"\bmass effect\b",
        r"\bsoft tissue mass\b",
        r"\bmassive\b",
        r"\bcystic duct\b",
        r"\bgranulom\w*",
    ),
    "Lung Opacity": rx(
        r"\bcalci\w*(?: \w+){0,2}? densit\w*",
        r"\b(?:bone|bony|osseous|soft tissue|breast|nipple|metallic|radiopaque|surgical|sclerotic|increased bone) "
        r"(?:\w+ )?(?:densit\w*|opacit\w*)",
        r"\b(?:densit\w*|opacit\w*) (?:of|in|over|overlying|projecting over) the (?:breasts?|soft tissue\w*|spine|"
        r"ribs?|bones?)\b",
        r"\bnodular densit\w*|\bmass(?:-| )?(?:like )?densit\w*|\bdensit\w* (?:mass|nodule)\b",
        r"\bpleural (?:\w+ )?(?:opacit\w*|densit\w*)",
        r"\bdense(?: \w+){0,2}? calcific\w*",
        r"\bbone densit\w*|\bdensit\w* of the (?:bones|spine)\b",
        r"\bmediastin\w* (?:opacit\w*|densit\w*)",
        r"\bscar(?:s|ring)? (?:from|of|related to) (?:prior |previous )?(?:surgery|sternotomy|thoracotomy)\b",
        r"\bpleural(?:-| )parenchymal scar\w*|\bpleuro-?parenchymal scar\w*|\bpleural scar\w*",
        r"\bapical (?:pleural )?(?:cap|capping)\b",
    ),
    "Edema": rx(r"\b(?:soft tissue|subcutaneous|extremity|pedal|leg|chest wall) edema\b"),
    "Pneumonia": rx(
        r"\b(?:old|prior|previous|remote|healed|granulomatous|tuberculous|chronic granulomatous) infecti\w*",
        r"\binfecti\w* (?:granulom\w*|calcifi\w*)",
        r"\bpost-?infecti\w*",
        r"\bsequela\w* of (?:\w+ )*?infecti\w*",
    ),
    "Pleural Effusion": rx(
        r"\b(?:pericardial|joint|knee|shoulder|subpulmonic pericardial) effusions?\b",
    ),
    "Support Devices": rx(
        r"\btuber\w*",
        r"\b(?:surgical|postsurgical|post-surgical|vascular|cholecystectomy|gallbladder|axillary|mediastinal|hilar|"
        r"sternotomy|metallic|aneurysm|clip)?(?: \w+)? ?clips?\b",
        r"\bstents?\b",
        r"\bstaples?\b",
        r"\bsternotomy wires?\b|\bsternal wires?\b|\bcerclage wires?\b|\bwires?\b",
        r"\bend ?plates?\b|\bplate-?like\b|\bplatelike\b",
        r"\b(?:lung|pleural|septal|kerley|b|mach|skin|skinfold|skin fold|azygoesophageal|paraspinal|"
        r"paratracheal|fissure|midline|junction) lines?\b",
        r"\bpleural line\b",
        r"\bdevice\w* (?:is|are)? ?not\b",
        r"\bports? of entry\b|\bportion\w*\b",
        r"\bshunt vascularity\b|\bleft-to-right shunt\b|\bleft to right shunt\b",
        r"\bdrain(?:age)? of\b",
        r"\b(?:pneumothorax|effusion|fluid) (?:drained|drainage)\b",
    ),
}

# The heart and mediastinum described by a predicate: "<structure> is <state>" or "<state> <structure>".
STRUCTURES: Dict[str, Pattern[str]] = {
    "Cardiomegaly": rx(
        r"(?<!behind the )(?<!to the )(?<!over the )(?<!overlying the )(?<!of the )(?<!near the )(?<!along the )"
        r"\bheart(?: size| silhouette| shadow| contours?| borders?)?\b(?! (?:failure|disease|valve|lead|xxxx))",
        r"\bcardiac (?:size|silhouette|shadow|contours?|borders?)\b",
        r"\bcardio ?mediastinal (?:silhouette|contours?|size)\b(?= (?:is |are )?(?:\w+ )?(?:enlarg|large))",
    ),
    "Enlarged Cardiomediastinum": rx(
        r"\bcardio ?mediastin\w*(?: silhouettes?| contours?| size| width| shadow)?\b",
        r"\bmediastin(?:um|al)(?: silhouettes?| contours?| size| width| shadow)?\b(?! (?:clips?|surgery|lymph|"
        r"nodes?|calcif\w*|wires?|drain|shift))",
        r"\bhilar contours?\b",
    ),
}

# A structure's state, from the words around it; the first cue found (in this order) decides.
STRUCTURE_STATES: Tuple[Tuple[int, Pattern[str]], ...] = (
    (0, rx(r"\bnot (?:\w+ )?(?:enlarged|widened|large|prominent)\b", r"\bno (?:\w+ )?(?:enlargement|widening)\b")),
    (-1, rx(
        r"\bborderline\b", r"\b(?:upper|top|high)(?:-| )(?:limits? )?(?:of )?normal\b", r"\btop normal\b",
        r"\bnear (?:the )?(?:top|upper)\b", r"\bat the upper\b", r"\bmildly prominent\b|\bslightly prominent\b",
        r"\b(?:may|might|could) be (?:mildly |slightly )?(?:enlarged|widened)\b", r"\bpossibl[ey] (?:enlarged|widened)\b",
    )),
    (1, rx(
        r"\b(?:enlarg\w*|large|increased|widen\w*|prominen\w*|cardiomegaly|accentuated|magnified)\b",
    )),
    (0, rx(
        r"\bnormal\b", r"\bunremarkable\b", r"\bwithin (?:the )?normal\b", r"\bwithin (?:\w+ )?limits\b",
        r"\bnot (?:\w+ )?(?:enlarged|widened)\b", r"\bmaintained\b", r"\bsatisfactory\b",
        r"\bnormal(?:ly)? (?:sized?|configured)\b", r"\bno (?:acute )?abnormalit\w*", r"\bwnl\b", r"\bclear\b",
        r"\bnegative\b",
    )),
    (-1, rx(r"\bstable\b", r"\bunchanged\b", r"\bsimilar\b", r"\bagain\b", r"\bas before\b", r"\bpersistent\b",
            r"\bno (?:significant |interval )*change\b", r"\bremains?\b")),
)

# Abnormal findings outside the 14 observations: asserted, they keep the report from "No Finding".
OTHER_FINDINGS: Pattern[str] = rx(
    r"\bdegenerat\w*", r"\bspondylo\w*", r"\bosteophyt\w*",
    r"\bscolio\w*", r"\bkyphos\w*|\bkyphotic\b", r"\bdextro(?:scoliosis|convex\w*)",
    r"\bdeformit\w*", r"\bwedg\w*", r"\bcompression\b", r"\bretrolisthesis\b", r"\bosteopen\w*",
    r"\bdemineraliz\w*", r"\bosteopor\w*",
    r"\bgranulom\w*", r"\bcalcifi\w*", r"\bcalcific\b",
    r"\bemphysem\w*", r"\bcopd\b", r"\bchronic obstructive\b", r"\bobstructive (?:pulmonary|lung|airway)",
    r"\bhyperinflat\w*", r"\bhyperexpan\w*", r"\boverinflat\w*", r"\boverexpan\w*", r"\bhyperaera\w*",
    r"\bflatten\w*", r"\bbullae\b|\bbullous\b",
    r"\bhernia\w*", r"\beventration\b", r"\belevat\w* (?:of )?(?:the )?(?:\w+ )?(?:hemi)?diaphragm\w*",
    r"\b(?:hemi)?diaphragm\w* (?:is |are )?elevat\w*",
    r"\baneurysm\w*", r"\batherosclero\w*",
    r"\bbronchiectasis\b", r"\bbronchitis\b|\bbronchitic\b", r"\bbronchiolitis\b", r"\bairways? disease\b",
    r"\basthma\b", r"\bbronchospasm\b", r"\breactive airway\b", r"\bbronchial (?:wall )?thickening\b",
    r"\binflammat\w*", r"\baspiration\b", r"\bcephaliz\w*", r"\bblunt\w*", r"\bthicken\w*",
    r"\bplaques?\b", r"\bpectus\b", r"\bvolume loss\b",
    r"\bpneumoperitoneum\b", r"\bfree air\b", r"\bsubcutaneous (?:air|emphysema)\b", r"\bair-fluid\b",
    r"\btuberculo\w*", r"\bhistoplasm\w*", r"\bsarcoid\w*",
    r"\bpulmonary (?:arterial )?hypertension\b",
    r"\bdislocat\w*", r"\blytic\b", r"\bexpansile\b", r"\bmyeloma\b",
)
