"""Asking the person at the terminal: passphrases of keys.

Only ever in a terminal: in CI (no terminal) the passphrase comes from
$MPOTA_KEY_PASSPHRASE, and without it the command ends with one line saying so.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import UsageError
from .keys import PASSPHRASE_ENV


def interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin is not None and sys.stdin.isatty()


def ask_passphrase(path: Path) -> str | None:
    """The passphrase of the encrypted key ``path``, asked without echo; None without
    a terminal (give ``keys.load_private(path, ask=ask_passphrase)``)."""
    if not interactive():
        return None
    text: str = click.prompt(f"Passphrase for {path}", hide_input=True, err=True)
    return text


def new_passphrase() -> str:
    """A passphrase for a new key: $MPOTA_KEY_PASSPHRASE, else asked twice in a terminal.

    Raises:
        UsageError: No terminal and no $MPOTA_KEY_PASSPHRASE.
    """
    text = os.environ.get(PASSPHRASE_ENV)
    if text:
        return text
    if not interactive():
        raise UsageError(
            f"--passphrase needs a terminal to ask for the passphrase, or ${PASSPHRASE_ENV} "
            "set in the environment (CI); run it in a terminal or set the variable"
        )
    answer: str = click.prompt("Passphrase for the new key", hide_input=True,
                               confirmation_prompt=True, err=True)
    return answer
