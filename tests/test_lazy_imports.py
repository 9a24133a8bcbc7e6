"""What a gateway loads only when its configuration needs it: an idle gateway's memory."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_the_daemon_loads_httpx_only_with_an_http_camera() -> None:
    assert _loaded_after("import gateway.app.daemon", ("httpx", "httpcore")) == []
    assert _loaded_after("import drivers.camera.policy, drivers.camera.calls", ("httpx",)) == []
    assert _loaded_after("import drivers.camera.http", ("httpx",)) == ["httpx"]
