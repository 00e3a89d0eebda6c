"""PID 1 of a test's destination "host" (a PID namespace): starts the command given,
reaps every orphan (a migrated process ends up here), and lives until it is killed, so the
namespace outlives the receiver. Writes 'exit STATUS' of the command to the file in argv[1]."""
import os
import subprocess
import sys

status_file, argv = sys.argv[1], sys.argv[2:]
child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os.pause() if hasattr(os, "pause") else None
        continue
    if pid == child.pid:
        with open(status_file, "w") as f:
            f.write(f"exit {os.waitstatus_to_exitcode(status)}\n")
