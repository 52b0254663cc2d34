import subprocess
from pathlib import Path

from tests.server import running_server
from tests.tools import find, needs

CHROMIUM = find("chromium") or find("chromium-browser")
# The flags keep Chromium off the network entirely: the page must render from loopback alone.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--dump-dom",
]


@needs("chromium", "Debian package chromium")
def test_docs_render_in_a_browser_without_internet(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    configs = tmp_path / "configs"
    configs.mkdir()
    with running_server(configs) as server:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"{server.url}/api/docs"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    dom = result.stdout
    for path in (
        "/api/configs",
        "/api/configs/{mac_address}",
        "/api/configs/{mac_address}.json",
        "/api/health",
        "/api/health/live",
    ):
        assert f'data-path="{path}"' in dom, f"{path} not rendered"
