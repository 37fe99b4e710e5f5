"""Process-exit handling for queued writes: SIGTERM becomes a normal, draining exit.

Python runs ``atexit`` hooks (where the bridge drains write-behind queues) on a normal
exit or ``SystemExit``, but a SIGTERM with the default disposition kills the process
without running them — which is how containers are stopped. When the first write-behind
queue is created, asynccache therefore turns SIGTERM into ``SystemExit(128 + SIGTERM)``
if, and only if, nobody installed a handler yet and we are on the main thread. Opt out
with the environment variable ``ASYNCCACHE_NO_SIGTERM_HANDLER=1`` or by installing your
own handler first.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger("asynccache")
_installed = False


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    logger.warning("asynccache: SIGTERM received, exiting after draining queued writes")
    raise SystemExit(128 + signum)


def install_sigterm_drain() -> bool:
    """Make SIGTERM exit through ``atexit`` (draining queues); return whether installed."""
    global _installed
    if _installed or os.environ.get("ASYNCCACHE_NO_SIGTERM_HANDLER"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return False
    _installed = True
    return True
