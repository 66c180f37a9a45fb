"""Natural-language report metrics the way the report-generation literature computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr come straight from ``pycocoevalcap`` (the COCO caption
toolkit every R2Gen-style paper uses), after its Stanford PTB tokenizer (lower-case, punctuation
removed). Two pieces of that toolkit run in Java (the PTB tokenizer and METEOR 1.5).

Semantics worth knowing when reading the numbers:

* BLEU is *corpus* BLEU (clipped n-gram counts and lengths summed over all samples, brevity
  penalty against the closest reference length); the per-sample values are sentence BLEU.
* ROUGE-L is the mean over samples of the LCS F-score with beta = 1.2.
* CIDEr is pycocoevalcap's CIDEr-D: n-gram weights use document frequencies of the *reference
  corpus being scored*, a Gaussian length penalty (sigma 6) and clipping, times 10. It is
  therefore only meaningful over a corpus: with a single sample every n-gram has idf log(1/1) = 0,
  so CIDEr is 0 by construction. It also depends on which other samples are scored together.
* METEOR is METEOR 1.5 (``-l en -norm``), including its paraphrase table (slow to start, ~30 s).

Without Java, ``java="auto"`` falls back to a regex tokenizer close to PTB and skips METEOR;
the result says so in ``tokenizer`` and ``notes``. ``java="require"`` raises instead.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Union
from xraygpt.common.errors import XrayGPTError

logger = logging.getLogger(__name__)

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
REPORT_METRIC_KEYS = BLEU_KEYS + ("METEOR", "ROUGE-L", "CIDEr")

# The punctuation tokens pycocoevalcap's PTB wrapper drops after tokenizing.
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--",
                    "...", ";"}
_FALLBACK_TOKEN = re.compile(r"[a-z0-9]+(?:[.\-'/][a-z0-9]+)*|n't|'[a-z]+|[^\sa-z0-9]")

References = Union[Sequence[str], Sequence[Sequence[str]]]
JavaMode = Literal["auto", "require", "off"]


class JavaNotFoundError(XrayGPTError, RuntimeError):
    """METEOR and the PTB tokenizer need a Java runtime on PATH."""


@dataclass
class ReportMetrics:
    """Corpus scores, per-sample scores (same order as the inputs) and how they were made."""

    corpus: Dict[str, Optional[float]]
    per_sample: Dict[str, List[float]]
    tokenizer: str
    notes: List[str] = field(default_factory=list)
    # The tokenised texts the scorers saw ({i: [text]}), for per-sample statistics (bootstrap, compare).
    tokenized_references: Dict[int, List[str]] = field(default_factory=dict)
    tokenized_predictions: Dict[int, List[str]] = field(default_factory=dict)


def java_available() -> bool:
    return shutil.which("java") is not None


def _clean(text: str) -> str:
    """One line, no METEOR field separator: both would corrupt the Java tools' line protocols."""
    return " ".join(str(text).replace("|||", " ").split())


def _as_reference_lists(references: References, n: int) -> List[List[str]]:
    if len(references) != n:
        raise ValueError(f"got {n} predictions but {len(references)} references; they must pair up one to one")
    lists = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, refs in enumerate(lists):
        if not refs:
            raise ValueError(f"sample {i} has no reference text")
    return lists


def fallback_tokenize(text: str) -> str:
    """Lower-case, split close to the PTB tokenizer and drop the same punctuation tokens."""
    tokens = _FALLBACK_TOKEN.findall(text.lower())
    return " ".join(t for t in tokens if t not in _PTB_PUNCTUATION)


