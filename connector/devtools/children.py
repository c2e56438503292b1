"""Child processes of ``dev``, the local stack and the benchmark never outlive their parent.

Each child starts in its own session, so a Ctrl-C or a closed terminal reaches only the parent,
which stops its children in order (workers, then simulators, then the broker). And on Linux each
child asks the kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so a parent
killed with SIGKILL, or crashing, leaves nothing running or listening. The signal follows the
thread that started the child: start children from the event loop's thread (as ``LocalStack``
and ``EmbeddedBroker`` do), not from a short-lived worker thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, Callable

PR_SET_PDEATHSIG = 1     # <linux/prctl.h>


def _die_with(parent: int) -> Callable[[], None] | None:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up here: nothing to resolve after fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:   # runs in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:      # the parent died before prctl took effect: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def child_options() -> dict[str, Any]:
    """Keyword arguments for ``subprocess.Popen`` / ``asyncio.create_subprocess_exec``: a child
    in its own session that dies with this process (on Linux)."""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        preexec = _die_with(os.getpid())
        if preexec is not None:
            options["preexec_fn"] = preexec
    return options
