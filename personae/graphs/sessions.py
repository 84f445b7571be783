"""Multi-session simulations: the same participants meet again after simulated time.

A simulation with :class:`Sessions` casts ``n_conversations`` *groups*; each group meets
``count`` times. Session ``k + 1`` of a group starts only once session ``k`` is written
(:attr:`ConversationJob.after <personae.graphs.runner.ConversationJob.after>`), while
different groups run concurrently. Long-term memory carries over through each agent's
memory stream.

Time is simulated, never the wall clock: memory recency runs on a logical step clock
(one step per turn), and a session starts ``gap / turn_time`` steps after the previous
one began, so a week between sessions ages earlier memories by a week's worth of steps.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Sessions", "parse_duration"]

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86_400, "day": 86_400,
    "w": 604_800, "week": 604_800,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: ``"7 days"``, ``"90 minutes"``, ``"2h"``, ``"1 week"`` (a number is seconds).

    Raises ``ValueError`` naming what was expected (pydantic turns it into a field error).
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text).lower())
        unit = _UNITS.get(match.group(2)) if match else None
        if not match or unit is None:
            raise ValueError(f"a duration looks like '7 days', '90 minutes', '2h' or '1 week', got {text!r}")
        seconds = float(match.group(1)) * unit
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


class Sessions(BaseModel):
    """How often the same participants meet: ``count`` sessions, ``gap`` of simulated time apart.

    ``turn_time`` is the simulated time one turn takes, i.e. one step of the memory clock:
    session ``k`` starts at step ``(k - 1) · gap / turn_time`` (or right after the agent's
    latest memory, if that is later). ``reflect`` lets every participant reflect on what it
    remembers before each session after the first (when the graph's memory reflects).
    """

    model_config = ConfigDict(extra="forbid")

    count: int = Field(2, ge=1, le=1000, description="sessions each group holds")
    gap: str = Field("7 days", description="simulated time between the starts of two sessions, e.g. '7 days'")
    turn_time: str = Field("1 minute", description="simulated time one turn takes (one step of the memory clock)")
    reflect: bool = Field(True, description="reflect before each session after the first (needs graph.memory.reflect)")

    @field_validator("gap", "turn_time", mode="before")
    @classmethod
    def _duration(cls, value: object) -> str:
        parse_duration(value)  # type: ignore[arg-type]
        return str(value)

    @property
    def gap_s(self) -> float:
        """Seconds of simulated time between two session starts."""
        return parse_duration(self.gap)

    @property
    def turn_s(self) -> float:
        """Seconds of simulated time per turn."""
        return parse_duration(self.turn_time)

    @property
    def gap_steps(self) -> int:
        """Memory-clock steps between two session starts (at least 1)."""
        return max(1, round(self.gap_s / self.turn_s))

    def start_step(self, session: int) -> int:
        """The memory-clock step at which ``session`` (1-based) starts."""
        return (session - 1) * self.gap_steps

    def start_s(self, session: int) -> float:
        """Simulated seconds since the first session began, at the start of ``session``."""
        return (session - 1) * self.gap_s
