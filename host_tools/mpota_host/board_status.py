"""``mpota status``: what a board runs, read over its serial REPL.

The otadata state names are the agent's own (``device/mpota/otadata.py``,
read here as literals, never executed), so the two runtimes cannot drift.
"""

from __future__ import annotations

import ast
from functools import cache
from typing import Any

from . import resources
from .serial_link import JSON_MARK, BoardLink

# Runs on the board with or without the agent: plain MicroPython and esp32.
STATUS_CODE = """
import sys, gc, json, esp32, struct
gc.collect()
v = sys.implementation.version
info = {"micropython": "%d.%d.%d" % (v[0], v[1], v[2]), "mpy": sys.implementation._mpy,
        "free_heap": gc.mem_free()}
try:
    import mpota
    info["agent"] = mpota.__version__
except ImportError:
    info["agent"] = None
run = esp32.Partition(esp32.Partition.RUNNING)
info["running"] = run.info()[4]
info["next"] = run.get_next_update().info()[4]
info["boot"] = esp32.Partition(esp32.Partition.BOOT).info()[4]
parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, 0)
ota = []
if parts:
    import binascii
    raw = bytearray(32)
    for i in range(2):
        parts[0].readblocks(i, raw)
        seq, _, state, crc = struct.unpack("<I20sII", raw)
        ok = crc == binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF
        ota.append([seq, state, ok])
info["otadata"] = ota
if info["agent"]:
    try:
        a = mpota.get_agent()
        version, code = a.running_version()
        t = a.st.get("target") or {}
        info.update(version=version, version_code=code, state=a.st.name,
                    last_result=a.st.get("last_result"), written=a.st.get("written", 0),
                    target={"version": t.get("version"), "size": t.get("payload_size"),
                            "url": t.get("url")})
    except Exception as e:
        info["agent_error"] = "%s: %s" % (getattr(e, "code", e.__class__.__name__), e)
print("MPOTA-JSON" + " " + json.dumps(info))
"""
_ERASED = 0xFFFFFFFF


@cache
def otadata_names() -> dict[int, str]:
    """{0: "NEW", 1: "PENDING_VERIFY", ...} from the agent's otadata.py."""
    tree = ast.parse((resources.agent_dir() / "otadata.py").read_text())
    values: dict[str, int] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int)):
            values[node.targets[0].id] = node.value.value
    return {value: name for name, value in values.items()}


def otadata_entry(seq: int, state: int, crc_ok: bool) -> dict[str, Any]:
    """One otadata entry for people and scripts: an erased one is "empty"."""
    if seq == _ERASED and state == _ERASED:
        return {"seq": None, "state": "empty", "crc_ok": True}
    return {"seq": seq, "state": otadata_names().get(state, f"0x{state:08x}"), "crc_ok": crc_ok}


def board_status(link: BoardLink) -> dict[str, Any]:
    """What the board runs: slots, otadata, MicroPython, the agent and its state."""
    assert JSON_MARK == "MPOTA-JSON "  # STATUS_CODE prints it
    info: dict[str, Any] = link.call(STATUS_CODE)
    info["otadata"] = [otadata_entry(*entry) for entry in info["otadata"]]
    mpy = info.pop("mpy", 0)
    info["mpy_version"] = f"{mpy & 0xFF}.{(mpy >> 8) & 3}"
    return info


def hint(info: dict[str, Any], port: str) -> str | None:
    """What to do about the board's state, or None when there is nothing to do."""
    if not info.get("agent"):
        return "the agent is not installed: run 'mpota provision'"
    if info.get("agent_error"):
        return "the agent cannot start: fix mpota.json with 'mpota provision --config FILE'"
    target = info.get("target") or {}
    state = info.get("state")
    if state == "DOWNLOADING":
        done = f"{info.get('written', 0)} of {target.get('size') or '?'} bytes"
        if str(target.get("url") or "").startswith("push:"):
            return (f"an offline update to {target.get('version')} stopped at {done}: "
                    f"'mpota push --port {port} RELEASE_DIR' resumes it")
        return (f"an update to {target.get('version')} stopped at {done}: 'mpota trigger "
                f"--port {port}' resumes it (or the board's next poll does)")
    if state == "STAGED":
        return (f"{target.get('version')} is staged: it is applied at the next poll the "
                "policy allows, or now with mpota.apply() at the REPL")
    return None


def _last_result(last: Any) -> str:
    if not isinstance(last, dict):
        return "none"
    text = str(last.get("state") or "")
    if last.get("code"):
        text += f" ({last['code']})"
    if last.get("reason"):
        text += f" {last['reason']}"
    return text


def status_lines(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows for a person."""
    rows: list[tuple[str, str]] = [
        ("MicroPython", f"{info['micropython']} (.mpy v{info['mpy_version']})"),
        ("running slot", info["running"]),
        ("next slot", info["next"]),
        ("boots next", info["boot"]),
    ]
    for i, entry in enumerate(info["otadata"]):
        if entry["seq"] is None:
            rows.append((f"otadata[{i}]", "empty"))
        else:
            rows.append((f"otadata[{i}]", f"seq={entry['seq']} {entry['state']}"
                         + ("" if entry["crc_ok"] else " (bad crc)")))
    if info.get("agent"):
        rows.append(("agent", str(info["agent"])))
        if info.get("agent_error"):
            rows.append(("agent error", str(info["agent_error"])))
        else:
            rows += [("firmware", f"{info.get('version')} (version_code "
                                  f"{info.get('version_code')})"),
                     ("agent state", str(info.get("state"))),
                     ("last result", _last_result(info.get("last_result")))]
    else:
        rows.append(("agent", "not installed"))
    rows.append(("free heap", f"{info['free_heap']} bytes"))
    return rows
