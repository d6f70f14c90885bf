# The agent's progress, persisted so that a reset at any point resumes or
# recovers: a small JSON file replaced atomically (write temp, rename).
import json
import os

PATH = "mpota_state.json"

IDLE = "IDLE"
DOWNLOADING = "DOWNLOADING"
STAGED = "STAGED"
REBOOTING = "REBOOTING"
PROBATION = "PROBATION"
_NAMES = (IDLE, DOWNLOADING, STAGED, REBOOTING, PROBATION)


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

    def save(self, **changes):
        self.data.update(changes)
        tmp = self.path + ".tmp"
        text = json.dumps(self.data)  # one write: json.dump writes token by token
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.path)
