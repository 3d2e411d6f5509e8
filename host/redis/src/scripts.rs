//! Lua scripts run atomically inside Redis: one order for everyone.

use std::sync::LazyLock;

use redis::Script;

/// Lua: takes one token from the token bucket hash `KEYS[$key]` (`tokens`,
/// `ts`), given `now` (ms), `rate` (per second) and `burst` in scope; sets
/// `retry` to the wait in ms when the bucket is empty, else to `nil`. The one
/// copy of the bucket rule shared by publishes and document patches.
macro_rules! take_token {
    ($key:literal) => {
        concat!(
            "local b = redis.call('HMGET', KEYS[",
            $key,
            "], 'tokens', 'ts')\n",
            "local tokens = tonumber(b[1]) or burst\n",
            "local last = tonumber(b[2]) or now\n",
            "tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)\n",
            "local retry = nil\n",
            "if tokens < 1 then\n",
            "  retry = math.ceil((1 - tokens) * 1000 / rate)\n",
            "else\n",
            "  redis.call('HSET', KEYS[",
            $key,
            "], 'tokens', tostring(tokens - 1), 'ts', now)\n",
            "  redis.call('PEXPIRE', KEYS[",
            $key,
            "], math.ceil(burst * 1000 / rate) + 1000)\n",
            "end\n",
        )
    };
}

/// Publish: dedupe by msgId, next seq, XADD history, expiry, PUBLISH — atomically.
///
/// KEYS: meta, stream, dedupe, limit (the channel's shared token bucket).
/// ARGV: new epoch (used only if the channel has none), data, msgId (`""` =
/// none), history_size, history_ttl ms, meta ttl ms, dedupe window, live
/// pub/sub channel, limit rate (`0` = none), limit burst, trace header
/// (`""` = none, else `tp:<traceparent>\n`, put before the data of the live
/// payload only: history entries stay `d`/`t`).
/// Returns `{epoch, seq, duplicate (0|1)}`, or `{epoch, 0, 2, retry ms}` when
/// the channel's limit has no token (nothing published).
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SRC));

const PUBLISH_SRC: &str = concat!(
    r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local msgid = ARGV[3]
if msgid ~= '' then
  local prev = redis.call('ZSCORE', KEYS[3], msgid)
  if prev then
    return {epoch, tonumber(prev), 1}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[9] or '0')
if rate > 0 then
  local burst = tonumber(ARGV[10])
"#,
    take_token!(4),
    r#"
  if retry then
    return {epoch, 0, 2, retry}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local ts = string.format('%d', now)
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, string.format('%d-0', seq), 'd', ARGV[2], 't', ts)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if msgid ~= '' then
  local window = tonumber(ARGV[7])
  redis.call('ZADD', KEYS[3], seq, msgid)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(window + 1))
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[8], string.format('%d', seq) .. '\n' .. epoch .. '\n' .. ts .. '\n' .. (ARGV[11] or '') .. ARGV[2])
return {epoch, seq, 0}
"#
);

/// A document patch's token from its channel's shared budget.
///
/// KEYS: limit. ARGV: rate, burst. Returns 0 when a token was taken, else the
/// wait in ms.
pub static TAKE_TOKEN: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_TOKEN_SRC));

const TAKE_TOKEN_SRC: &str = concat!(
    r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
"#,
    take_token!(1),
    r#"return retry or 0
"#
);

/// Recover: the channel's epoch and seq, plus the history after `since` if complete.
///
/// KEYS: meta, stream. ARGV: new epoch (`""` = do not create a missing channel),
/// since epoch (`""` = none), since seq, history_ttl ms, meta ttl ms, and
/// optionally `"1"` = when history after `since` is incomplete, return what
/// the stream still holds anyway (with recovered 0).
/// Returns `{epoch, seq, recovered (0|1), entries}`; `epoch` is `""` when the
/// channel does not exist and was not created.
pub static RECOVER: LazyLock<Script> = LazyLock::new(|| Script::new(RECOVER_SRC));

const RECOVER_SRC: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  if ARGV[1] == '' then
    return {'', 0, 0, {}}
  end
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {epoch, 0, 0, {}}
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if ARGV[2] == '' or ARGV[2] ~= epoch then
  return {epoch, seq, 0, {}}
end
local since = tonumber(ARGV[3])
if since == seq then
  return {epoch, seq, 1, {}}
end
if since > seq then
  return {epoch, seq, 0, {}}
