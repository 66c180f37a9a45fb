"""The evaluation figure (``clinical_efficacy.png``): what a reader checks first about clinical accuracy.

Left: F1 per CheXpert observation with its 95% bootstrap interval as whiskers (observations no report
mentions positively on either side are left out and named in the caption). Right: for each observation,
how the generated report's label relates to the reference's, as a stacked bar of the reports where the
reference says *positive*, *negative* or *uncertain*: agreed, or said something else (blank included).
matplotlib runs with the Agg backend (no display needed).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from xraygpt.evaluation.chexpert_labeler import OBSERVATIONS, Label

_STATES = (("positive", 1), ("negative", 0), ("uncertain", -1))


def agreement_counts(pred_labels: Sequence[Mapping[str, Label]], ref_labels: Sequence[Mapping[str, Label]],
                     observations: Sequence[str] = OBSERVATIONS) -> Dict[str, Dict[str, int]]:
    """``{reference state: {"agree": n, "differ": n}}`` pooled over observations (blank references skipped)."""
    counts = {name: {"agree": 0, "differ": 0} for name, _ in _STATES}
    for pred, ref in zip(pred_labels, ref_labels):
        for obs in observations:
            r = ref.get(obs)
            for name, value in _STATES:
                if r == value:
                    counts[name]["agree" if pred.get(obs) == value else "differ"] += 1
    return counts


def plot_clinical_efficacy(path: Path, per_observation_f1: Mapping[str, Optional[float]],
                           intervals: Mapping[str, Mapping[str, Optional[float]]],
                           agreement: Mapping[str, Mapping[str, int]], title: str = "") -> Path:
    """Write the two-panel PNG to ``path`` (atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xraygpt.common.fileio import atomic_write_with

    shown: List[str] = [o for o in OBSERVATIONS if per_observation_f1.get(o) is not None]
    left_out = [o for o in OBSERVATIONS if o not in shown]
    fig, (ax_f1, ax_agree) = plt.subplots(1, 2, figsize=(12, 6.4), gridspec_kw={"width_ratios": [2, 1]})

    values = [per_observation_f1[o] for o in shown]
    lows = [intervals.get(o, {}).get("low") for o in shown]
    highs = [intervals.get(o, {}).get("high") for o in shown]
    err = [[v - lo if lo is not None else 0 for v, lo in zip(values, lows)],
           [hi - v if hi is not None else 0 for v, hi in zip(values, highs)]]
    y = list(range(len(shown)))[::-1]
    ax_f1.barh(y, values, color="#4C72B0", height=0.6)
    ax_f1.errorbar(values, y, xerr=err, fmt="none", ecolor="black", elinewidth=1.2, capsize=4)
    for yi, v, hi in zip(y, values, highs):
        ax_f1.text(max(v, hi if hi is not None else v) + 0.015, yi, f"{v:.2f}", va="center", fontsize=9)
    ax_f1.set_yticks(y, shown, fontsize=10)
    ax_f1.set_xlim(0, 1.12)
    ax_f1.set_xlabel("F1 of the positive class (whiskers: 95% bootstrap CI)", fontsize=10)
    ax_f1.set_title("Per-observation F1: generated vs reference labels", fontsize=11)
    ax_f1.grid(axis="x", alpha=0.3)

    names = [name for name, _ in _STATES]
    agree = [agreement[n]["agree"] for n in names]
    differ = [agreement[n]["differ"] for n in names]
    x = list(range(len(names)))
    ax_agree.bar(x, agree, color="#55A868", width=0.6, label="generated report agrees")
    ax_agree.bar(x, differ, bottom=agree, color="#C44E52", width=0.6, label="says otherwise or nothing")
    for xi, a, d in zip(x, agree, differ):
        if a + d:
            ax_agree.text(xi, a + d, f"{a / (a + d):.0%}\nof {a + d}", ha="center", va="bottom", fontsize=9)
    ax_agree.set_xticks(x, names, fontsize=10)
    ax_agree.set_xlabel("label in the reference report", fontsize=10)
    ax_agree.set_ylabel("labels (all reports x observations)", fontsize=10)
    ax_agree.set_title("Agreement by reference label", fontsize=11)
    ax_agree.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    ax_agree.margins(y=0.2)
    if title:
        fig.suptitle(title, fontsize=12)
    if left_out:
        note = "Not shown (no positive label on either side): " + ", ".join(left_out)
        fig.text(0.01, 0.01, textwrap.fill(note, 150), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = Path(path)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_result(path: Path, result: Mapping[str, object], title: str = "") -> Path:
    """The figure of one ``score_reports`` result (per-sample labels, per-observation F1 and their CIs)."""
    ce = result["report"]["clinical_efficacy"]
    f1 = {o: s["f1"] for o, s in ce["per_observation"].items()}
    cis = (result.get("confidence_intervals") or {}).get("metrics", {})
    intervals = {o: cis.get(f"CE_f1/{o}", {}) for o in f1}
    rows = [s for s in result["per_sample"] if s.get("kind") == "report"]
    agreement = agreement_counts([s.get("labels_pred", {}) for s in rows], [s.get("labels_ref", {}) for s in rows])
    caption = f"{len(rows)} reports, uncertain -> {ce['uncertain']}"
    return plot_clinical_efficacy(path, f1, intervals, agreement, title=f"{title}  ({caption})" if title else caption)
