"""``nexus serve``: run the gateway under uvicorn (uvloop + httptools) until SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from nexus_core import plugins
from nexus_core.config import ConfigError, LogFormat, NexusConfig, StateBackend
from nexus_core.gateway import Gateway
from nexus_core.http import UpstreamClientError
from nexus_core.state import open_store
from nexus_core.telemetry import TelemetryError
from nexus_server.app import create_app
from nexus_server.collector import SurvivorFreezer
from nexus_server.protocol import ClientLimits, protocol_for

log = logging.getLogger("nexus.server")

#: What a log line never holds as it is: C0 controls (CR, LF, ESC...), DEL, C1 controls (U+0080
#: to U+009F, U+009B CSI among them) and the Unicode line and paragraph separators. A model name,
#: a request id or a backend's error message with one of them could otherwise forge log lines or
#: drive the terminal that shows them.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The same but LF: a traceback keeps its lines.
_CONTROL_BUT_LF = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
#: What JSON's own escaping leaves raw (it escapes C0 controls only).
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with each control character written as an escape: ``\\r``, ``\\x1b``, ``\\x9b``.

    ``isprintable`` (one C loop) is the fast path: every character ``CONTROL`` matches is not
    printable, so printable text is returned as it is.
    """
    return text if text.isprintable() else CONTROL.sub(_escaped, text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, the request's fields,
    exception.

    A line about a request carries its id as ``request_id`` (from ``extra={"request_id": ...}``);
    a request line (logger ``nexus.requests``) also has its fields under ``request`` (see
    docs/observability.md for the schema). No control character is left raw (``json_line``).
    """

    def format(self, record: logging.LogRecord) -> str:
        return json_line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            getattr(record, "nexus", None),
            self.formatException(record.exc_info) if record.exc_info else None,
            getattr(record, "request_id", None) or None,
        )


def json_line(
    created: float,
    level: str,
    logger: str,
    message: str,
    request: dict[str, Any] | None = None,
    exception: str | None = None,
    request_id: str | None = None,
) -> str:
    """One JSON log line (docs/log-schema.json)."""
    entry: dict[str, object] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if request_id is not None:
        entry["request_id"] = request_id
    if request is not None:
        entry["request"] = request
    if exception is not None:
        entry["exception"] = exception
    line = json.dumps(entry, ensure_ascii=False)
    if not line.isascii():  # what JSON leaves raw is outside ASCII; isascii reads a flag
        line = _JSON_RAW.sub(lambda match: f"\\u{ord(match.group()):04x}", line)
    return line


PRETTY_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class PrettyFormatter(logging.Formatter):
    """``PRETTY_FORMAT``, one line per record: control characters are escaped (``\\r\\n``,
    ``\\x1b``); a traceback keeps its own lines, with every other control character escaped."""

    def __init__(self) -> None:
        super().__init__(PRETTY_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _CONTROL_BUT_LF.sub(_escaped, super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _CONTROL_BUT_LF.sub(_escaped, super().formatStack(stack_info))


class NexusHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler ``nexus serve`` logs through (to stderr)."""


class RequestLines:
    """Writes request log lines straight to ``nexus serve``'s handler, as its formatter would.

    A line per request through ``logging`` costs a record, its attributes, the logger walk and
    the formatter's work (tens of microseconds, the dearest single step of a fast request). When
    the request lines would end up in ``NexusHandler`` alone, this writes the very same text
    (the tests compare the two) under the handler's lock; otherwise ``logging`` is used.
    """

    def __init__(self, handler: NexusHandler) -> None:
        self.handler = handler
        self.json = isinstance(handler.formatter, JsonFormatter)
        self._second = -1
        self._stamp = ""

    @classmethod
    def for_current_logging(cls) -> RequestLines | None:
        """A writer when request lines reach exactly one ``NexusHandler`` and nothing else."""
        requests = logging.getLogger("nexus.requests")
        chain = [requests, logging.getLogger("nexus")]
        if any(logger.handlers or logger.filters or not logger.propagate for logger in chain):
            return None
        root = logging.getLogger()
        if len(root.handlers) != 1 or root.filters:
            return None
        handler = root.handlers[0]
        if not isinstance(handler, NexusHandler) or handler.filters:
            return None
        if handler.level > logging.INFO:
            return None
        return cls(handler)

    def __call__(self, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.json:
            line = json_line(
                now, "info", "nexus.requests", message, fields, None, fields["request_id"] or None
            )
        else:
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            millis = int((now - second) * 1000)
            line = f"{self._stamp},{millis:03d} INFO    nexus.requests: {message}"
            if not line.isprintable():  # as PrettyFormatter does (escape_controls)
                line = CONTROL.sub(_escaped, line)
        handler = self.handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            stream.flush()
        except Exception:  # as logging does: a broken stream must not break requests
            handler.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            handler.release()


def setup_logging(config: NexusConfig) -> None:
    """Configure the root logger from ``[logging]``."""
    level = getattr(logging, config.logging.level.value.upper())
    handler = NexusHandler(sys.stderr)
    if config.logging.format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PrettyFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format shows where a call was made, or from which thread or process: skip working
    # it out for every record (the logging HOWTO's "Optimization" section). With a line per
    # request this halves the cost of a line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Libraries that log every HTTP call at INFO (the health probes' client) stay quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    for component, component_level in config.logging.component_levels.items():
        logging.getLogger(f"nexus.{component}").setLevel(component_level.value.upper())


class GatewayServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT that drained cleanly ends the process with 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Handle signals as uvicorn does, without re-raising them after a clean shutdown."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


#: Connections the kernel queues for Nexus to accept (Linux caps it at net.core.somaxconn, 4096
#: by default since 5.4). A queue that overflows while Nexus is short of CPU ends in connections
#: reset by the kernel (docs/performance.md, "Open streams"); uvicorn's default is 2048.
LISTEN_BACKLOG = 4096
#: File descriptors kept for everything but client connections and their backend connections
#: (listening socket, state store, log files, health probes, idle pooled backend connections).
FD_RESERVE = 256
#: Largest WebSocket message read from a client: the dashboard's page sends none.
WS_MAX_BYTES = 64 * 1024


def raise_open_file_limit(needed: int) -> int | None:
    """Raise this process's open-file limit towards ``needed``; return the soft limit (None: none).

    The soft limit goes up to the hard one; when the hard one is below ``needed`` it is raised
    too, which a privileged process may do (``CAP_SYS_RESOURCE``, up to ``fs.nr_open``). What was
    set is logged; when ``needed`` is out of reach, a warning says what to raise.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == infinity:
        return None
    before = soft
    if hard != infinity and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft = hard = needed
    target = hard if hard != infinity else max(soft, needed)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft != before:
        log.info("open-file limit raised from %d to %d (hard limit %s)", before, soft, hard)
    if soft < needed:
        log.warning(
            "the open-file limit is %d; %d are needed for server.max_connections: raise the hard "
            "limit to %d (ulimit -Hn %d, LimitNOFILE=%d in systemd, --ulimit nofile=%d:%d in "
            "Docker)",
            soft,
            needed,
            needed,
            needed,
            needed,
            needed,
            needed,
        )
    return soft


def connection_cap(configured: int) -> int:
    """``server.max_connections``, lowered to fit the file-descriptor limit.

    The limit is raised first (``raise_open_file_limit``). Each client connection may need a
    second descriptor for its backend, so at most half of what is left after ``FD_RESERVE``.
    """
    soft = raise_open_file_limit(2 * configured + FD_RESERVE)
    if soft is None:
        return configured
    fits = max(16, (soft - FD_RESERVE) // 2)
    if configured > fits:
        log.warning(
            "server.max_connections = %d does not fit the open-file limit of %d: at most %d "
            "client connections (raise the limit with ulimit -n or LimitNOFILE=)",
            configured,
            soft,
            fits,
        )
        return fits
    return configured


def uvicorn_config(app: Any, config: NexusConfig, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for Nexus's app: its protocol, limits and quiet logging."""
    server = config.server
    settings: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": protocol_for(
            ClientLimits.from_config(server, options.pop("max_connections", None))
        ),
        "lifespan": "on",
        "access_log": False,
        "log_level": config.logging.level.value,
        "log_config": None,
        "timeout_graceful_shutdown": int(server.drain_timeout_seconds) or None,
        "server_header": False,
        "proxy_headers": False,
        "ws_max_size": WS_MAX_BYTES,
        "backlog": LISTEN_BACKLOG,
    }
    settings.update(options)
    return uvicorn.Config(app, **settings)


