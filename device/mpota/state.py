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


class State:
    def __init__(self, path=PATH):
        self.path = path
        self.data = {"state": IDLE}
        try:
            with open(path) as f:
                self.data = json.load(f)
        except OSError:
            pass  # first boot: nothing recorded yet
        except ValueError:
            # A torn file cannot happen with rename, but a bad write by hand can.
            self.data = {"state": IDLE, "last_result": {"state": "FAILED",
                                                         "reason": "state file was corrupt"}}

    def get(self, key, default=None):
        return self.data.get(key, default)

    @property
    def name(self):
        return self.data.get("state", IDLE)

    def save(self, **changes):
        self.data.update(changes)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.rename(tmp, self.path)
