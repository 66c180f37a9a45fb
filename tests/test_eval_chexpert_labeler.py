"""CheXpert-style labeler: mentions, negation, uncertainty, OpenI quirks, No Finding rule."""
from __future__ import annotations

import pytest

from xraygpt.evaluation.chexpert_labeler import (
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    find_mentions,
    label_report,
    label_reports,
)

CASES = [
    # (report, {observation: expected label}); unlisted observations are not checked.
    ("No pleural effusion.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
    ("Possible consolidation.", {"Consolidation": UNCERTAIN, "No Finding": None}),
    ("There is a small right pleural effusion.", {"Pleural Effusion": POSITIVE, "No Finding": None}),
    ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": NEGATIVE}),
    ("The heart is enlarged.", {"Cardiomegaly": POSITIVE}),
    ("Heart size is normal. Mediastinal contour within normal limits.",
     {"Cardiomegaly": NEGATIVE, "Enlarged Cardiomediastinum": NEGATIVE, "No Finding": POSITIVE}),
    ("The cardiac silhouette is not enlarged.", {"Cardiomegaly": NEGATIVE}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": UNCERTAIN}),
    ("Atelectasis versus scar left lung base.", {"Atelectasis": UNCERTAIN}),
    ("Opacities may represent atelectasis.", {"Lung Opacity": POSITIVE, "Atelectasis": UNCERTAIN}),
    ("No focal consolidation, suspicious pulmonary opacity, pleural effusion, or pneumothorax.",
     {"Consolidation": NEGATIVE, "Lung Opacity": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
    ("No pneumothorax, but there is a left pleural effusion.",
     {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
    ("No interval change in cardiomegaly.", {"Cardiomegaly": POSITIVE}),
    ("Pneumothorax has resolved.", {"Pneumothorax": NEGATIVE}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
    ("Cannot exclude pneumonia.", {"Pneumonia": UNCERTAIN}),
    ("No focal consolidation to suggest pneumonia.", {"Pneumonia": NEGATIVE, "Consolidation": NEGATIVE}),
    ("Findings suggestive of pulmonary edema.", {"Edema": UNCERTAIN}),
    ("Likely right lower lobe pneumonia.", {"Pneumonia": UNCERTAIN}),
    ("Opacity consistent with pneumonia.", {"Pneumonia": POSITIVE, "Lung Opacity": POSITIVE}),
    ("Lungs are free of focal airspace disease.", {"Lung Opacity": NEGATIVE}),
    ("The lungs are grossly clear of pneumothorax.", {"Pneumothorax": NEGATIVE}),
    ("Negative for pneumothorax.", {"Pneumothorax": NEGATIVE}),
    ("Without evidence of fracture.", {"Fracture": NEGATIVE}),
    ("Acute fracture of the left 5th rib.", {"Fracture": POSITIVE, "No Finding": None}),
    ("The lateral most screw is fractured.", {"Fracture": None, "Support Devices": POSITIVE, "No Finding": POSITIVE}),
    ("Plate-like atelectasis at the left base.", {"Atelectasis": POSITIVE, "Support Devices": None}),
    ("Left PICC tip in the lower SVC.", {"Support Devices": POSITIVE, "No Finding": POSITIVE}),
    ("Heart size borderline enlarged for technique, tracheostomy tube tip 4.7 cm above the carina.",
     {"Cardiomegaly": UNCERTAIN, "Support Devices": POSITIVE}),
    ("Small pericardial effusion.", {"Pleural Effusion": None}),
    ("Calcified pleural plaque on the right.", {"Pleural Other": POSITIVE, "Lung Opacity": None}),
    ("2 cm nodule in the left lower lobe.", {"Lung Lesion": POSITIVE}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": POSITIVE}),
    ("Moderate bilateral interstitial edema.", {"Edema": POSITIVE}),
    ("Right apical pneumothorax.", {"Pneumothorax": POSITIVE}),
    ("Heart is slightly large.", {"Cardiomegaly": POSITIVE}),
    ("Consolidation and atelectasis in the left lower lobe have cleared.",
     {"Consolidation": NEGATIVE, "Atelectasis": NEGATIVE}),
    ("Without significant interval change of mild atelectasis of the left base.", {"Atelectasis": POSITIVE}),
    ("Status post aortic valve replacement.", {"Support Devices": POSITIVE}),
]


@pytest.mark.parametrize("report,expected", CASES, ids=[c[0][:50] for c in CASES])
def test_labels(report, expected):
    labels = label_report(report)
    assert {obs: labels[obs] for obs in expected} == expected


def test_openi_normal_study():
    labels = label_report("Normal chest x-XXXX.")
    assert labels["No Finding"] == POSITIVE
    assert all(labels[o] is None for o in OBSERVATIONS if o != "No Finding")


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_report_is_all_blank(empty):
    assert all(v is None for v in label_report(empty).values())


def test_every_observation_is_reported_in_order():
    assert list(label_report("No acute disease.")) == list(OBSERVATIONS)
    assert len(OBSERVATIONS) == 14


def test_positive_beats_uncertain_beats_negative_across_sentences():
    assert label_report("No effusion on the left. Small right pleural effusion.")["Pleural Effusion"] == POSITIVE
    assert label_report("No effusion on the left. Possible small right effusion.")["Pleural Effusion"] == UNCERTAIN


def test_mentions_carry_text_and_clause():
    mentions = find_mentions("No pneumothorax, but there is a left pleural effusion.")
    by_obs = {m.observation: m for m in mentions}
    assert by_obs["Pneumothorax"].text == "pneumothorax" and by_obs["Pneumothorax"].label == NEGATIVE
    assert by_obs["Pleural Effusion"].text == "effusion" and "left pleural effusion" in by_obs["Pleural Effusion"].clause


def test_label_reports_is_elementwise():
    assert label_reports(["Cardiomegaly.", "No cardiomegaly."]) == [
        label_report("Cardiomegaly."), label_report("No cardiomegaly.")
    ]


# Issue 13: the CheXpert labeler's documented conventions (each case is one rule, not a dev-set report).
CHEXPERT_CONVENTIONS = [
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": UNCERTAIN, "No Finding": None}),
    ("Heart size is stable.", {"Cardiomegaly": UNCERTAIN}),
    ("Heart size is upper limits of normal.", {"Cardiomegaly": UNCERTAIN}),
    ("Heart size within normal limits.", {"Cardiomegaly": NEGATIVE, "No Finding": POSITIVE}),  # CheXpert: 1
    ("Unremarkable mediastinal contour.", {"Enlarged Cardiomediastinum": NEGATIVE}),  # CheXpert: 1
    ("Mild degenerative changes of the thoracic spine.", {"No Finding": None}),
    ("Calcified granuloma in the right upper lobe.", {"No Finding": None, "Lung Lesion": None}),
    ("Hyperinflated lungs compatible with emphysema.", {"No Finding": None}),
    ("No degenerative change.", {"No Finding": POSITIVE}),
    ("Surgical clips in the right axilla.", {"Support Devices": None, "No Finding": POSITIVE}),
    ("Coronary artery stent.", {"Support Devices": None}),
    ("Multiple endplate osteophytes.", {"Support Devices": None}),
    ("Minimal platelike atelectasis left base.", {"Support Devices": None, "Atelectasis": POSITIVE}),
    ("Right upper lobe scarring.", {"Lung Opacity": POSITIVE}),
    ("Coarse interstitial markings.", {"Lung Opacity": POSITIVE}),
    ("Calcific density projecting over the right upper lung.", {"Lung Opacity": None}),
    ("Interval clearing of the bibasilar opacities.", {"Lung Opacity": NEGATIVE}),
    ("Indistinct vascular margination may be secondary to crowding, infiltrates or edema.",
     {"Lung Opacity": UNCERTAIN, "Edema": UNCERTAIN}),
    ("Bibasilar atelectasis or scarring.", {"Atelectasis": UNCERTAIN, "Lung Opacity": UNCERTAIN}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": None, "No Finding": None}),
    ("Right lower lobe infiltrate concerning for infection.", {"Pneumonia": UNCERTAIN}),
    ("No evidence of active infection.", {"Pneumonia": NEGATIVE}),
    ("Calcified granulomas compatible with old granulomatous infection.", {"Pneumonia": None}),
    ("Mild pulmonary vascular congestion.", {"Edema": UNCERTAIN}),
    ("Question of this could be developing or resolving pneumonia.", {"Pneumonia": UNCERTAIN}),
]


@pytest.mark.parametrize("report,expected", CHEXPERT_CONVENTIONS, ids=[c[0][:50] for c in CHEXPERT_CONVENTIONS])
def test_chexpert_conventions(report, expected):
    labels = label_report(report)
    assert {obs: labels[obs] for obs in expected} == expected
