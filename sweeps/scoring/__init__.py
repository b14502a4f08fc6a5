"""Safety and utility scoring shared by sweeps and landscapes."""

from sweeps.scoring.judges import JUDGES, Judge, KeywordJudge
from sweeps.scoring.keywords import GCG_KEYWORDS, KEYWORD_LISTS, is_refusal
from sweeps.scoring.scorer import METRICS, EvalSets, Scorer, ScoreResult

__all__ = [
    "GCG_KEYWORDS", "JUDGES", "KEYWORD_LISTS", "METRICS", "EvalSets", "Judge", "KeywordJudge", "ScoreResult", "Scorer",
    "is_refusal",
]  # fmt: skip
