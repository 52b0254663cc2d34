"""Serve on port 3201 with ./dev-configs, prepared with the example configs on first use.

The service itself never creates ESP32_CONFIGS_DIR; this development helper does, once.
"""

import os
import shutil
import sys
from pathlib import Path

from quart_iot.__main__ import main as serve

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    directory = Path(os.environ.setdefault("ESP32_CONFIGS_DIR", str(ROOT / "dev-configs")))
    if not directory.exists():
        directory.mkdir(parents=True)
        for example in sorted((ROOT / "examples").glob("*.json")):
            shutil.copy(example, directory / example.name)
        print(f"dev: prepared {directory} with the example configs", file=sys.stderr)
    os.environ.setdefault("PORT", "3201")
    print(
        f"dev: serving {directory} on http://127.0.0.1:{os.environ['PORT']} (docs at /api/docs)",
        file=sys.stderr,
    )
    return serve()


if __name__ == "__main__":
    sys.exit(main())
