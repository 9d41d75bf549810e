# Nexus gateway image: `docker build -t nexus .` then `docker run -p 8000:8000 nexus`.
# The entry point is `nexus`, as in the Rust Nexus's image: arguments are a command line, e.g.
# `docker run -p 8000:8000 -v $PWD/nexus.toml:/home/nexus/nexus.toml nexus serve --config nexus.toml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH="/app/.venv/bin:${PATH}"

RUN pip install --no-cache-dir uv

WORKDIR /app
COPY . .
# Exactly the locked versions, runtime only, installed as regular (non-editable) packages.
RUN uv sync --all-packages --frozen --no-dev --no-editable \
    && rm -rf /root/.cache

# An unprivileged user with a home: durable state defaults to ~/.local/state/nexus/.
# The working directory is that home, where the Rust Nexus's image mounts its configuration:
# a mounted /home/nexus/nexus.toml is found without flags, and `--config nexus.toml` names it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/nexus --shell /usr/sbin/nologin nexus
USER nexus
WORKDIR /home/nexus

EXPOSE 8000

# Python is in the image, curl is not. NEXUS_PORT, if set, moves the server and so the probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('NEXUS_PORT', '8000'), timeout=3)"]

ENTRYPOINT ["nexus"]
CMD ["serve", "--host", "0.0.0.0"]
