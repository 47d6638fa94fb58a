"""The one logging set-up of the workflow's script adapters.

Standard library only, on purpose: an adapter calls :func:`log_to` before it imports torch, matplotlib or any
heavy kicl module, so that warnings printed while those load end up in the rule's log file, not on the terminal.
"""

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
_opened = None  # the file this module last opened, closed when log_to switches files


def log_to(path, level=logging.INFO):
    """Send this process's stderr and the root logger to `path` (a rule's ``log[0]``), line-buffered.

    Calling it again (e.g. twice in one test process) switches to the new file and closes the previous one.
    """
    global _opened
    stream = open(path, "w", buffering=1)  # noqa: SIM115 (lives as long as the process's stderr)
    sys.stderr = stream
    logging.basicConfig(stream=stream, level=level, format=FORMAT, force=True)
    if _opened is not None:
        _opened.close()
    _opened = stream
    return stream
