"""The SQL of the PostgreSQL store, in one place.

A write is one transaction of two statements: the current row, locked (`FOR UPDATE`: writers
of one device queue here, and the condition is decided on what they left), then one statement
that changes the document, keeps the history version, prunes the history, takes the next
change id and records the change, and NOTIFYs every replica (delivered at the commit). The
change id comes from the one row of `config_feed`, updated last: its row lock is held until
the commit, so ids are given in commit order, and a reader who sees id n sees every change up
to n (the list cache, `changes_after` and the event streams rely on it).
"""

from quart_iot.store.postgres.schema import CHANNEL

GET = "SELECT data, etag, summary FROM configs WHERE mac = $1"
ETAG = "SELECT etag FROM configs WHERE mac = $1"
LAST_CHANGE = "SELECT last_id FROM config_feed"
LIST = """
SELECT (SELECT last_id FROM config_feed), string_agg(summary, ','::bytea ORDER BY mac), count(*)
FROM configs
"""
LOCK_CURRENT = "SELECT etag FROM configs WHERE mac = $1 FOR UPDATE"
READ_ONLY = "SELECT current_setting('transaction_read_only') = 'on'"

_NOW_NS = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000"
# A version id: the database's clock in ns, later than the device's newest version.
_CLOCK = f"""
clock AS (
    SELECT greatest(
        {_NOW_NS},
        coalesce((SELECT left(max(id), 19)::bigint + 1 FROM config_versions WHERE mac = $1), 0)
    ) AS ns, EXISTS (SELECT 1 FROM config_versions WHERE mac = $1) AS had_history
)"""
_RANDOM = "substr(md5(random()::text), 1, 8)"
_FEED = "feed AS (UPDATE config_feed SET last_id = last_id + 1 RETURNING epoch, last_id)"


def _prune(keep: str, max_age: str) -> str:
    """Versions past HISTORY_MAX_VERSIONS (`keep`, the new one included; 0: history off) or
    older than HISTORY_MAX_DAYS (`max_age`, ns, by the database's clock). What the statement
    inserts is not in its snapshot, so never pruned by it."""
    return f"""
pruned AS (
    DELETE FROM config_versions WHERE mac = $1 AND {keep} > 0 AND (
        id < lpad(greatest({_NOW_NS} - {max_age}, 0)::text, 19, '0')
        OR id IN (SELECT id FROM config_versions WHERE mac = $1
                  ORDER BY id DESC OFFSET greatest({keep} - 1, 0))
    )
    RETURNING 1
)"""


def _notify(etag: str) -> str:
    """The NOTIFY of a change: '<epoch>-<change id> <mac> <etag or ->'."""
    payload = f"feed.epoch || '-' || feed.last_id || ' ' || $1 || ' ' || {etag}"
    return f"pg_notify('{CHANNEL}', {payload})"


# $1 mac, $2 data, $3 etag, $4 summary, $5 subject, $6 bulk change id, $7 versions kept (0:
# history off), $8 HISTORY_MAX_DAYS in ns, $9 whether a document exists.
# `kept`: the document replaced, when it is not the device's newest version (it came from a
# copy without history, or from before history): kept first, as the directory store does.
_SAVE = f"""
WITH {_FEED},
doc AS ({{doc}}),
{_CLOCK},
kept AS (
    INSERT INTO config_versions (mac, id, change, data, etag, summary, size)
    SELECT c.mac, lpad(clock.ns::text, 19, '0') || '-' || {_RANDOM},
           CASE WHEN clock.had_history THEN 'updated' ELSE 'created' END,
           c.data, c.etag, c.summary, length(c.data)
    FROM configs c, clock, doc
    WHERE c.mac = $1 AND $7 > 0 AND c.etag IS DISTINCT FROM (
        SELECT etag FROM config_versions WHERE mac = $1 ORDER BY id DESC LIMIT 1)
),
version AS (
    INSERT INTO config_versions (mac, id, change, data, etag, summary, size, subject,
                                 bulk_change_id)
    SELECT $1, lpad((clock.ns + 1)::text, 19, '0') || '-' || {_RANDOM},
           CASE WHEN $9 THEN 'updated' ELSE 'created' END, $2, $3, $4, length($2), $5, $6
    FROM clock, doc WHERE $7 > 0
    RETURNING id
),
{_prune("$7", "$8")},
change AS (INSERT INTO config_changes (id, mac, etag) SELECT last_id, $1, $3 FROM feed, doc)
SELECT (SELECT count(*) FROM doc) AS written, (SELECT id FROM version) AS version,
       (SELECT count(*) FROM pruned) AS pruned, {_notify("$3")}
FROM feed
"""
SAVE_NEW = _SAVE.replace(
    "{doc}",
    "INSERT INTO configs (mac, data, etag, summary, change_id) "
    "SELECT $1, $2, $3, $4, last_id FROM feed ON CONFLICT (mac) DO NOTHING RETURNING mac",
)
SAVE_REPLACE = _SAVE.replace(
    "{doc}",
    "UPDATE configs SET data = $2, etag = $3, summary = $4, change_id = feed.last_id "
    "FROM feed WHERE mac = $1 RETURNING mac",
)

# $1 mac, $2 subject, $3 bulk change id, $4 versions kept (0: history off), $5
# HISTORY_MAX_DAYS in ns.
DELETE = f"""
WITH {_FEED},
doc AS (DELETE FROM configs WHERE mac = $1 RETURNING data, etag, summary),
{_CLOCK},
version AS (
    INSERT INTO config_versions (mac, id, change, data, etag, summary, size, subject,
                                 bulk_change_id)
    SELECT $1, lpad(clock.ns::text, 19, '0') || '-' || {_RANDOM}, 'deleted',
           doc.data, doc.etag, doc.summary, length(doc.data), $2, $3
    FROM clock, doc WHERE $4 > 0
    RETURNING id
),
{_prune("$4", "$5")},
change AS (INSERT INTO config_changes (id, mac, etag) SELECT last_id, $1, NULL FROM feed, doc)
SELECT (SELECT count(*) FROM doc) AS written, (SELECT id FROM version) AS version,
       (SELECT count(*) FROM pruned) AS pruned, {_notify("'-'")}
FROM feed
"""

# A document copied in as it is (quart_iot/copy.py): a change like a save, but no version of
# its own ($1 mac, $2 data, $3 etag, $4 summary).
PUT_DOCUMENT = f"""
WITH {_FEED},
doc AS (
    INSERT INTO configs (mac, data, etag, summary, change_id)
    SELECT $1, $2, $3, $4, last_id FROM feed
    ON CONFLICT (mac) DO UPDATE SET data = EXCLUDED.data, etag = EXCLUDED.etag,
        summary = EXCLUDED.summary, change_id = EXCLUDED.change_id
),
change AS (INSERT INTO config_changes (id, mac, etag) SELECT last_id, $1, $3 FROM feed)
SELECT {_notify("$3")} FROM feed
"""

# What the history keeps, for the metrics: its versions, and the bytes of its distinct
# documents per device (a `deleted` version repeats the one before it: the directory store
# links the same file again, and counts it once).
SURVEY = """
SELECT count(*) AS versions,
       (SELECT coalesce(sum(size), 0) FROM (SELECT DISTINCT mac, etag, size FROM config_versions) d)
           AS bytes
FROM config_versions
"""
