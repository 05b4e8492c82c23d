"""The published write-up's conclusions as testable claims, each with the study's own evidence and a verdict.

Three numbers speak to a claim about a part, each with its 95 % interval:

* the marginal contrast as the write-up computed it: mean loss of the runs
  with the part minus that of the runs without it (Welch interval). The grid
  is not a full factorial (no cell lacks both new and old state; narrow cells
  only with the residual), so this compares unlike sets of designs and can
  show an effect a part does not have;
* the matched contrast: over every pair of designs that differ in this part
  alone, the mean of (with − without) (t-interval over the pairs). It uses only
  the part of the grid where the part can be either, so the holes cannot
  confound it;
* the regression effect of the switch (HC3 interval; rnnsweep.effects).

A verdict (supported, contradicted, not shown) is given by the claim's rule
applied to the matched contrast and to the regression effect: where the two
agree, that is the verdict; where they disagree, the study cannot tell, and
the page says so. Each verdict names its rule, so that a reader can disagree
with the rule rather than the arithmetic. Margins are in the loss's own unit
(nats per byte for `min_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from rnnsweep.aggregate import SummaryError
from rnnsweep.design import SWITCHES
from rnnsweep.effects import contrast, effects
from rnnsweep.stats import usable_runs
from rnnsweep.sweeps import swept_keys

#: A difference smaller than this is no help: the seed-to-seed spread of a design's loss in the published
#: study (0.01–0.03 nats), so a part that moves the loss less than one seed does is not worth its parameters.
MARGIN = 0.02
#: "Strongly": at least five times that margin.
STRONG = 0.1
SUPPORTED, CONTRADICTED, NOT_SHOWN = "supported", "contradicted", "not shown"
DESIGN_COLUMNS = (*SWITCHES, "n_layers", "state_size")


@dataclass(frozen=True)
class Rule:
    """How an interval [low, high] of a difference decides a verdict; `text` says it in words."""

    text: str
    supported: Callable[[float, float], bool]
    contradicted: Callable[[float, float], bool]

    def verdict(self, low: float, high: float) -> str:
        if not (np.isfinite(low) and np.isfinite(high)):
            return NOT_SHOWN
        if self.supported(low, high):
            return SUPPORTED
        return CONTRADICTED if self.contradicted(low, high) else NOT_SHOWN


LOWERS = Rule("supported if the whole 95 % interval of the difference is below 0; contradicted if it is above 0",
              lambda low, high: high < 0, lambda low, high: low > 0)
NO_HELP = Rule(f"supported if the interval rules out lowering the loss by more than {MARGIN} nats (its low end is "
               f"above -{MARGIN}); contradicted if the whole interval is below -{MARGIN}",
               lambda low, high: low > -MARGIN, lambda low, high: high < -MARGIN)
STRONGLY = Rule(f"supported if the whole interval is below -{STRONG} nats; contradicted if it rules out lowering the "
                f"loss by {STRONG} (its low end is above -{STRONG})",
                lambda low, high: high < -STRONG, lambda low, high: low > -STRONG)
LITTLE = Rule(f"supported if the whole interval lies within ±{MARGIN} nats; contradicted if it lies wholly outside",
              lambda low, high: -MARGIN < low and high < MARGIN, lambda low, high: high < -MARGIN or low > MARGIN)


@dataclass(frozen=True)
class Claim:
    statement: str
    switch: str  # the design column the claim is about
    rule: Rule


SWITCH_CLAIMS = (
    Claim("The forget gate helps.", "use_forget_gate", LOWERS),
    Claim("The input gate does not help.", "use_input_gate", NO_HELP),
    Claim("The output gate does not help.", "use_output_gate", NO_HELP),
    Claim("New state helps strongly.", "use_new_state", STRONGLY),
    Claim("Old state makes little difference.", "use_old_state", LITTLE),
    Claim("The state gate is not better than a fresh state (the candidate ungated).", "use_state_gate", NO_HELP),
    Claim("The residual helps.", "use_residual", LOWERS),
)
LAYERS_CLAIM = "Two layers beat three at the best width."
MEMORY_CLAIM = "A loss below the memory threshold ({threshold} nats) means the memory is used."
MEMORY_RULE = ("a cell that used no memory could do no better than a model of the current byte alone; supported if "
               "every run below the threshold scores a lower test_bpb than the order-1 byte n-gram (which sees one "
               "byte) on the same test slice; contradicted if one does not")


@dataclass
class Finding:
    statement: str
    verdict: str
    evidence: list[str]
    rule: str


def usable(summary: pd.DataFrame, loss: str) -> pd.DataFrame:
    """Runs with a finite, positive loss (finished ok, where the table says how each run ended)."""
    if loss not in summary.columns:
        raise SummaryError(f"the summary has no column {loss!r}: findings need a loss for every run")
    runs = usable_runs(summary, loss)
    return runs.assign(**{loss: pd.to_numeric(runs[loss])})


def _interval(diff: float, low: float, high: float) -> str:
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"


def matched(runs: pd.DataFrame, column: str, on: object, off: object, loss: str) -> dict[str, float]:
    """Mean of (with − without) over the designs that differ in `column` alone (`on` against `off`): designs are
    matched on every other design column present, each design's runs averaged; a t-interval over the pairs."""
    others = [c for c in DESIGN_COLUMNS if c in runs.columns and c != column]
    means = runs.groupby([*others, column])[loss].mean().unstack(column) if others else pd.DataFrame()
    pairs = (means[on] - means[off]).dropna().to_numpy(float) if {on, off} <= set(means.columns) else np.array([])
    if len(pairs) < 2:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "pairs": len(pairs)}
    half = scipy_stats.t.ppf(0.975, len(pairs) - 1) * pairs.std(ddof=1) / np.sqrt(len(pairs))
    return {"diff": pairs.mean(), "ci_low": pairs.mean() - half, "ci_high": pairs.mean() + half, "pairs": len(pairs)}


