"""The field-technician jobs over a USB serial cable, for scripts: one import
for what the ``mpota status / provision / trigger / push`` commands use.

- :mod:`.serial_link`: the raw-REPL session (bounded waits, events, restoring
  the board's application);
- :mod:`.board_status`: what a board runs;
- :mod:`.provisioning`: the provisioning file, checked whole, and the install;
- :mod:`.device_push`: ``trigger`` and ``push``.
"""

from __future__ import annotations

from .board_status import board_status, hint, status_lines
from .device_push import (
    PUSH_CHUNK,
    PushReport,
    TriggerResult,
    UpdateFailed,
    apply_staged,
    check_release_url,
    push_release,
    trigger_update,
)
from .provisioning import (
    HOOK_BOOT,
    HOOK_MAIN,
    ProvisionConfig,
    ProvisionRefused,
    ProvisionReport,
    agent_files,
    mpy_cross_version,
    plan_hooks,
    provision_board,
)
from .serial_link import (
    DEFAULT_TIMEOUT,
    BoardLink,
    BoardLinkError,
    BoardUnreachable,
    Interrupted,
    NoAgentError,
    VersionMismatch,
    connect,
)

__all__ = [
    "DEFAULT_TIMEOUT", "HOOK_BOOT", "HOOK_MAIN", "PUSH_CHUNK", "BoardLink", "BoardLinkError",
    "BoardUnreachable", "Interrupted", "NoAgentError", "ProvisionConfig", "ProvisionRefused",
    "ProvisionReport", "PushReport", "TriggerResult", "UpdateFailed", "VersionMismatch",
    "agent_files", "apply_staged", "board_status", "check_release_url", "connect", "hint",
    "mpy_cross_version", "plan_hooks", "provision_board", "push_release", "status_lines",
    "trigger_update",
]
