"""The script in docs/embedding.md runs, as written, against a fake backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from nexus_core.testing import FakeBackend

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"


def test_embedding_doc_script_runs() -> None:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None, "docs/embedding.md has no python block"
    with FakeBackend("local", ["tiny"]).running() as backend:
        result = subprocess.run(
            [sys.executable, "-c", match.group(1)],
            env={**os.environ, "BACKEND_URL": backend.url, "MODEL": "tiny"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        paths = [r.path for r in backend.inference_requests]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "backends: [('local', 'healthy')]" in out
    assert "models: ['default', 'tiny']" in out
    assert "reply: Hello from local" in out
    assert out.count("chunk:") >= 3
    assert "embeddings: 2" in out
    assert "error: 404 model_not_found" in out
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"]