end
local first = string.format('%d-0', since + 1)
local entries = redis.call('XRANGE', KEYS[2], first, '+', 'COUNT', seq - since)
if #entries == 0 or entries[1][1] ~= first then
  if ARGV[6] == '1' then
    return {epoch, seq, 0, redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', seq - since)}
  end
  return {epoch, seq, 0, {}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = entries[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 't' and tonumber(fields[i + 1]) + tonumber(ARGV[4]) < now then
    return {epoch, seq, 0, {}}
  end
end
return {epoch, seq, 1, entries}
"#;

/// Directory write: KEYS: directory hash. ARGV: node, ttl ms.
/// Sets `node → now + ttl` and the key's expiry.
pub static DIRECTORY_SET: LazyLock<Script> = LazyLock::new(|| Script::new(DIRECTORY_SET_SRC));

const DIRECTORY_SET_SRC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Directory lookup: KEYS: directory hash. Returns the nodes whose entry has not
/// expired, removing the expired ones.
pub static DIRECTORY_GET: LazyLock<Script> = LazyLock::new(|| Script::new(DIRECTORY_GET_SRC));

const DIRECTORY_GET_SRC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) and tonumber(all[i + 1]) >= now then
    table.insert(live, all[i])
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"#;

/// Presence read: KEYS: presence index. ARGV: per-node hash prefix.
/// Returns a flat list `node, client, principal, …` of nodes whose hash has not
/// expired, dropping expired nodes from the index.
pub static PRESENCE_GET: LazyLock<Script> = LazyLock::new(|| Script::new(PRESENCE_GET_SRC));

const PRESENCE_GET_SRC: &str = r#"
local nodes = redis.call('HKEYS', KEYS[1])
local out = {}
for _, node in ipairs(nodes) do
  local entries = redis.call('HGETALL', ARGV[1] .. node)
  if #entries == 0 then
    redis.call('HDEL', KEYS[1], node)
  else
    for i = 1, #entries, 2 do
      table.insert(out, node)
      table.insert(out, entries[i])
      table.insert(out, entries[i + 1])
    end
  end
end
return out
"#;

/// Presence heartbeat: KEYS: presence index, this node's presence hash.
/// ARGV: node, ttl ms. Refreshes both expiries; returns 0 when the node hash is
/// gone (expired or lost) so the caller rewrites it.
pub static PRESENCE_TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(PRESENCE_TOUCH_SRC));

const PRESENCE_TOUCH_SRC: &str = r#"
if redis.call('PEXPIRE', KEYS[2], ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// An `EVALSHA` command for pipelining (load the script first with [`ensure_loaded`]).
pub fn evalsha(script: &Script, keys: &[&str], args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args);
    c
}

/// Loads `script` into the server's script cache (idempotent).
pub async fn ensure_loaded(
    script: &Script,
    conn: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<()> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script_source(script))
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// Document load: creates the document (new epoch, version 0) when absent.
///
/// KEYS: doc, doclog, docids. ARGV: new epoch.
/// Returns `{epoch, version, snap_version, snap_lamport, snapshot, entries after
/// snap_version, msg_id/version pairs}`.
pub static DOC_LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(DOC_LOAD_SRC));

const DOC_LOAD_SRC: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', 0, 'snap_version', 0, 'snap_lamport', 0, 'snapshot', '')
end
local st = redis.call('HMGET', KEYS[1], 'version', 'snap_version', 'snap_lamport', 'snapshot')
local head = tonumber(st[1])
local n = redis.call('LLEN', KEYS[2])
local after = head - tonumber(st[2])
local log = {}
if after > 0 then
  log = redis.call('LRANGE', KEYS[2], math.max(n - after, 0), -1)
end
local ids = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
return {epoch, head, tonumber(st[2]), tonumber(st[3]), st[4], log, ids}
"#;

/// Document compare-and-append: the entry becomes version `head + 1` of the
/// caller's epoch, or nothing is written.
///
/// KEYS: doc, doclog, docids. ARGV: epoch, version, entry, msg_id (`""` =
/// none), log_len, dedupe window, live pub/sub channel.
/// Returns `{"ok"}`, `{"dup", version}`, `{"behind", entries the caller
/// misses}`, `{"far"}` (the log no longer reaches back) or `{"epoch"}`.
pub static DOC_APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(DOC_APPEND_SRC));

const DOC_APPEND_SRC: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'snap_version')
if not st[1] or st[1] ~= ARGV[1] then
  return {'epoch'}
