"""Run an entry point and SIGKILL it just before its Nth rename of a file into a folder:

    python tests/killed_before_rename.py N FOLDER src/train.py [overrides ...]

Every write the project makes is a temp file renamed into place, so killing the process
before each rename in turn crashes it between each pair of writes that land in FOLDER."""

import os
import runpy
import signal
import sys
from pathlib import Path

kill_at, folder, script = int(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3]
renames = 0
real_replace = os.replace


def replace(source, target, *args, **kwargs):
    global renames
    if Path(target).resolve().parent == folder:
        renames += 1
        if renames == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, target, *args, **kwargs)


os.replace = replace
sys.argv = sys.argv[3:]
runpy.run_path(script, run_name="__main__")