def _judge(rule: Rule, pairs: dict, effect: pd.Series | None) -> tuple[str, list[str]]:
    """The verdict of the matched contrast and the regression effect together, and a line where they disagree."""
    by_pairs = rule.verdict(pairs["ci_low"], pairs["ci_high"])
    if effect is None:
        return by_pairs, []
    by_model = rule.verdict(effect["ci_low"], effect["ci_high"])
    if by_pairs == by_model:
        return by_pairs, []
    return NOT_SHOWN, [f"the matched contrast alone would say {by_pairs}, the regression effect {by_model}: "
                       "the study cannot tell"]


def switch_finding(runs: pd.DataFrame, claim: Claim, loss: str, model: pd.DataFrame) -> Finding:
    """A claim about one switch: the published marginal, the matched contrast and the regression effect."""
    if claim.switch not in runs.columns:
        return Finding(claim.statement, NOT_SHOWN, [f"the summary has no column {claim.switch}"], claim.rule.text)
    runs = runs.assign(**{claim.switch: runs[claim.switch].astype(str).str.lower().isin(("true", "1", "1.0"))})
    on = runs[claim.switch]
    row = contrast(runs.loc[on, loss].to_numpy(float), runs.loc[~on, loss].to_numpy(float))
    part = claim.switch.removeprefix("use_").replace("_", " ")
    pairs = matched(runs, claim.switch, True, False, loss)
    if pairs["pairs"] < 2:
        why = (f"{pairs['pairs']} pairs of designs differ in the {part} alone ({row['n_on']} usable runs with it, "
               f"{row['n_off']} without); a contrast needs 2")
        return Finding(claim.statement, NOT_SHOWN, [why], claim.rule.text)
    evidence = [
        f"marginal contrast as published, mean {loss} with the {part} minus without (95 % Welch interval): "
        f"{_interval(row['diff'], row['ci_low'], row['ci_high'])} nats ({row['n_on']} runs against {row['n_off']})",
        f"matched contrast over the {pairs['pairs']} pairs of designs that differ in the {part} alone (95 % t-interval): "
        f"{_interval(pairs['diff'], pairs['ci_low'], pairs['ci_high'])} nats",
    ]
    term = model[(model["response"] == loss) & (model["term"] == claim.switch.removeprefix("use_"))]
    effect = term.iloc[0] if len(term) else None
    if effect is not None:
        evidence.append(f"regression effect, the other switches at their midpoint (95 % HC3 interval): "
                        f"{_interval(effect['estimate'], effect['ci_low'], effect['ci_high'])} nats, Holm p {effect['p_holm']:.2g}")
    verdict, why = _judge(claim.rule, pairs, effect)
    return Finding(claim.statement, verdict, evidence + why, f"{claim.rule.text}; applied to the matched contrast and "
                   "to the regression effect, a verdict where both agree")


