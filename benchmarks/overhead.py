"""The former overhead benchmark; now `run.py`, which takes the same flags and more.

Run: uv run python benchmarks/overhead.py [--duration 8] [--port 8000] [--metrics on|off]
     [--log-level info|warning] [--only c=32]
"""

from __future__ import annotations

from run import main

if __name__ == "__main__":
    raise SystemExit(main())
