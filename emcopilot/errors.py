"""Errors that carry a one-line message a lab member can act on."""


class EMCopilotError(Exception):
    """Base class: the message is shown to the user as is (CLI exit code 1, a line in the UI)."""

    exit_code = 1


class InputError(EMCopilotError):
    """The user's input is unusable (bad file, bad name, bad value). CLI exit code 2."""

    exit_code = 2


class WeightsUnavailableError(EMCopilotError):
    """Model weights are not on this machine and cannot be downloaded; says how to get them."""

    exit_code = 3
