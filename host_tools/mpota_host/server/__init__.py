"""``mpota serve``: the HTTPS update server, its device registry and its reports.

Scripts and tests use :func:`start_server` (a server in a background thread)
and the device functions; the CLI commands in :mod:`.commands` wrap them.
"""

from __future__ import annotations

from .app import ServerHandle, start_server
from .store import add_device, list_devices, remove_device, reports

__all__ = ["ServerHandle", "add_device", "list_devices", "remove_device", "reports",
           "start_server"]
