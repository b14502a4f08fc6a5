"""The one error type for a user's mistake (bad storage URL, unknown study or column, missing folder)."""

from __future__ import annotations


class AnalysisError(ValueError):
    """A problem the user can fix; the message names the flag, file or column. The CLI prints it as one line."""
