"""The stages of a SecAgg+ round, named once (every other module uses these members)."""

from __future__ import annotations

from enum import StrEnum

from trustspace.errors import ConfigError

__all__ = ["ROUND_STAGES", "Stage", "stages_for"]


class Stage(StrEnum):
    """A stage of one round, or a terminal state of a client or server state machine.

    The values are the stage names on the wire (``SecAggStepRequest.stage``), in audit lines
    and in error messages.
    """

    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"  # only with SecAggConfig.consistency_check
    UNMASK = "unmask"
    DONE = "done"  # terminal: the round completed
    FAILED = "failed"  # terminal: a stage raised; the state machine refuses to go on

    @classmethod
    def parse(cls, name: str, *, aliases: bool = False) -> Stage:
        """The stage called ``name`` (``"share"`` is accepted for SHARE_KEYS with ``aliases``).

        Raises:
            ConfigError: no such stage (the message lists them).
        """
        if aliases and name in _ALIASES:
            return _ALIASES[name]
        try:
            stage = cls(name)
        except ValueError:
            stage = None
        if stage is None or stage in (cls.DONE, cls.FAILED):
            names = ", ".join(s.value for s in stages_for(consistency_check=True))
            raise ConfigError(f"unknown secure-aggregation stage {name!r}; the stages are {names}")
        return stage


#: The stages of a round without the optional consistency round, in order.
ROUND_STAGES = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
#: Older spellings kept for the public ``simulate(dropouts=...)`` contract.
_ALIASES = {"share": Stage.SHARE_KEYS}


def stages_for(*, consistency_check: bool) -> tuple[Stage, ...]:
    """The stages of a round in order (with the consistency round when it is configured)."""
    if not consistency_check:
        return ROUND_STAGES
    return (*ROUND_STAGES[:3], Stage.CONSISTENCY, ROUND_STAGES[3])
