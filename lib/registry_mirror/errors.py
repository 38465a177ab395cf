"""Typed failures of the runbooks: each says what is wrong, where, and what to do next."""
from __future__ import annotations


class RunbookError(RuntimeError):
    """Base of every failure a runbook reports to its operator."""


class ParameterError(RunbookError, ValueError):
    """A parameters file, a notebook parameter or a security-rules file is invalid."""


class SecretMissingError(RunbookError):
    """A secret the plan needs is not in the environment."""


class PreflightError(RunbookError):
    """A precondition failed; nothing was changed."""


class DeployError(RunbookError):
    """A deploy step failed after changes began."""


class VerificationError(RunbookError):
    """The deployed stack does not behave as it must."""


class ComponentNotReady(DeployError):
    """A component of the local stack did not become ready within its deadline."""

    def __init__(self, component: str, reason: str, log: str | None = None) -> None:
        self.component, self.reason, self.log = component, reason, log
        where = f"; see its log {log}" if log else ""
        super().__init__(f"{component} is not ready: {reason}{where}")
