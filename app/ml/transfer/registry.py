"""The strategy registry: each transfer strategy is declared once, here, by its own module.

A declaration says what the strategy is (its name and description), what it takes from the
source (weights, rows), what it trains, and whether `auto` tries it; everything else (the
API's accepted names and their OpenAPI description, auto's candidates, the work estimate,
validation) is computed from these declarations. Adding a strategy is one module in this
package that calls `register` at import, plus its test.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from app.ml.transfer.candidates import Run, Trained

AUTO = "auto"
"""Not a strategy but a request to choose one: every strategy with `in_auto`, scored by
cross-validation."""


@dataclass(frozen=True)
class StrategySpec:
    """One transfer strategy and everything the rest of Graft needs to know about it."""

    name: str
    description: str
    # Starts from the source model's weights. False: a target-only model, which always reads
    # the target's own input scaling.
    uses_source_weights: bool
    # Which parameters train, in words (the docs' table).
    trains: str
    # The model before training: which weights it starts from, which of them train.
    prepare: "Callable[[Run], nn.Module]"
    # Train the prepared model on the run's rows.
    train: "Callable[[Run, nn.Module], Trained]"
    # Takes `layer_lr_decay` (the head learns fastest, each layer below more slowly).
    layer_lr: bool = False
    # `auto` scores it as a candidate.
    in_auto: bool = True
    # Trains on the source dataset's rows too (the job holds that dataset while queued).
    needs_source_rows: bool = False
    # Reads rows x features only (no images).
    tabular_only: bool = False
    # Fitted in closed form, not by epochs: no validation rows are held out for it (they
    # would only pick the best epoch), so it learns from every row it is given.
    closed_form: bool = False
    # Lower is simpler: a tie between candidates goes to the simpler one.
    simplicity: int = 50
    # The hyperparameters only this strategy reads, for the docs.
    hyperparameters: tuple[str, ...] = ()

    @property
    def target_only(self) -> bool:
        return not self.uses_source_weights


_STRATEGIES: dict[str, StrategySpec] = {}


def register(spec: StrategySpec) -> StrategySpec:
    """Declare a strategy; its name must be new and may not be `auto`."""
    if spec.name == AUTO or not spec.name.isidentifier():
        raise ValueError(f"{spec.name!r} cannot name a strategy")
    if spec.name in _STRATEGIES:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    _STRATEGIES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a strategy (tests that register a dummy one clean up with this)."""
    _STRATEGIES.pop(name, None)


def get(name: str) -> StrategySpec:
    """The declaration of `name`; ValueError naming the known strategies if there is none."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; expected one of {', '.join(names(with_auto=True))}"
        ) from None


def find(name: str | None) -> StrategySpec | None:
    return _STRATEGIES.get(name) if name is not None else None


def needs_source_rows(name: str | None) -> bool:
    """Whether strategy `name` trains on the source dataset's rows (False for unknown names)."""
    spec = find(name)
    return spec is not None and spec.needs_source_rows


def specs() -> list[StrategySpec]:
    """Every declared strategy, simplest first."""
    return sorted(_STRATEGIES.values(), key=lambda s: (s.simplicity, s.name))


def names(*, with_auto: bool = False) -> list[str]:
    """Every strategy name a request may give, simplest first (`auto` last)."""
    found = [spec.name for spec in specs()]
    return [*found, AUTO] if with_auto else found


def describe() -> str:
    """A Markdown list of the strategies, for the OpenAPI description of `strategy`."""
    lines = [f"- `{spec.name}`: {spec.description}" for spec in specs()]
    lines.append(
        f"- `{AUTO}`: scores "
        + ", ".join(f"`{s.name}`" for s in specs() if s.in_auto)
        + " by cross-validation on the target rows and trains the best, never a transfer "
        "candidate whose gain over the best target-only one is within the noise."
    )
    return "\n".join(lines)
