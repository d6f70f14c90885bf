# The agent's progress, persisted so that a reset at any point resumes or
# recovers: a small JSON file replaced atomically (write temp, rename).
#
# The state names and the legal moves between them live here and nowhere
# else: the agent records every change as an event (move), and an event the
# current state does not allow is refused (a bug: StateError "bad-move",
# which mpota's guard returns as a FAILED result).
import json
import os

from mpota.errors import StateError

PATH = "mpota_state.json"

IDLE = "IDLE"
DOWNLOADING = "DOWNLOADING"
STAGED = "STAGED"
REBOOTING = "REBOOTING"
PROBATION = "PROBATION"
_NAMES = (IDLE, DOWNLOADING, STAGED, REBOOTING, PROBATION)
# The legal moves: one record per event, " event FROM>TO", the states by
# their initials (I D S R P); no ">TO": the state stays.  A string, not a
# dict of tuples: it costs the resident heap ~250 bytes instead of ~2 KB.
#
#   begin        I D       -> D  a release passed its checks: its download
#                                starts, or resumes
#   progress     D         -> D  bytes on flash, saved now and then
#   interrupted  D         -> D  stopped on a retryable error: resumes on the
#                                next poll
#   staged       D         -> S  downloaded and read back
#   apply        S         -> R  set_boot() done, the reset follows
#   probation    any       -> P  boot: the bootloader runs an image on trial
#                                (whatever the agent recorded)
#   unhealthy    any       -> =  a health check failed: the reason is kept
#                                across the reset that rolls back
#   confirmed    I R P     -> I  the image on trial proved healthy (or did,
#                                before power went)
#   rolled-back  R P       -> I  the bootloader went back to the old image
#   failed       I D S     -> I  the update ends FAILED
#   noted        any       -> =  a result recorded while the update goes on
#                                (a refused other offer, an unexpected error
#                                while staged or booting)
#   rollback     I R P     -> I  the technician boots the other slot
_MOVES = (" begin ID>D progress D interrupted D staged D>S apply S>R probation IDSRP>P"
          " unhealthy IDSRP confirmed IRP>I rolled-back RP>I failed IDS>I noted IDSRP"
          " rollback IRP>I ")


def after(name, event):
    """The state event leads to from state name, or None when name does
    not allow it (pure: the table above)."""
    i = _MOVES.find(" %s " % event)
    if i < 0 or not name:
        return None
    i += len(event) + 2
    spec = _MOVES[i:_MOVES.find(" ", i)]
    to = spec.find(">")
    if name[0] not in (spec if to < 0 else spec[:to]):
        return None
    return name if to < 0 else _NAMES["IDSRP".index(spec[to + 1])]


class State:
    def __init__(self, path=PATH):
        self.path = path
        self.data = {"state": IDLE}
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError:
            return  # first boot: nothing recorded yet
        except ValueError:
            data = None
        if type(data) is not dict or data.get("state", IDLE) not in _NAMES:
            # A torn file cannot happen with rename, but a bad write by hand can.
            data = {"state": IDLE, "last_result": {"state": "FAILED", "code": "state",
                                                   "reason": "state file %s was corrupt" % path}}
        self.data = data

    def get(self, key, default=None):
        return self.data.get(key, default)

    @property
    def name(self):
        return self.data.get("state", IDLE)

    def can(self, event):
        return after(self.name, event) is not None

    def move(self, event, reject=None, **changes):
        """Record event with changes in one write: the state becomes the one
        the event leads to.  reject: a version_code put on the rejected list
        (polling skips it).  An event this state does not allow is a bug:
        StateError "bad-move", nothing written."""
        to = after(self.name, event)
        if to is None:
            raise StateError("bad move: %s in %s" % (event, self.name), "bad-move")
        changes["state"] = to
        if reject is not None:
            rejected = [v for v in self.data.get("rejected", []) if v != reject]
            changes["rejected"] = (rejected + [reject])[-8:]
        self.save(**changes)

    def save(self, **changes):
        """The write itself (tests set a state with it; the agent moves)."""
        self.data.update(changes)
        tmp = self.path + ".tmp"
        text = json.dumps(self.data)  # one write: json.dump writes token by token
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.path)
