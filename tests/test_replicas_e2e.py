"""Three replicas behind nginx, sharing one Redis: the topology of ``deploy/``, run for real.

One cluster for the module: a real ``redis-server`` (append-only file, fsync on every write), three
real ``nexus serve`` processes (``--no-discovery``, ``[state] backend = "redis"``) and Debian's
nginx in front of them with the proxy settings of ``deploy/nginx/nexus-proxy.conf`` (the same
file), all on 127.0.0.1, started in parallel. Clients are the ``openai`` SDK and httpx, through
nginx unless a test talks to one replica on purpose. Each test starts with the whole cluster (a
replica killed by an earlier test is started again; Redis is restarted on its port and files).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.accounting import GLOBAL_SCOPE, month_of
from nexus_core.auth import COLLECTION as KEYS_COLLECTION
from nexus_core.state.redis import RedisStore
from nexus_core.testing import FakeBackend, free_port
from nexus_core.testing.fake_backend import Behaviour
from tests.conftest import NEXUS, toml_text

ROOT = Path(__file__).resolve().parent.parent
PROXY_CONF = ROOT / "deploy" / "nginx" / "nexus-proxy.conf"
ADMIN_KEY = "nxk-admin-replicas-test"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]
#: A replica catches up with keys and run-time backends every 2 s (SYNC_SECONDS); budgets 0.5 s.
CATCH_UP_SECONDS = 10.0


def _tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        message = f"{name} is not installed (Debian: .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _wait(check: Callable[[], bool], what: str, timeout: float = CATCH_UP_SECONDS) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Redis:
    """A persistent ``redis-server``: every write in the append-only file before it is answered."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def wait_ready(self) -> None:
        _wait(lambda: _answers_ping(self.port), "redis-server answers PING")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the append-only file holds."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)


