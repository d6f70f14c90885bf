"""mpota.state owns the state names and the legal moves: every (state, event)
pair on the unix port, against this table written out independently."""

from __future__ import annotations

import tempfile

from helpers import unix_results

NAMES = ["IDLE", "DOWNLOADING", "STAGED", "REBOOTING", "PROBATION"]
BOOTED = ["IDLE", "REBOOTING", "PROBATION"]
SAME = None  # the state stays

# event: (the states it may happen in, where it leads)
MOVES: dict[str, tuple[list[str], str | None]] = {
    "begin": (["IDLE", "DOWNLOADING"], "DOWNLOADING"),
    "progress": (["DOWNLOADING"], SAME),
    "interrupted": (["DOWNLOADING"], SAME),
    "staged": (["DOWNLOADING"], "STAGED"),
    "apply": (["STAGED"], "REBOOTING"),
    "probation": (NAMES, "PROBATION"),
    "unhealthy": (NAMES, SAME),
    "confirmed": (BOOTED, "IDLE"),
    "rolled-back": (["REBOOTING", "PROBATION"], "IDLE"),
    "failed": (["IDLE", "DOWNLOADING", "STAGED"], "IDLE"),
    "noted": (NAMES, SAME),
    "rollback": (BOOTED, "IDLE"),
}


def expected(name: str, event: str) -> str | None:
    states, to = MOVES[event]
    if name not in states:
        return None
    return name if to is SAME else to


def test_every_state_and_event_against_the_table() -> None:
    tmp = tempfile.mkdtemp(prefix="mpota-moves-")
    (got,) = unix_results(f"""
from mpota import state
from mpota.errors import StateError

out = {{}}
for name in {NAMES!r}:
    for event in {list(MOVES)!r}:
        st = state.State({tmp!r} + "/st.json")
        st.save(state=name, written=4096)
        before = open(st.path).read()
        can = st.can(event)
        try:
            st.move(event, note=event)
            moved = [st.name, state.State(st.path).name, st.get("note")]
        except StateError as e:
            # refused: nothing written, the file as it was
            moved = [e.code, open(st.path).read() == before, st.name]
        out[name + " " + event] = [moved, state.after(name, event), can]
result(out)
""")
    for name in NAMES:
        for event in MOVES:
            moved, after, can = got[f"{name} {event}"]
            to = expected(name, event)
            if to is None:
                assert moved == ["bad-move", True, name], (name, event)
                assert after is None and can is False, (name, event)
            else:
                assert moved == [to, to, event], (name, event)  # saved with its changes
                assert after == to and can is True, (name, event)


def test_unknown_events_and_names_are_refused() -> None:
    (got,) = unix_results("""
from mpota import state
result([state.after("IDLE", "stage"), state.after("IDLE", "IDLE"), state.after("", "begin"),
        state.after("IDLE", "D"), state.after("IDLE", "begin ID>D")])
""")
    assert got == [None, None, None, None, None]


def test_a_move_is_one_write_and_keeps_the_rejected_list_short() -> None:
    tmp = tempfile.mkdtemp(prefix="mpota-moves-")
    (got,) = unix_results(f"""
from mpota import state

class Counting(state.State):
    writes = 0
    def save(self, **changes):
        Counting.writes += 1
        state.State.save(self, **changes)

st = Counting({tmp!r} + "/st.json")
st.save(state="DOWNLOADING", rejected=[1, 2])
Counting.writes = 0
st.move("failed", 2, written=0)  # 2 again: moved to the end, not doubled
for code in range(3, 12):
    st.move("noted", code)
result([Counting.writes, st.name, state.State(st.path).get("rejected")])
""")
    assert got == [10, "IDLE", [4, 5, 6, 7, 8, 9, 10, 11]]