def layers_finding(runs: pd.DataFrame, loss: str) -> Finding:
    """Two against three layers, matched design by design, at the best run's width."""
    if not {"n_layers", "state_size"} <= set(runs.columns) or runs.empty:
        return Finding(LAYERS_CLAIM, NOT_SHOWN, ["the summary has no usable runs with n_layers and state_size"], LOWERS.text)
    width = int(runs.loc[runs[loss].idxmin(), "state_size"])
    pairs = matched(runs[runs["state_size"] == width], "n_layers", 2, 3, loss)
    if pairs["pairs"] < 2:
        why = f"at width {width}, the best run's, {pairs['pairs']} designs have runs at both 2 and 3 layers; a contrast needs 2"
        return Finding(LAYERS_CLAIM, NOT_SHOWN, [why], LOWERS.text)
    evidence = [f"at width {width} (the best run's), mean {loss} of 2 layers minus 3 over the {pairs['pairs']} designs "
                f"trained at both (95 % t-interval): {_interval(pairs['diff'], pairs['ci_low'], pairs['ci_high'])} nats"]
    return Finding(LAYERS_CLAIM, LOWERS.verdict(pairs["ci_low"], pairs["ci_high"]), evidence, LOWERS.text)


def memory_finding(runs: pd.DataFrame, loss: str, threshold: float, order1_bpb: float | None) -> Finding:
    """Whether the runs below the threshold predict better than the current byte alone allows."""
    statement = MEMORY_CLAIM.format(threshold=threshold)
    below = runs[runs[loss] < threshold]
    if order1_bpb is None or "test_bpb" not in runs.columns:
        why = "needs the order-1 byte n-gram's test_bpb (rnnsweep findings --baselines) and the runs' test_bpb"
        return Finding(statement, NOT_SHOWN, [why], MEMORY_RULE)
    if below.empty:
        return Finding(statement, NOT_SHOWN, [f"no usable run has {loss} below {threshold}"], MEMORY_RULE)
    worst = float(below["test_bpb"].max())
    evidence = [f"{len(below)} of {len(runs)} usable runs have {loss} below {threshold}; the highest test_bpb among them is "
                f"{worst:.4f}, the order-1 byte n-gram's is {order1_bpb:.4f}"]
    return Finding(statement, SUPPORTED if worst < order1_bpb else CONTRADICTED, evidence, MEMORY_RULE)


def findings(summary: pd.DataFrame, loss: str = "min_loss", threshold: float = 1.9,
             order1_bpb: float | None = None) -> list[Finding]:
    """Every claim of the published write-up, judged on one stage summary; where its runs differ in a training
    setting (an axis), judged at each value apart, each statement naming its value, so that a conclusion is
    never an average over learning rates that it may not hold at."""
    keys = swept_keys(summary)
    if not keys:
        return _findings(summary, loss, threshold, order1_bpb)
    judged = []
    for values, part in summary.groupby(keys, sort=True):
        at = ", ".join(f"{key}={value}" for key, value in zip(keys, values if isinstance(values, tuple) else (values,)))
        judged += [replace(item, statement=f"{item.statement} (at {at})") for item in _findings(part, loss, threshold, order1_bpb)]
    return judged


def _findings(summary: pd.DataFrame, loss: str, threshold: float, order1_bpb: float | None) -> list[Finding]:
    runs = usable(summary, loss)
    if runs.empty:
        raise SummaryError(f"the summary has no run with a finite, positive {loss}")
    has_design = set(DESIGN_COLUMNS) <= set(runs.columns)
    model = effects(runs) if has_design and loss == "min_loss" else pd.DataFrame(columns=["response", "term"])
    return [*(switch_finding(runs, claim, loss, model) for claim in SWITCH_CLAIMS), layers_finding(runs, loss),
            memory_finding(runs, loss, threshold, order1_bpb)]


def read_table(path: Path) -> pd.DataFrame:
    """Any CSV table of runs; one line naming the file where it is not one."""
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such file") from None
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SummaryError(f"{path} is not a CSV table of runs ({err})") from None


def markdown(items: list[Finding], source: str, n_runs: int) -> str:
    """The findings page: a table of verdicts, then each claim with its evidence and rule."""
    lines = ["# Findings", "", f"The published write-up's conclusions, tested on `{source}` ({n_runs} runs). A verdict "
             "says whether this study's own numbers support a claim, contradict it, or cannot tell; the rule under each "
             "claim says what decided it.", "", "| claim | verdict |", "|---|---|"]
    lines += [f"| {item.statement} | **{item.verdict}** |" for item in items]
    for item in items:
        lines += ["", f"## {item.statement}", "", f"**{item.verdict}.**", ""]
        lines += [f"- {line}" for line in item.evidence]
        lines += [f"- rule: {item.rule}"]
    return "\n".join(lines) + "\n"
