"""The key schema: one hit writes exactly these keys, with these TTLs."""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime

import redis

from analytics_service import keys
from analytics_service.live import WRITER_KEY_SECONDS
from analytics_service.visitor import salt_expiry

from .conftest import Browser, FrozenClock


def test_one_hit_writes_exactly_the_documented_keys_with_their_ttls(
    reader: Browser, rdb: redis.Redis, clock: FrozenClock
) -> None:
    # 2026-11-28 10:00 in Hanoi; the day ends at 2026-11-28 17:00 UTC.
    assert reader.hit("/tin-tuc", referrer="https://google.com/", id="hit-0001").status_code == 202

    day = "2026-11-28"
    minute = int(clock().timestamp()) // 60
    bucket = int(clock().timestamp()) // keys.DEDUP_SECONDS
    [writer] = [k.decode() for k in rdb.keys("an:{demo}:writer:*")]
    assert re.fullmatch(r"an:\{demo\}:writer:[0-9a-f]{16}", writer)
    assert {k.decode() for k in rdb.keys("*")} == {
        f"an:salt:{day}",
        "an:salt:2026-11-29",  # fetched ahead, so that midnight finds it in every worker
        "an:{demo}:seen",
        f"an:{{demo}}:day:{day}",
        f"an:{{demo}}:uv:{day}",
        "an:{demo}:total",
        f"an:{{demo}}:paths:{day}",
        f"an:{{demo}}:refs:{day}",
        f"an:{{demo}}:batches:{day}",
        f"an:{{demo}}:rate:{minute}",
        f"an:{{demo}}:ids:{bucket}",
        writer,
    }

    day_ttl = (datetime(2026, 11, 28, 17, 0, tzinfo=UTC) - clock()).total_seconds() + 8 * 86400
    for kind in ("day", "uv", "paths", "refs"):
        assert abs(rdb.ttl(f"an:{{demo}}:{kind}:{day}") - day_ttl) <= 2, kind
    assert rdb.ttl("an:{demo}:seen") == 1800
    assert rdb.ttl("an:{demo}:total") == -1  # one small hash per site, kept for good
    assert rdb.ttl(f"an:{{demo}}:rate:{minute}") == keys.RATE_KEY_SECONDS
    assert rdb.ttl(f"an:{{demo}}:ids:{bucket}") == keys.IDS_KEY_SECONDS
    assert rdb.ttl(writer) == WRITER_KEY_SECONDS
    # The writer's first batch for the site: its number, and what the script answered.
    assert rdb.hgetall(writer) == {b"1": b"v"}
    # The same batch in the day's record, which a restore gives back with the day.
    writer_id = writer.rsplit(":", 1)[1]
    assert rdb.hgetall(f"an:{{demo}}:batches:{day}") == {f"{writer_id}:1".encode(): b"1"}
    assert rdb.ttl(f"an:{{demo}}:batches:{day}") == keys.BATCHES_KEY_SECONDS
    salt_ttl = (salt_expiry(clock().date()) - clock()).total_seconds()
    assert abs(rdb.ttl(f"an:salt:{day}") - salt_ttl) <= 2

    assert rdb.type("an:{demo}:seen") == b"zset"
    assert rdb.hgetall(f"an:{{demo}}:day:{day}") == {b"visits": b"1", b"pageviews": b"1"}
    assert rdb.hgetall("an:{demo}:total") == {b"visits": b"1", b"pageviews": b"1"}
    assert rdb.hgetall(f"an:{{demo}}:paths:{day}") == {b"/tin-tuc": b"1"}
    assert rdb.hgetall(f"an:{{demo}}:refs:{day}") == {b"google.com": b"1"}
    # The guards' and the dedup's fields are hashes (8 bytes each), never an address or id.
    rate = rdb.hgetall(f"an:{{demo}}:rate:{minute}")
    assert sorted(len(f) for f in rate) == [8, 9] and set(rate.values()) == {b"1"}
    assert [len(f) for f in rdb.hkeys(f"an:{{demo}}:ids:{bucket}")] == [8]


def test_every_key_of_a_site_shares_its_hash_tag() -> None:
    site_keys = keys.SiteKeys("so-giao-duc")
    day = datetime(2026, 11, 28).date()
    built = [site_keys.seen, site_keys.total]
    built += [site_keys.day(day), site_keys.uv(day), site_keys.paths(day), site_keys.refs(day)]
    built += [site_keys.restore(day), site_keys.rate(1), site_keys.ids(1)]
    for key in built:
        assert key.startswith("an:{so-giao-duc}:")
        assert fnmatch.fnmatchcase(key, site_keys.pattern)
    assert not fnmatch.fnmatchcase("an:{so-giao-duc-2}:total", site_keys.pattern)
