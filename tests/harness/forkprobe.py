"""A stand-in for `python -m prefect.engine` in tests of acceld's warm flow-run starter
(service/flowstarter.py): `show` prints what it was started with and exits with $PROBE_CODE; `sleep` prints
its pid and waits to be signalled."""

import json
import os
import signal
import sys
import time

if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "show"
    if mode == "show":
        seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "probe": os.environ.get("PROBE_X")}
        seen["ppid"] = os.getppid()
        seen["sigusr1"] = signal.getsignal(signal.SIGUSR1).name
        print(json.dumps(seen), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        sys.exit(int(os.environ.get("PROBE_CODE", "0")))
    print(os.getpid(), flush=True)
    time.sleep(600)