def build_server(config: NexusConfig, config_file: Path | None = None) -> uvicorn.Server:
    """A uvicorn server for the gateway described by ``config`` (read from ``config_file``).

    The file tells this instance from others on the machine: with the default ``[state]``,
    each configuration file has a state file of its own (``nexus_core.state.sqlite_path``).
    """
    store = open_store(config.state, config_file=config_file, port=config.server.port)
    gateway = Gateway(config, state=store)
    gateway.monitor.line_writer = RequestLines.for_current_logging()
    app = create_app(gateway, default_ollama=True)
    cap = connection_cap(config.server.max_connections)
    return GatewayServer(uvicorn_config(app, config, max_connections=cap))


def run(
    config: NexusConfig, *, source: str = "configuration", config_file: Path | None = None
) -> int:
    """Serve until stopped; 0 on a clean shutdown (SIGTERM drains in-flight requests first).

    1 at once, one line per problem on stderr, when a backend's type is not installed or breaks
    the cloud rules of its adapter (``source`` names the configuration in those lines).
    """
    setup_logging(config)
    for line in config.deprecation_warnings:  # keys of the Rust Nexus, once each
        log.warning("%s", line)
    problems = plugins.config_problems(config, source)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    workers = config.server.workers
    if workers > 1:
        return run_workers(config, workers, config_file)
    log.info("nexus listening on http://%s:%d", config.server.host, config.server.port)
    return _serve(config, None, config_file)


