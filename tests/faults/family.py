"""A family of processes for fault tests: ``python family.py ROLE``, started by a replica.

Roles:
- ``stubborn``: starts a ``grandchild``;
- ``own-session``: started by its parent in a session of its own (out of the replica's group);
- ``forker``: forks and exits; the fork leaves the session (setsid), an orphan at once, and
  becomes a ``daemon`` (a double-forked daemon; the role shows once it has left).
Every member ignores SIGTERM, sleeps ``LIFE_S`` and exits: a safety net should a test fail to
end them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

LIFE_S = 120


def main(role: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if role == "stubborn":
        subprocess.Popen([sys.executable, __file__, "grandchild"])
    elif role == "forker":
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
        os.execv(sys.executable, [sys.executable, __file__, "daemon"])
    time.sleep(LIFE_S)


if __name__ == "__main__":
    main(sys.argv[1])
