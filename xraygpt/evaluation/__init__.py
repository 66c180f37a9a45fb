"""Scoring of generated reports and VQA answers (NLG metrics, CheXpert-style clinical efficacy, VQA).

Heavy or Java-backed pieces (pycocoevalcap) are imported inside the functions that use them, so
importing this package is cheap and works without the ``eval`` extra installed.
"""
from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS, label_report, label_reports
from xraygpt.evaluation.clinical_efficacy import clinical_efficacy
from xraygpt.evaluation.report_metrics import compute_report_metrics
from xraygpt.evaluation.scoring import format_summary, score_reports
from xraygpt.evaluation.vqa_metrics import score_vqa

__all__ = [
    "OBSERVATIONS",
    "clinical_efficacy",
    "compute_report_metrics",
    "format_summary",
    "label_report",
    "label_reports",
    "score_reports",
    "score_vqa",
]
