"""The programs some tests run beside Python: found, or skipped outside CI and an error in CI.

`.ci/run` installs every one of them: Debian packages with apt-get, and the deploy kit's
linters with pip into `.tools/` (TOOLS_BIN, a virtual environment of their own: checkov's
dependencies would clash with pdm.lock). A developer without one sees the tests that need it
skipped, with what to install; in CI (`CI` set, as `.ci/run` runs) a missing one fails.
"""

import os
import shutil
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))
TOOLS = Path(__file__).resolve().parent.parent / ".tools"
TOOLS_BIN = TOOLS / "bin"
# Debian puts some in sbin (mosquitto), which is not on every user's PATH.
_SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])


class MissingTool(Exception):
    """In CI, a program the tests need is not installed: .ci/run should have installed it."""


def find(command: str) -> str | None:
    """The path of `command`: the pinned one in .tools/bin, else on PATH or in sbin."""
    return (
        shutil.which(command, path=str(TOOLS_BIN))
        or shutil.which(command)
        or shutil.which(command, path=_SBIN)
    )


def why(command: str, source: str) -> str:
    return f"{command} is not installed ({source}; .ci/run installs it)"


def tool(command: str, source: str) -> str:
    """The path of `command`, for a test or fixture: skips outside CI, fails in CI."""
    found = find(command)
    if found is None:
        if IN_CI:
            pytest.fail(why(command, source), pytrace=False)
        pytest.skip(why(command, source))
    return found


def needs(command: str, source: str) -> pytest.MarkDecorator:
    """A mark for the tests that need `command`: skipped outside CI; in CI an import error."""
    found = find(command)
    if found is None and IN_CI:
        raise MissingTool(why(command, source))
    return pytest.mark.skipif(found is None, reason=why(command, source))
