"""Optional learned report metrics (CheXbert F1, RadGraph F1), only from model files already on disk.

Each metric needs two things: a scorer package that is importable (``f1chexbert`` or ``RadEval`` for
CheXbert; ``RadEval`` or ``radgraph`` for RadGraph) and the model file it loads, at the path the
evaluation config names (``evaluation.chexbert_path``, ``evaluation.radgraph_path``). Nothing is ever
fetched: the scorers run with ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``, and when a piece is
missing the metric is left out with one note naming the missing file (or package) and the key.
The packages read their weights through the Hugging Face cache; the configured path is checked to exist
(the file you placed there, e.g. ``chexbert.pth``) and a scorer that cannot find its weights offline
reports its error in one note rather than downloading.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

Scores = Dict[str, float]


@contextmanager
def _offline() -> Iterator[None]:
    """No hub access while a scorer runs: a scorer that wants a file it does not have fails instead of fetching."""
    keys = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _f1chexbert(module: Any, path: Path, hyps: List[str], refs: List[str]) -> Scores:
    scorer = module.F1CheXbert(device="cpu")
    _, _, report_14, report_5 = scorer(hyps=hyps, refs=refs)
    return {"CheXbert_F1_micro14": float(report_14["micro avg"]["f1-score"]),
            "CheXbert_F1_micro5": float(report_5["micro avg"]["f1-score"])}


def _radeval(flag: str, pick: Callable[[Mapping[str, Any]], Scores]) -> Callable[..., Scores]:
    def run(module: Any, path: Path, hyps: List[str], refs: List[str]) -> Scores:
        return pick(module.RadEval(**{flag: True})(refs=refs, hyps=hyps))
    return run


def _radeval_chexbert(results: Mapping[str, Any]) -> Scores:
    micro5 = [v for k, v in results.items() if "chexbert" in k.lower() and "5" in k and "micro" in k.lower()]
    if not micro5:
        raise KeyError(f"no CheXbert-5 micro F1 among RadEval's keys {sorted(results)}")
    return {"CheXbert_F1_micro5": float(micro5[0])}


def _radeval_radgraph(results: Mapping[str, Any]) -> Scores:
    return {"RadGraph_F1": float(results["radgraph_partial"])}


def _radgraph(module: Any, path: Path, hyps: List[str], refs: List[str]) -> Scores:
    score = module.F1RadGraph(reward_level="partial")(hyps=hyps, refs=refs)
    return {"RadGraph_F1": float(score[0] if isinstance(score, (tuple, list)) else score)}


@dataclass(frozen=True)
class LearnedMetric:
    name: str
    key: str  # under the config's ``evaluation:`` section
    scorers: Tuple[Tuple[str, Callable[..., Scores]], ...]  # (importable module, adapter), first found wins


LEARNED_METRICS: Tuple[LearnedMetric, ...] = (
    LearnedMetric("CheXbert F1", "chexbert_path",
                  (("f1chexbert", _f1chexbert), ("RadEval", _radeval("do_chexbert", _radeval_chexbert)))),
    LearnedMetric("RadGraph F1", "radgraph_path",
                  (("RadEval", _radeval("do_radgraph", _radeval_radgraph)), ("radgraph", _radgraph))),
)


def _importable(name: str) -> Optional[Any]:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def learned_scores(predictions: Sequence[str], references: Sequence[str],
                   settings: Optional[Mapping[str, Any]]) -> Tuple[Scores, List[str]]:
    """``(scores, notes)``: the learned metrics that could run, and one line for each that could not."""
    settings = settings or {}
    scores: Scores = {}
    notes: List[str] = []
    for metric in LEARNED_METRICS:
        configured = settings.get(metric.key)
        if not configured:
            notes.append(f"{metric.name} not computed: set evaluation.{metric.key} to the local model file "
                         f"(nothing is downloaded)")
            continue
        path = Path(str(configured)).expanduser()
        if not path.exists():
            notes.append(f"{metric.name} not computed: model file {path} not found "
                         f"(evaluation.{metric.key} points to it)")
            continue
        found = [(name, adapter, module) for name, adapter in metric.scorers if (module := _importable(name))]
        if not found:
            packages = " or ".join(name for name, _ in metric.scorers)
            notes.append(f"{metric.name} not computed: needs the {packages} package, which is not installed")
            continue
        name, adapter, module = found[0]
        try:
            with _offline():
                scores.update(adapter(module, path, list(predictions), list(references)))
        except Exception as exc:  # a third-party scorer failing must not lose the rest of the evaluation
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            notes.append(f"{metric.name} not computed: {name} failed with {type(exc).__name__}: {first_line[:200]} "
                         f"(model file {path}, evaluation.{metric.key})")
    return scores, notes