end
local head = tonumber(st[2])
if ARGV[4] ~= '' then
  local prev = redis.call('ZSCORE', KEYS[3], ARGV[4])
  if prev then
    return {'dup', tonumber(prev)}
  end
end
local want = tonumber(ARGV[2])
if want ~= head + 1 then
  local n = redis.call('LLEN', KEYS[2])
  local missing = head - want + 1
  if missing < 0 or missing > n then
    return {'far'}
  end
  return {'behind', redis.call('LRANGE', KEYS[2], n - missing, -1)}
end
redis.call('HSET', KEYS[1], 'version', want)
local n = redis.call('RPUSH', KEYS[2], ARGV[3])
local first = want - n + 1
local covered = tonumber(st[3]) - first + 1
local drop = math.min(n - tonumber(ARGV[5]), covered)
if drop > 0 then
  redis.call('LTRIM', KEYS[2], drop, -1)
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], want, ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
end
redis.call('PUBLISH', ARGV[7], ARGV[3])
return {'ok'}
"#;

/// Document entries after a version.
///
/// KEYS: doc, doclog. ARGV: epoch, version.
/// Returns `{1, entries}` or `{0}` (other epoch, or the log does not reach back).
pub static DOC_READ_AFTER: LazyLock<Script> = LazyLock::new(|| Script::new(DOC_READ_AFTER_SRC));

const DOC_READ_AFTER_SRC: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'epoch', 'version')
if not st[1] or st[1] ~= ARGV[1] then
  return {0}
end
local head = tonumber(st[2])
local v = tonumber(ARGV[2])
if v > head then
  return {0}
end
local n = redis.call('LLEN', KEYS[2])
local missing = head - v
if missing > n then
  return {0}
end
if missing == 0 then
  return {1, {}}
end
return {1, redis.call('LRANGE', KEYS[2], n - missing, -1)}
"#;

/// Document compaction: the snapshot at a version (newer than the stored one).
///
/// KEYS: doc. ARGV: epoch, version, lamport, snapshot. Returns 1 when stored.
pub static DOC_COMPACT: LazyLock<Script> = LazyLock::new(|| Script::new(DOC_COMPACT_SRC));

const DOC_COMPACT_SRC: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'epoch', 'snap_version', 'version')
if not st[1] or st[1] ~= ARGV[1] then
  return 0
end
local v = tonumber(ARGV[2])
if v <= tonumber(st[2]) or v > tonumber(st[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'snap_version', v, 'snap_lamport', ARGV[3], 'snapshot', ARGV[4])
return 1
"#;

/// Document re-seed after Redis lost it: only into a fresh, empty epoch.
///
/// KEYS: doc, doclog. ARGV: epoch, version, lamport, snapshot. Returns 1 when seeded.
pub static DOC_RESEED: LazyLock<Script> = LazyLock::new(|| Script::new(DOC_RESEED_SRC));

const DOC_RESEED_SRC: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'epoch', 'version', 'snapshot')
if not st[1] or st[1] ~= ARGV[1] or tonumber(st[2]) ~= 0 or st[3] ~= '' then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'snap_version', ARGV[2], 'snap_lamport', ARGV[3], 'snapshot', ARGV[4])
return 1
"#;

/// The sources by hash (the `redis` crate does not expose a script's code).
fn script_source(script: &Script) -> &'static str {
    static SOURCES: LazyLock<Vec<(&'static Script, &'static str)>> = LazyLock::new(|| {
        vec![
            (&*PUBLISH, PUBLISH_SRC),
            (&*RECOVER, RECOVER_SRC),
            (&*DIRECTORY_SET, DIRECTORY_SET_SRC),
            (&*DIRECTORY_GET, DIRECTORY_GET_SRC),
            (&*PRESENCE_GET, PRESENCE_GET_SRC),
            (&*PRESENCE_TOUCH, PRESENCE_TOUCH_SRC),
            (&*DOC_LOAD, DOC_LOAD_SRC),
            (&*DOC_APPEND, DOC_APPEND_SRC),
            (&*TAKE_TOKEN, TAKE_TOKEN_SRC),
            (&*DOC_READ_AFTER, DOC_READ_AFTER_SRC),
            (&*DOC_COMPACT, DOC_COMPACT_SRC),
            (&*DOC_RESEED, DOC_RESEED_SRC),
        ]
    });
    for (s, src) in SOURCES.iter() {
        if s.get_hash() == script.get_hash() {
            return src;
        }
    }
    ""
}