def _serve(config: NexusConfig, sock: socket.socket | None, config_file: Path | None) -> int:
    try:
        server = build_server(config, config_file)
    except (TelemetryError, UpstreamClientError) as exc:  # an extra that is not installed
        log.error("%s", exc)
        return 1
    except ConfigError as exc:  # a plugin's routing strategy that fails to build
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    # Everything imported so far lives for the whole run, and so does most of what survives a
    # young collection under load (open streams): each is walked once, then frozen
    # (nexus_server.collector; docs/performance.md, "Open streams").
    SurvivorFreezer().install()
    server.run(sockets=[sock] if sock is not None else None)
    return 0 if server.started else 1


#: A worker that dies is replaced after ``RESTART_DELAY_SECONDS``, doubled for each other death
#: of that worker within ``RESTART_WINDOW_SECONDS`` (at most ``RESTART_DELAY_MAX_SECONDS``).
RESTART_DELAY_SECONDS = 0.1
RESTART_DELAY_MAX_SECONDS = 5.0
RESTART_WINDOW_SECONDS = 60.0
#: This many deaths of one worker within the window and the server gives up (exit 1): a worker
#: that cannot stay up will not be fixed by starting it again, and a process manager restarting
#: the whole server, with its log, is more use than a silent loop.
RESTARTS_IN_WINDOW = 5


def run_workers(config: NexusConfig, workers: int, config_file: Path | None = None) -> int:
    """Serve one listening socket from ``workers`` forked processes, replacing any that dies.

    Each worker is a whole gateway (its own health view); spend, keys, rate limits and the
    backends added at run time go through the state store, which must be shared.
    """
    if config.state.backend is StateBackend.MEMORY or sys.platform == "win32":
        log.error(
            'server.workers = %d needs [state] backend = "sqlite" or "redis" (shared by '
            "the workers) and a POSIX system",
            workers,
        )
        return 1
    host, port = config.server.host, config.server.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    log.info("nexus listening on http://%s:%d with %d workers", host, port, workers)
    return WorkerSupervisor(config, sock, config_file).run(workers)


def _death(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class WorkerSupervisor:
    """Forks the workers, replaces each that dies (with a backoff), stops them on SIGTERM/SIGINT.

    The parent keeps the listening socket (a replacement inherits it) and does nothing else:
    while a worker is being replaced, its siblings go on accepting, and connections that arrive
    when none is left wait in the socket's backlog.
    """

    def __init__(self, config: NexusConfig, sock: socket.socket, config_file: Path | None) -> None:
        self.config = config
        self.sock = sock
        self.config_file = config_file
        self.children: dict[int, int] = {}  # pid -> worker number
        self.deaths: dict[int, list[float]] = {}  # worker number -> times it died, in the window
        self.stopping = False
        self.failed = False

    def spawn(self, number: int) -> None:
        """Fork worker ``number``; the child serves and never returns here."""
        pid = os.fork()
        if pid == 0:  # a worker: serve, and leave without running the parent's clean-up
            code = 1
            try:
                # uvicorn installs its own handlers when it starts; until then, the defaults.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _serve(self.config, self.sock, self.config_file)
            finally:
                os._exit(code)
        self.children[pid] = number

    def stop(self, signum: int, _: Any = None) -> None:
        """Pass ``signum`` on to every worker and replace none from now on."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.close()  # no new connections queue up for workers that are leaving
        for child in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def run(self, workers: int) -> int:
        """Until stopped: 0 when every worker drained cleanly, else 1."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for number in range(workers):
            self.spawn(number)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            number = self.children.pop(pid, -1)
            if number < 0:  # not a worker
                continue
            if self.stopping:
                if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self.failed = True
                continue
            self.replace(number, pid, status)
        return 1 if self.failed else 0

    def replace(self, number: int, pid: int, status: int) -> None:
        """Start worker ``number`` again after its death, or give up when it keeps dying."""
        now = time.monotonic()
        deaths = [t for t in self.deaths.get(number, []) if now - t < RESTART_WINDOW_SECONDS]
        deaths.append(now)
        self.deaths[number] = deaths
        if len(deaths) >= RESTARTS_IN_WINDOW:
            log.error(
                "worker %d (pid %d) %s, %d deaths within %g s: giving up, stopping the server",
                number,
                pid,
                _death(status),
                len(deaths),
                RESTART_WINDOW_SECONDS,
            )
            self.failed = True
            self.stop(signal.SIGTERM)
            return
        delay = min(RESTART_DELAY_MAX_SECONDS, RESTART_DELAY_SECONDS * 2 ** (len(deaths) - 1))
        log.warning(
            "worker %d (pid %d) %s: starting a new one in %.1f s",
            number,
            pid,
            _death(status),
            delay,
        )
        deadline = now + delay
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        if not self.stopping:
            self.spawn(number)
