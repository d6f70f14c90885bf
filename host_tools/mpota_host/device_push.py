"""``mpota trigger`` (the board updates itself, from its server or a release
URL) and ``mpota push`` (the release streamed through the raw REPL).

Both follow the board by its ``MPOTA-EVENT`` lines (``mpota.push.announce``):
download progress, the reset into the new image, the update's result.
Ctrl-C stops the board's work cleanly and ends in an :class:`Interrupted`
that says what state the board is in and which command resumes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import release
from .errors import MpotaError, UsageError, printable
from .serial_link import JSON_MARK, BoardLink, BoardLinkError, Interrupted, deferred_interrupt

PUSH_CHUNK = 4096
# progress(done, total): bytes of the payload on the board's flash
Progress = Callable[[int, int], None]


class UpdateFailed(MpotaError):
    """The board's update ended FAILED (or RETRY_LATER): the agent's reason."""


def check_release_url(url: str) -> str:
    """The URL if it is https://; a :class:`UsageError` before the board is touched."""
    if not url.startswith("https://"):
        raise UsageError(f"--release-url {printable(url)}: only https:// URLs (the board "
                         "pins its CA and never downloads in clear)")
    return url


@dataclass
class TriggerResult:
    result: str  # REBOOTING, STAGED, UP_TO_DATE
    version: str | None
    detail: dict[str, Any]


def trigger_update(link: BoardLink, url: str | None, out: Callable[[str], None],
                   progress: Progress | None = None, port: str = "PORT") -> TriggerResult:
    """Run the update on the board, streaming its lines to out and its download
    progress to progress; how it ended. A failed update is an :class:`UpdateFailed`
    (its reason, one line); Ctrl-C an :class:`Interrupted`."""
    if url is not None:
        check_release_url(url)
    result: dict[str, Any] = {}
    version: list[str | None] = [None]

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress" and progress is not None:
            progress(int(event.get("written") or 0), int(event.get("total") or 0))
        if kind in ("progress", "rebooting") and event.get("version"):
            version[0] = str(event["version"])
        if kind == "rebooting":
            result.update(result="REBOOTING")
        elif kind == "result":
            result.update(event)

    code = f"from mpota import push\npush.trigger({url!r})\n"
    try:
        link.run_events(code, on_event, out)
    except KeyboardInterrupt:
        link.interrupt()
        again = f"mpota trigger --port {port}" + (f" --release-url {url}" if url else "")
        raise Interrupted(
            "interrupted: the board stopped the download and keeps running its image (state "
            f"DOWNLOADING, the bytes so far kept); '{again}' resumes it") from None
    state = str(result.get("result") or "")
    if state in ("FAILED", "RETRY_LATER"):
        code_name = result.get("error") or "error"
        raise UpdateFailed(printable(
            f"the update failed on the board ({code_name}): {result.get('reason')}"
            + ("; the board retries by itself at its next poll" if state == "RETRY_LATER"
               else "")))
    if not state:
        raise BoardLinkError("the board ended the update without a result: run 'mpota status "
                             f"--port {port}' to see its state")
    return TriggerResult(state, str(result.get("version") or version[0] or "") or None, result)


@dataclass
class PushReport:
    version: str
    payload_bytes: int
    sent_bytes: int
    resumed_at: int
    seconds: float
    line_bytes_per_s: float
    applied: bool = False

    @property
    def rate(self) -> float:
        return self.sent_bytes / self.seconds if self.seconds else 0.0


APPLY_CODE = ("import mpota\nfrom mpota import push\npush.announce(mpota.get_agent())\n"
              "push.event('result', **mpota.apply())\n")


def push_release(link: BoardLink, reldir: Any, baud: int,
                 progress: Progress | None = None, apply: bool = True,
                 port: str = "PORT") -> PushReport:
    """Stream a release through the raw REPL into the inactive slot, resumably.

    The board's ``P.begin`` answers the payload offset to send from: 0, or the
    last whole block on its flash; for an encrypted release 16 bytes before
    that block, so that the first chunk brings the ciphertext block CBC needs
    as its IV there. Ctrl-C ends in an :class:`Interrupted` naming the command
    that resumes."""
    raw, sig, payload = release.read_release(reldir)
    fields = json.loads(raw)
    total = payload.stat().st_size
    try:
        start_at = int(link.call(
            "import mpota.push as P\nimport json\n"
            f"print('{JSON_MARK}' + json.dumps(P.begin({base64.b64encode(raw).decode()!r}, "
            f"{base64.b64encode(sig).decode()!r})))\n"))
    except BoardLinkError as e:
        if type(e) is not BoardLinkError:
            raise  # no agent, the board gone: their own message
        raise BoardLinkError(f"the board refused the release: {e}") from e
    began = time.monotonic()
    offset = start_at
    try:
        with deferred_interrupt() as stop, payload.open("rb") as f:
            # Ctrl-C ends the push between two chunks: the board is never left
            # with half a chunk, and what it received is on its flash
            f.seek(offset)
            if progress:
                progress(offset, total)
            while offset < total and not stop.requested:
                data = f.read(PUSH_CHUNK)
                link.exec(f"P.chunk({offset},{base64.b64encode(data).decode()!r})")
                offset += len(data)
                if progress:
                    progress(offset, total)
            if not stop.requested:
                link.exec(f"import json\nprint('{JSON_MARK}' + json.dumps(P.finish()))")
    except BoardLinkError as e:
        if type(e) is not BoardLinkError:
            raise
        raise BoardLinkError(f"the board refused the release: {e}") from e
    if stop.requested:
        raise Interrupted(
            f"interrupted: the board keeps running its image; {offset} of {total} bytes of "
            f"{printable(fields.get('version'))} reached it (state DOWNLOADING); 'mpota push "
            f"--port {port} {reldir}' resumes from its flash")
    seconds = time.monotonic() - began
    # where the slot resumed: past the 16 IV bytes of an encrypted resume
    resumed_at = start_at + 16 if start_at and fields.get("encryption") else start_at
    report = PushReport(str(fields.get("version")), total, total - start_at, resumed_at,
                        seconds, baud / 10)
    if apply:
        apply_staged(link)
        report.applied = True
    return report


def apply_staged(link: BoardLink) -> None:
    """mpota.apply() on the board: returns once it announced its reset."""
    result: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        result.update(event)

    link.run_events(APPLY_CODE, on_event, lambda line: None)
    if result.get("event") == "result":
        raise UpdateFailed(printable(f"the release is staged but the board does not reboot "
                                     f"into it: {result.get('reason')}; it is applied at its "
                                     "next poll, or with mpota.apply() at the REPL"))
