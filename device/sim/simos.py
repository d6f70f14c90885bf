# The os module device code sees on the simulated board: the unix port's
# os, with the calls that change the board's filesystem (rename, remove,
# mkdir, rmdir) going through simfs, so a power cut can land on them.
# simfs.install() puts this module in sys.modules["os"].
import os as _os

import simfs

for _name in dir(_os):
    if not _name.startswith("__"):
        globals()[_name] = getattr(_os, _name)
del _name

rename = simfs.rename
remove = simfs.remove
mkdir = simfs.mkdir
rmdir = simfs.rmdir
