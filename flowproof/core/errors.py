"""flowproof's own exceptions; driver errors are turned into these at the boundary."""

from __future__ import annotations

# Process exit codes of the contract (docs/design.md): 0 every check passed, 1 a check failed,
# 2 configuration error or a component unreachable.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2


class FlowproofError(Exception):
    """Base class of every error flowproof raises on purpose."""


class ConfigError(FlowproofError):
    """A configuration value is missing or wrong; the message names the variable."""


class ContractError(FlowproofError):
    """A message, payload or name that does not fit the contract (docs/design.md); `reason` is
    the stable label used in metrics, receipts and dead letters."""

    reason = "invalid"


class ComponentUnreachable(FlowproofError):
    """PostgreSQL, Redis or Kafka could not be reached; the message names which."""

    def __init__(self, component: str, detail: str) -> None:
        super().__init__(f"{component} is unreachable: {detail}")
        self.component = component
        self.detail = detail


class NotImplementedYet(FlowproofError):
    """A command whose implementation lands in a later issue."""
