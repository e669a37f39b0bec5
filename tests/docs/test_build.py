"""``make docs`` as a test: the API reference and the guides build with no warning at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_without_a_warning(tmp_path: Path) -> None:
    # The same command as `make docs` (-W: any warning is an error), into a folder of its own.
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
                             str(ROOT / "docs"), str(tmp_path / "html")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"the docs build failed or warned:\n{result.stderr}"
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    reference = (tmp_path / "html" / "api.html").read_text()
    for documented in ("pystrands.client.PyStrandsClient", "pystrands.interfaces.IBackend",
                       "pystrands.service.BackendService", "pystrands.broker.config.BrokerConfig"):
        assert f'id="{documented}"' in reference, f"{documented} is missing from the API reference"
    guides = (tmp_path / "html" / "index.html").read_text()
    assert 'href="SECURITY.html"' in guides and 'href="api.html"' in guides
