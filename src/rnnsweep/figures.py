"""Every figure of a study: its name, the stages that have it, the function that draws it and its caption.

The one list of figures. The workflow's rules and targets, the commands, the
report's captions and the tests all read it; a new figure is one entry here
and its function. Drawing functions are named, not imported, so reading the
list loads no plotting library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from rnnsweep.config import STAGES


@dataclass(frozen=True)
class Figure:
    """One figure: figures/<study>/<stage>/<name>.png for each of its stages."""

    name: str
    stages: tuple[str, ...]
    draw: str  # "module:function" in rnnsweep: the function that draws it
    caption: str  # reStructuredText for the report; {stage} is the stage's name
    ranked: bool = False  # it ranks runs or designs, so it takes the profile's rank_by
    baselines: bool = False  # it draws the best baseline as a line (`rnnsweep plot --baselines`)

    def drawer(self) -> Callable[..., None]:
        """The function that draws the figure (importing its module: matplotlib is slow to import)."""
        module, function = self.draw.split(":")
        return getattr(importlib.import_module(f"rnnsweep.{module}"), function)

    def caption_of(self, stage: str) -> str:
        return self.caption.replace("{stage}", stage)


FIRST, SECOND, LAST = STAGES[:1], STAGES[1:2], STAGES[-1:]
FIRST_TWO = STAGES[:2]

#: Stage 1's swarm of every run and stage 2's are one figure of two stages' runs.
SWARM = (
    "One dot per converged {stage} run: its ``min_loss`` (nats per byte), in one panel per factor (each "
    "switch off/on, depth, width). A panel whose two clouds sit at different heights is a factor that "
    'matters. The dashed red line is the "memory is used" threshold of the published study; the dotted purple '
    "line is the best baseline (an n-gram model or compressor on the same test bytes, see ``baselines.png``), "
    "converted to nats."
)

#: A stage's figures, drawn from its summary and curves by `rnnsweep plot <name>` (rnnsweep.plots).
STAGE_FIGURES: tuple[Figure, ...] = (
    Figure(
        "loss_curves",
        FIRST,
        "plots:loss_curves",
        (
            "Every {stage} run's training curve: the moving average of the training loss (nats per byte, left axis; "
            "bits per byte on the right) against the step; the dotted black line is a uniform guess (ln 256). The "
            "spread shows how much the design matters; the best run (by ``min_loss``) is drawn on top with its "
            "held-out bits per byte in the legend. The y-axis spans every curve."
        ),
        ranked=True,
    ),
    Figure(
        "swarm_all",
        FIRST,
        "plots:swarm_all",
        SWARM,
        baselines=True,
    ),
    Figure(
        "swarm_below",
        FIRST,
        "plots:swarm_below",
        (
            'The same panels as ``swarm_all`` with only the runs below the "memory is used" threshold: which settings '
            "the good {stage} designs share. A factor whose dots all sit on one side is one every good design has."
        ),
    ),
    Figure(
        "regression",
        FIRST,
        "plots:regression_bars",
        (
            "The published study's regression, kept as it was: a linear model of log(``min_loss``) on the switches, "
            "depth and width, with standardised coefficients. A bar left of zero lowers the loss. It has no intervals "
            "and no interactions; ``effects.png`` has both."
        ),
    ),
    Figure(
        "effects",
        FIRST_TWO,
        "plots:effects_bars",
        (
            "Each factor's effect on ``min_loss`` (nats; left) and on held-out ``valid_bpb`` (bits per byte; right) "
            "in {stage}, with its 95 % confidence interval, from a linear model with the main effects and the two-way "
            "interactions of the switches, sorted by size. An interval that crosses zero is an effect the data cannot "
            "tell from none; green lowers the loss, red raises it, grey is an interval that crosses zero."
        ),
    ),
    Figure(
        "best_curves",
        SECOND,
        "plots:best_curves",
        (
            "The training curves of the best {stage} runs, smoothed, on a logarithmic step axis: how fast the winners "
            "learn and whether they had stopped improving. The legend gives each run's held-out bits per byte."
        ),
        ranked=True,
    ),
    Figure(
        "swarm",
        SECOND,
        "plots:swarm_all",
        SWARM,
        baselines=True,
    ),
    Figure(
        "group_swarm",
        LAST,
        "plots:group_swarm",
        (
            "Stage 3 trains each finalist with several seeds. One dot per seed, designs ranked by their mean "
            "``min_loss``: when the dots of neighbouring designs overlap, their ranks are not real."
        ),
        ranked=True,
    ),
    Figure(
        "group_curves",
        LAST,
        "plots:group_curves",
        (
            "One panel per stage-3 design: the training curve of every seed around their mean. The width of the band "
            "is seed-to-seed variation; each title gives the design's mean test bits per byte."
        ),
        ranked=True,
    ),
    Figure(
        "group_means",
        LAST,
        "plots:group_means",
        (
            "Left: each stage-3 design's mean curve over its seeds. Middle and right: each design's mean ``min_loss`` "
            "(nats) and mean ``test_bpb`` with 95 % intervals. A filled marker is a design in the 95 % confidence set "
            "of the best design: the data do not show it worse than another. Their order is not established; the "
            "legend gives each design's bootstrap probability of being the best."
        ),
        ranked=True,
    ),
    Figure(
        "group_table",
        LAST,
        "plots:group_table",
        (
            "The stage-3 group table (``groups.csv``) drawn as a table: each design's mean ``min_loss`` and "
            "``test_bpb`` with 95 % intervals over its seeds, and whether it is in the 95 % confidence set of the "
            "best design, with its bootstrap probability of being the best in parentheses."
        ),
        ranked=True,
    ),
    Figure(
        "ranks",
        STAGES,
        "plots:rank_agreement",
        (
            "{stage}: each design's rank by one metric against its rank by another (``min_loss``, the curve's "
            "minimum, as published; ``valid_bpb``, the held-out score; ``tail_loss``, the mean of the curve's last "
            "tenth), one panel per pair, with Spearman's correlation and its 95 % interval. Red: the top 10 % by the "
            "first metric; the title says how many of them leave the top 10 % by the second. Where the points "
            "scatter, which designs go on depends on ``rank_by``."
        ),
    ),
)

#: A stage's dynamics figures, drawn from its dynamics tables by `rnnsweep plot-dynamics <name>`
#: (rnnsweep.dynamics_plots), for the stages the profile's dynamics block lists.
#: The figures of a stage whose runs differ in a training setting (an axis), drawn like STAGE_FIGURES.
SWEEP_FIGURES: tuple[Figure, ...] = (
    Figure(
        "bump",
        STAGES,
        "plots:bump",
        (
            "Does the ranking of the {stage} designs survive another value of a swept setting? One panel per "
            "setting the stage's runs differ in (an axis of the profile, or one carried from the stage before), the "
            "other settings held at one value: each line is a design, its rank (1 = best, by ``rank_by``, means over "
            "seeds) at each value; the designs in the top five at any value are coloured and named. Each title gives "
            "Spearman's rho between the rankings at neighbouring values with its 95 % interval, and how many of the "
            "top 10 % at one value stay in the top 10 % at the next (``sweep.csv`` has every pair)."
        ),
        ranked=True,
    ),
)

DYNAMICS_FIGURES: tuple[Figure, ...] = (
    Figure(
        "memory",
        STAGES,
        "dynamics_plots:memory",
        (
            "Left: held-out bits per byte of the best {stage} runs when each predicted byte's cell has read only the "
            "current byte and the ``k`` before it (x: ``k + 1`` bytes read; the last point is the whole window, the "
            "run's held-out score). Solid: the state ``k`` bytes back is another window's state at the same place (a "
            "typical state that knows nothing true of this past); dashed: it is reset to zero. Black squares: byte "
            "n-gram models of order ``k``, which read ``k`` bytes, on the same bytes; a cell below the n-gram that "
            "reads as much uses its bytes better. Right: every run's memory gain (bits per byte the past is worth: "
            "substituted bpb at ``k = 0`` minus full context) against its loss, with the Spearman correlation across "
            "designs and its 95 % interval."
        ),
    ),
    Figure(
        "sensitivity",
        STAGES,
        "dynamics_plots:sensitivity",
        (
            "How far back the prediction of a byte reaches in the best {stage} runs: the mean norm of the gradient of "
            "the log-probability of each held-out window's last byte with respect to the input ``k`` bytes earlier, "
            "relative to ``k = 0``, through the whole window (backpropagation through time, for this analysis only; "
            "training uses none). ``tau`` is the decay time of an exponential fitted over lags 1 and on."
        ),
    ),
    Figure(
        "lyapunov",
        STAGES,
        "dynamics_plots:lyapunov",
        (
            "Every {stage} run's largest Lyapunov exponent (nats per byte) against its loss, once per switch, red "
            "where the switch is on. The exponent is the mean log growth rate of the most expanding direction of the "
            "state map, all layers' state stacked, driven by held-out text. Below 0 the map contracts: two different "
            "pasts converge, and the cell forgets where it started; near 0 it neither forgets nor amplifies (a state "
            "that is copied along)."
        ),
    ),
    Figure(
        "attractors",
        STAGES,
        "dynamics_plots:attractors",
        (
            "The best {stage} run's dynamics without text. Left, the orbit diagram: the last steps of four units of "
            "its last layer after a few hundred steps on one input byte held constant, for every byte (one dot: a "
            "fixed point; a vertical spread: a cycle or an orbit that does not settle). Middle: its state along "
            "held-out text in its first two principal components, each point coloured by the byte just read. Right: "
            "for each of the best runs, the share of random starts and constant input bytes whose orbit ends at a "
            "fixed point, on a cycle (period up to 32), or does not repeat within 32 steps by the end (irregular, or "
            "still moving)."
        ),
    ),
)


def by_name(figures: tuple[Figure, ...]) -> dict[str, Figure]:
    """Figures by name; a name that two stages share is one figure."""
    return {figure.name: figure for figure in figures}


def of_stage(figures: tuple[Figure, ...], stage: str) -> tuple[str, ...]:
    """The names of a stage's figures, in the list's order."""
    return tuple(figure.name for figure in figures if stage in figure.stages)