def _ptb_tokenize_lines(lines: List[str]) -> List[str]:
    """pycocoevalcap's PTB tokenization (its jar, flags and punctuation list), run by us.

    Its own wrapper writes a temporary file *inside site-packages* (fails on a read-only install) and
    pairs output lines with inputs by position without checking; here the file goes to the temp dir
    and a line-count mismatch is an error instead of silently shifted scores.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    if not lines:
        return []
    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    try:
        completed = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
             handle.name],
            capture_output=True, check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"PTB tokenizer (java -cp {jar}) failed: {exc.stderr.decode(errors='replace')[-500:]}") from exc
    finally:
        os.remove(handle.name)
    out = completed.stdout.decode("utf-8").split("\n")[: len(lines)]
    if len(out) != len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} inputs")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in out]


def _ptb_tokenize(texts: Dict[int, List[str]]) -> Dict[int, List[str]]:
    # Blank lines would vanish in the tokenizer's output: tokenize non-empty texts, keep empty ones empty.
    keys = [(k, j) for k, ts in texts.items() for j, t in enumerate(ts) if t]
    tokenized = dict(zip(keys, _ptb_tokenize_lines([texts[k][j] for k, j in keys])))
    return {k: [tokenized.get((k, j), "") for j in range(len(ts))] for k, ts in texts.items()}


def compute_report_metrics(
    predictions: Sequence[str],
    references: References,
    java: JavaMode = "auto",
    meteor: bool = True,
) -> ReportMetrics:
    """Score generated reports against references (one string or a list of strings per sample).

    ``meteor=False`` skips METEOR (its Java start-up costs ~30 s, too slow for per-epoch validation).
    """
    if java not in ("auto", "require", "off"):
        raise ValueError(f"java must be 'auto', 'require' or 'off', got {java!r}")
    if not predictions:
        raise ValueError("no predictions to score")
    refs = _as_reference_lists(references, len(predictions))
    gts = {i: [_clean(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [_clean(p)] for i, p in enumerate(predictions)}

    notes: List[str] = []
    use_java = java != "off" and java_available()
    if java == "require" and not use_java:
        raise JavaNotFoundError(
            "METEOR and the PTB tokenizer need Java, but no 'java' is on PATH: install a JRE "
            "(e.g. apt-get install default-jre-headless) or score with java='auto'/'off' (no METEOR)"
        )
    if use_java:
        tokenizer = "ptb"
        gts, res = _ptb_tokenize(gts), _ptb_tokenize(res)
    else:
        tokenizer = "regex-fallback"
        reason = "disabled" if java == "off" else "not found on PATH"
        notes.append(f"Java {reason}: regex tokenizer instead of PTB, METEOR not computed")
        if java == "auto":
            logger.warning("Java not found: using a regex tokenizer instead of PTB and skipping METEOR")
        gts = {k: [fallback_tokenize(t) for t in ts] for k, ts in gts.items()}
        res = {k: [fallback_tokenize(t) for t in ts] for k, ts in res.items()}
    if len(predictions) == 1:
        notes.append("CIDEr is 0 for a single sample: its idf weights come from the scored reference corpus")

    corpus: Dict[str, Optional[float]] = {}
    per_sample: Dict[str, List[float]] = {}
    _score_bleu_rouge_cider(gts, res, corpus, per_sample)
    corpus["METEOR"] = None
    if use_java and meteor:
        corpus["METEOR"], per_sample["METEOR"] = _meteor(gts, res)
    elif use_java:
        notes.append("METEOR skipped (meteor=False)")
    ordered = {key: corpus[key] for key in REPORT_METRIC_KEYS}
    return ReportMetrics(corpus=ordered, per_sample=per_sample, tokenizer=tokenizer, notes=notes,
                         tokenized_references=gts, tokenized_predictions=res)


def _score_bleu_rouge_cider(gts, res, corpus: dict, per_sample: dict) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for key, value, each in zip(BLEU_KEYS, bleu, bleu_each):
        corpus[key], per_sample[key] = float(value), [float(v) for v in each]
    rouge, rouge_each = Rouge().compute_score(gts, res)
    corpus["ROUGE-L"], per_sample["ROUGE-L"] = float(rouge), [float(v) for v in rouge_each]
    cider, cider_each = Cider().compute_score(gts, res)
    corpus["CIDEr"], per_sample["CIDEr"] = float(cider), [float(v) for v in cider_each]


def _meteor(gts, res) -> tuple[float, List[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, each = scorer.compute_score(gts, res)
    finally:
        # Stop the JVM now rather than whenever Meteor.__del__ runs (repeating that is harmless).
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        if scorer.lock.locked():  # an exception inside compute_score left it held; __del__ would hang
            scorer.lock.release()
    return float(score), [float(v) for v in each]