@dataclass
class Replica:
    """One ``nexus serve`` process of the cluster."""

    name: str
    config: Path
    environment: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.config.with_suffix(f".{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [NEXUS, "serve", "--config", str(self.config), "--no-discovery",
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.environment, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log()
        try:
            return httpx.get(self.url + "/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.config.with_suffix(f".{self.name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Cluster:
    redis: Redis
    replicas: list[Replica]
    nginx_url: str
    local: FakeBackend
    extra: FakeBackend

    def admin(self, replica: Replica) -> httpx.Client:
        return httpx.Client(
            base_url=replica.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        )

    def create_key(self, replica: Replica, name: str, **limits: Any) -> str:
        """A gateway key made through one replica's admin API; its plaintext."""
        with self.admin(replica) as api:
            made = api.post("/admin/keys", json={"name": name, **limits})
        assert made.status_code == 201, made.text
        key: str = made.json()["key"]
        return key


def _chat(url: str, key: str, model: str = "fake-model", **extra: Any) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 5, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _nginx_config(prefix: Path, listen: int, replicas: list[Replica]) -> str:
    servers = "\n".join(
        f"        server 127.0.0.1:{r.port} max_fails=1 fail_timeout=5s;" for r in replicas
    )
    return f"""
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream nexus {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            include {prefix}/nexus-proxy.conf;
            # Which replica answered, so the test can see the requests spread.
            add_header X-Replica $upstream_addr always;
        }}
    }}
}}
"""


def _replica_of(response: httpx.Response) -> str:
    """The replica nginx's answer came from (the last one it tried)."""
    return response.headers["x-replica"].split(",")[-1].strip()


def _start_nginx(binary: str, prefix: Path, listen: int, replicas: list[Replica]) -> Any:
    """nginx with its own prefix and temporary files; unprivileged (``nobody``) when run as root."""
    shutil.copyfile(PROXY_CONF, prefix / "nexus-proxy.conf")
    (prefix / "nginx.conf").write_text(_nginx_config(prefix, listen, replicas))
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        for path in (prefix, *prefix.iterdir()):
            shutil.chown(path, "nobody")
        as_user = {"user": "nobody", "group": "nogroup" if _has_group("nogroup") else "nobody"}
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*command[:-2], "-t"], capture_output=True, text=True, **as_user)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        **as_user,
    )  # fmt: skip


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, three replicas and nginx, started in parallel; all stopped at the end."""
    nginx_binary = _tool("nginx")
    _tool("redis-server")
    directory = tmp_path_factory.mktemp("replicas")
    local = FakeBackend("local", models=["fake-model", "priced-model"])
    extra = FakeBackend("extra", models=["extra-model"])
    prefix = Path(tempfile.mkdtemp(prefix="nexus-nginx-"))
    prefix.chmod(0o755)
    nginx: subprocess.Popen[bytes] | None = None
    replicas: list[Replica] = []
    redis = Redis(directory)
    with local.running(), extra.running():
        config = directory / "nexus.toml"
        config.write_text(
            toml_text(
                {
                    "server": {
                        "drain_timeout_seconds": 1.0,
                        "first_byte_timeout_seconds": 5.0,
                        "request_timeout_seconds": 30.0,
                        # nginx: its X-Forwarded-For is believed.
                        "trusted_proxies": ["127.0.0.1"],
                    },
                    "discovery": {"enabled": False},
                    "health_check": {"interval_seconds": 3600},
                    "auth": {"enabled": True, "admin_key_env": "NEXUS_ADMIN_KEY"},
                    "state": {"backend": "redis", "redis_url_env": "NEXUS_REDIS_URL"},
                    # A tenth of a cent per token, on the one model that is priced.
                    "pricing": [
                        {
                            "model": "priced-model",
                            "input_per_million": 1000,
                            "output_per_million": 1000,
                        },
                    ],
                    "backends": [{"name": "local", "url": local.url}],
                }
            )
        )
        environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        environment |= {
            "NEXUS_DISCOVERY": "false",
            "NEXUS_REDIS_URL": redis.url,
            "NEXUS_ADMIN_KEY": ADMIN_KEY,
        }
        replicas = [Replica(f"r{n}", config, environment) for n in (1, 2, 3)]
        listen = free_port()
        try:
            redis.start()
            redis.wait_ready()
            for replica in replicas:
                replica.start()
            nginx = _start_nginx(nginx_binary, prefix, listen, replicas)
            _wait(lambda: all(r.ready() for r in replicas), "every replica is ready", 60)
            nginx_url = f"http://127.0.0.1:{listen}"
            _wait(lambda: _up(nginx_url), "nginx answers")
            yield Cluster(redis, replicas, nginx_url, local, extra)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
            for replica in replicas:
                replica.stop()
            if redis.process is not None and redis.process.poll() is None:
                redis.process.terminate()
                redis.process.wait(10)
            shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(autouse=True)
def whole(cluster: Cluster) -> None:
    """Every test starts with three replicas: one killed by an earlier test is started again."""
    dead = [r for r in cluster.replicas if r.process is None or r.process.poll() is not None]
    for replica in dead:
        replica.start()
    for replica in dead:
        _wait(replica.ready, f"{replica.name} is back", 60)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _known_everywhere(cluster: Cluster, key: str) -> None:
    """Wait until every replica knows ``key`` (a listing, which takes nothing from a bucket)."""
    for replica in cluster.replicas:
        _wait(
            lambda r=replica: (
                httpx.get(  # type: ignore[misc]
                    r.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
                ).status_code
                == 200
            ),
            f"{replica.name} knows the key",
        )


def _sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_a_key_made_on_one_replica_works_on_all(cluster: Cluster) -> None:
    first, *others = cluster.replicas
    key = cluster.create_key(first, "everywhere")
    # The replica that made it knows it at once; the others within their catch-up interval.
    assert _chat(first.url, key).status_code == 200
    for replica in others:
        _wait(lambda r=replica: _chat(r.url, key).status_code == 200, f"{replica.name} takes it")  # type: ignore[misc]
    answers = [_chat(cluster.nginx_url, key) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert {_replica_of(a) for a in answers} == {f"127.0.0.1:{r.port}" for r in cluster.replicas}
    # An unknown key is refused by every replica.
    assert _chat(cluster.nginx_url, "nxk-not-a-key").status_code == 401


def test_a_rate_limit_of_n_per_minute_admits_n_in_total(cluster: Cluster) -> None:
    limit = 6
    key = cluster.create_key(cluster.replicas[1], "limited", requests_per_minute=limit)
    _known_everywhere(cluster, key)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _chat(cluster.nginx_url, key), range(3 * limit)))
    statuses = sorted(a.status_code for a in answers)
    # One bucket in Redis for the three replicas: N in all, not N each (a bucket refills one
    # request every 60/N = 10 s, longer than these requests take).
    assert statuses == [200] * limit + [429] * (2 * limit)
    refused = [a for a in answers if a.status_code == 429]
    assert {a.json()["error"]["code"] for a in refused} == {"rate_limit_exceeded"}
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    # nginx spread them: every replica refused some once the shared bucket was empty.
    assert {_replica_of(a) for a in refused} == {f"127.0.0.1:{r.port}" for r in cluster.replicas}


def test_a_budget_reached_through_several_replicas_blocks_on_all(cluster: Cluster) -> None:
    key = cluster.create_key(cluster.replicas[2], "budgeted", monthly_budget_usd=0.05)
    _known_everywhere(cluster, key)
    served: list[str] = []
    refused: httpx.Response | None = None
    for _ in range(60):
        answer = _chat(cluster.nginx_url, key, model="priced-model")
        if answer.status_code == 429:
            refused = answer
            break
        assert answer.status_code == 200, answer.text
        served.append(_replica_of(answer))
    assert refused is not None, "the budget was never reached"
    assert refused.json()["error"]["code"] == "key_budget_exceeded"
    # Several replicas spent it together...
    assert len(set(served)) >= 2, served
    # ...and every one of them now refuses the key (each re-reads the spend every 0.5 s).
    for replica in cluster.replicas:
        _wait(
            lambda r=replica: _chat(r.url, key, model="priced-model").status_code == 429,  # type: ignore[misc]
            f"{replica.name} blocks the key",
        )
        stats = httpx.get(
            replica.url + "/v1/stats", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ).json()
        assert stats["budget"]["spent_usd"] >= 0.05
        assert stats["budget"]["remaining_usd"] == 0


def test_a_backend_added_at_run_time_is_served_by_all(cluster: Cluster) -> None:
    key = cluster.create_key(cluster.replicas[0], "backends")
    _known_everywhere(cluster, key)
    assert _chat(cluster.nginx_url, key, model="extra-model").status_code == 404
    with cluster.admin(cluster.replicas[1]) as api:
        added = api.post("/admin/backends", json={"url": cluster.extra.url, "name": "extra"})
        assert added.status_code == 201, added.text
    before = len(cluster.extra.inference_requests)
    for replica in cluster.replicas:
        _wait(
            lambda r=replica: _chat(r.url, key, model="extra-model").status_code == 200,  # type: ignore[misc]
            f"{replica.name} serves the added backend",
        )
    answers = [_chat(cluster.nginx_url, key, model="extra-model") for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert len({_replica_of(a) for a in answers}) == 3
    assert answers[0].json()["choices"][0]["message"]["content"] == "Hello from extra"
    assert len(cluster.extra.inference_requests) >= before + 6
    # Removed on one replica, it is dropped by all.
    with cluster.admin(cluster.replicas[2]) as api:
        assert api.delete("/admin/backends/extra").status_code == 200
    for replica in cluster.replicas:
        _wait(
            lambda r=replica: _chat(r.url, key, model="extra-model").status_code == 404,  # type: ignore[misc]
            f"{replica.name} dropped the backend",
        )


def test_a_responses_conversation_continues_on_any_replica(cluster: Cluster) -> None:
    key = cluster.create_key(cluster.replicas[0], "conversations")
    _known_everywhere(cluster, key)
    through_nginx = _sdk(cluster.nginx_url, key)
    previous = through_nginx.responses.create(model="fake-model", input="My name is Ada.")
    # Each next turn on another replica, named directly, then through nginx again.
    for url in [*(r.url for r in cluster.replicas), cluster.nginx_url]:
        turn = _sdk(url, key).responses.create(
            model="fake-model", input="What is my name?", previous_response_id=previous.id
        )
        assert turn.previous_response_id == previous.id
        chat = cluster.local.inference_requests[-1].json
        assert chat["messages"][0] == {"role": "user", "content": "My name is Ada."}
        previous = turn
    # Five turns, each user turn followed by the answer to it, whatever replica served it.
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"] * 4 + ["user"]
    assert through_nginx.responses.retrieve(previous.id).output_text == "Hello from local"


def test_a_redis_restart_loses_no_recorded_spend_and_replicas_reconnect(cluster: Cluster) -> None:
    key = cluster.create_key(
        cluster.replicas[1], "spender", monthly_budget_usd=1000, requests_per_minute=600
    )
    _known_everywhere(cluster, key)

    def spent(replica: Replica) -> float:
        answer = httpx.get(
            replica.url + "/v1/stats", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        assert answer.status_code == 200, answer.text
        value: float = answer.json()["budget"]["spent_usd"]
        return value

    # One request on each replica: the same question and answer, so the same cost each.
    for replica in cluster.replicas:
        assert _chat(replica.url, key, model="priced-model").status_code == 200
    _wait(
        lambda: len({spent(r) for r in cluster.replicas}) == 1 and spent(cluster.replicas[0]) > 0,
        "every replica sees the three requests' spend",
    )
    before = spent(cluster.replicas[0])
    store = RedisStore(cluster.redis.url)
    recorded = asyncio.run(_month_spend(store))
    assert recorded > 0

    cluster.redis.kill()
    # While Redis is down, a request that must be metered is refused, never let through.
    outage = _chat(cluster.replicas[0].url, key, model="priced-model")
    assert outage.status_code == 503
    assert outage.json()["error"]["code"] == "state_unavailable"
    cluster.redis.start()
    cluster.redis.wait_ready()
    # What Redis had acknowledged is back from its append-only file: the spend, and the key
    # made at run time (which the replicas would otherwise drop at their next catch-up).
    assert asyncio.run(_month_spend(store)) == recorded
    assert "spender" in asyncio.run(_stored_keys(store))

    # The replicas reconnect by themselves: each serves a metered, rate-limited request again
    # (the rate limit's Lua script is loaded again into the new Redis).
    for replica in cluster.replicas:
        _wait(
            lambda r=replica: _chat(r.url, key, model="priced-model").status_code == 200,  # type: ignore[misc]
            f"{replica.name} reconnects to Redis",
            20,
        )
    # Nothing recorded before the restart was lost: the three new requests add to it.
    _wait(
        lambda: all(abs(spent(r) - 2 * before) < 1e-9 for r in cluster.replicas),
        f"every replica reports twice {before} USD",
    )


async def _month_spend(store: RedisStore) -> int:
    """The gateway-wide spend of this month in Redis, read by a client of its own."""
    try:
        await store.open()
        return await store.total(GLOBAL_SCOPE, month_of(time.time()))
    finally:
        await store.close()


async def _stored_keys(store: RedisStore) -> dict[str, str]:
    try:
        await store.open()
        return await store.items(KEYS_COLLECTION)
    finally:
        await store.close()


@dataclass
class Load:
    """What the clients of ``_under_load`` saw."""

    plain: list[httpx.Response]
    #: Each stream: whether its first chunk had come, and the error that ended it (None: whole).
    streams: list[tuple[bool, BaseException | None]]
    #: How many whole answers had come when the replica was gone.
    gone_at: int
    #: nginx's ``X-Replica`` of every answer, whole or streamed: the replicas it tried, in order.
    routes: list[str]


def _under_load(cluster: Cluster, key: str, victim: Replica, signum: int) -> Load:
    """Whole and streamed requests through nginx from six threads; ``signum`` to ``victim``
    halfway; the load goes on until a dozen more whole answers came."""
    # Answers take a while, so requests are in flight on the victim when it goes.
    cluster.local.behave(Behaviour(delay_before_headers=0.3))
    stop = threading.Event()
    plain: list[httpx.Response] = []
    streams: list[tuple[bool, BaseException | None]] = []
    routes: list[str] = []

    def ask() -> None:
        while not stop.is_set():
            answer = _chat(cluster.nginx_url, key)
            routes.append(answer.headers["x-replica"])
            plain.append(answer)

    def stream() -> None:
        hooks = {"response": [lambda r: routes.append(r.headers["x-replica"])]}
        with httpx.Client(event_hooks=hooks) as client:
            sdk = openai.OpenAI(
                base_url=cluster.nginx_url + "/v1", api_key=key, max_retries=0, http_client=client
            )
            while not stop.is_set():
                started = False
                try:
                    chunks = sdk.chat.completions.create(
                        model="fake-model", messages=MESSAGES, max_tokens=5, stream=True
                    )
                    for _ in chunks:
                        started = True
                    streams.append((started, None))
                except (openai.APIError, httpx.HTTPError) as exc:
                    streams.append((started, exc))

    try:
        with ThreadPoolExecutor(6) as pool:
            workers = [pool.submit(ask) for _ in range(4)] + [pool.submit(stream) for _ in range(2)]
            _wait(lambda: len(plain) >= 8, "some load went through")
            assert victim.process is not None
            victim.process.send_signal(signum)
            victim.process.wait(15)
            gone_at = len(plain)
            _wait(lambda: len(plain) >= gone_at + 12, "the load goes on after the replica left")
            stop.set()
            for worker in workers:
                worker.result()
    finally:
        stop.set()
        cluster.local.behave(Behaviour())
    return Load(plain, streams, gone_at, routes)


def _the_others_serve(load: Load, victim: Replica) -> None:
    """Requests after the replica left were answered by the other two."""
    after = {_replica_of(a) for a in load.plain[load.gone_at + 4 :]}
    assert after
    assert f"127.0.0.1:{victim.port}" not in after


def test_a_replica_stopped_with_sigterm_mid_load_drops_nothing(cluster: Cluster) -> None:
    """A rolling update's stop: the replica drains (server.drain_timeout_seconds) and exits."""
    key = cluster.create_key(cluster.replicas[0], "rolling")
    _known_everywhere(cluster, key)
    victim = cluster.replicas[1]
    load = _under_load(cluster, key, victim, signal.SIGTERM)
    assert victim.process is not None
    assert victim.process.returncode == 0
    failed = [a for a in load.plain if a.status_code != 200]
    assert not failed, [(a.status_code, a.text) for a in failed]
    # Streams too, even those that had started on the stopping replica: they finished there.
    assert [exc for _, exc in load.streams if exc is not None] == []
    assert load.streams
    _the_others_serve(load, victim)


def test_killing_a_replica_mid_load_loses_no_request_not_yet_streaming(cluster: Cluster) -> None:
    key = cluster.create_key(cluster.replicas[0], "load")
    _known_everywhere(cluster, key)
    victim = cluster.replicas[2]
    load = _under_load(cluster, key, victim, signal.SIGKILL)
    failed = [a for a in load.plain if a.status_code != 200]
    assert not failed, [(a.status_code, a.text) for a in failed]
    # Every stream that had not started before the kill ended whole.
    assert [exc for started, exc in load.streams if not started and exc is not None] == []
    assert any(exc is None for _, exc in load.streams)
    # nginx did retry: some answers name the dead replica, then the one that answered.
    victim_address = f"127.0.0.1:{victim.port}"
    tried = [[part.strip() for part in route.split(",")] for route in load.routes]
    assert any(r[0] == victim_address and r[-1] != victim_address for r in tried), load.routes
    _the_others_serve(load, victim)
