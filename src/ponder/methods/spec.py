"""What a method is to the rest of ponder: one record, ``MethodSpec``, that the table
(``ponder.methods``) holds one of per method.

Everything outside ``ponder.methods`` that would otherwise choose by a method's name asks its
record instead: the config fields it reads, how its network is built and run (one run, or K
runs stacked), its loss, the most recurrent steps it may take per token, and how reports name
and draw it. A method a table does not know raises where it is named (``UnknownMethod``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class UnknownMethod(ValueError):
    """A method name the table does not have."""


def fmt_tau(tau: float | None) -> str:
    """tau as the paper writes it: 1e-2, 5e-3 (0 for no penalty); part of a row's name."""
    if tau is None:
        return ""
    if tau == 0:
        return "0"
    mantissa, exponent = f"{tau:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def fmt_number(value: Any) -> str:
    """An int as itself, a float as ``{:g}``: 2, 0.2."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Knob:
    """The setting that tells a method's configurations apart in a table or a figure: ACT's
    tau, Repeat's rho, PonderNet's lambda_p."""

    field: str  # the RunConfig field
    symbol: str  # the paper's symbol in labels: "tau" -> "ACT tau=1e-2"
    tag: str  # in run directory names: "tau" -> "act-tau0.01-seed0"
    fmt: Callable[[Any], str] = fmt_number  # the value in labels
    descending: bool = False  # the paper's row order: ACT from the largest tau

    def name_part(self, value: Any) -> str:
        return f"{self.tag}{fmt_number(value)}"


@dataclass(frozen=True)
class MethodSpec:
    """One method: its name and knobs, and the functions that compute it.

    Config-like arguments (``config``) are anything with ``RunConfig``'s fields (a
    ``RunConfig``, or ``ModelSpec`` for what it has); ``net`` is a one-run ``TaskNet`` (a
    ``core`` built by ``build`` and a ``readout``); ``ens`` an ``ensemble.Ensemble`` of K such
    networks. A method module imports nothing of ponder above ``ponder.methods``.
    """

    name: str  # the config's ``model``
    title: str  # in reports: "ACT"
    fields: tuple[str, ...]  # the config's ponder fields it reads; the others are ignored
    knob: Knob | None  # what names its configurations (None: one configuration per cell)
    color: str  # its colour in figures that compare methods
    # The one-run core: ``build(spec)`` from a ``ModelSpec`` (its sizes, cell and options);
    # ``forward(net, x, unroll, uniforms) -> (logits, info)`` runs the task network around it.
    build: Callable[[Any], Any]
    forward: Callable[..., tuple[Any, dict[str, Any]]]
    # The same for K stacked runs: x ``[K, B, T, F]`` -> logits ``[K, B, T, O]``, info
    # ``[K, B, T]``.
    stacked: Callable[..., tuple[Any, dict[str, Any]]]
    # ``loss(task, logits, targets, info, weights, ponder_loss, tokens) -> (loss, task_loss)``,
    # per sequence; ``weights`` are ``loss_weights(config)``, floats for one run or ``[K, 1]``
    # tensors for an ensemble.
    loss: Callable[..., tuple[Any, Any]]
    loss_weights: Callable[[Any], dict[str, float]]
    # The most recurrent steps a token may take (Repeat's rho, ACT's M, PonderNet's N) and, for
    # a fixed method, the steps every token takes (None: adaptive, it varies per token).
    max_steps: Callable[[Any], int]
    fixed_steps: Callable[[Any], int] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)  # its values for shared fields
    symbols: Mapping[str, str] = field(default_factory=dict)  # the paper's: max_ponder -> "M"
    per_member: tuple[str, ...] = ()  # fields that may differ within one stacked ensemble
    # ACT: deciding that a token has halted reads the host once per ponder step, so a CUDA graph
    # replays a fixed unroll (``graphs.py``) and ``forward`` takes ``unroll``.
    halts_on_host: bool = False
    # ACT: what a training step costs follows what its halting unit (``core.halting``) has
    # learned, from one step per token to the cap. Timing a step before training then says
    # little of what it will cost, so an estimate also times it held at the cap
    # (``reproduce.estimate``). PonderNet's unroll always runs its N steps.
    cost_follows_halting: bool = False
    # PonderNet: the halting steps are drawn from uniforms ``[B, T, max_steps]`` that the
    # training step draws from the run's stream (``forward`` takes ``uniforms``).
    draws_halting: bool = False
    # The ponder cost a run ranks its ensembles by (``sweep``): runs that ponder alike train
    # together, the largest first (ACT: tau).
    ponder_pressure: Callable[[Any], float] = lambda config: 0.0
    # PonderNet: its logged ``ponder_cost`` is the expected steps sum_n n p^n, which reports
    # give beside the steps an inference computes (``ponder_steps``).
    expected_steps: bool = False
    # Figures: the stem of its figure per knob value ("tau": parity-accuracy-tau.png; None: the
    # knob's symbol), and what its logged "repetitions" are, as an axis label and in a caption.
    figure: str | None = None
    repetitions_label: str = "repetitions"
    repetitions_name: str = "repetitions"
    # Another method's configuration that computes the same thing (the RNN is Repeat at
    # rho = 1): the paper's curves for it are that one's.
    same_as: tuple[str, Mapping[str, Any]] | None = None
    # The naive reference ``ponder bench`` measures the fast path against, and its loss
    # (``methods.naive``); None where the method has none.
    naive: Any = None  # a ``naive.Reference``

    @property
    def adaptive(self) -> bool:
        """Whether its steps per token vary (ACT, PonderNet) rather than being fixed."""
        return self.fixed_steps is None

    def knob_value(self, config: Any) -> Any:
        return None if self.knob is None else getattr(config, self.knob.field)

    def short_label(self, config: Any) -> str:
        """A legend entry: tau=1e-2, rho=2; the cell's name (RNN, LSTM) for a method without a
        knob."""
        if self.knob is None:
            return str(config.cell).upper()
        return f"{self.knob.symbol}={self.knob.fmt(self.knob_value(config))}"

    def label(self, config: Any) -> str:
        """The paper's name for a row: RNN / LSTM, ACT tau=1e-2, Repeat rho=2."""
        if self.knob is None:
            return self.short_label(config)
        return self.label_at(self.knob_value(config))

    def label_at(self, value: Any) -> str:
        """The method at knob value ``value``: ACT tau=1e-2; its title without a knob."""
        if self.knob is None:
            return self.title
        return f"{self.title} {self.knob.symbol}={self.knob.fmt(value)}"

    def order(self, config: Any) -> float:
        """Its configurations' order in the paper's tables."""
        value = self.knob_value(config)
        if value is None:
            return 0.0
        return -float(value) if self.knob.descending else float(value)
