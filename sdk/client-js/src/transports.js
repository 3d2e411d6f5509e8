/**
 * The three ways to reach a gateway, behind one small interface:
 *
 * ```
 * new T(endpoint, options, initial, {onFrame, onClose})
 * t.open()        start connecting; frames arrive on onFrame, the end on onClose (once)
 * t.send(frame)   send a command (JSON-serializable object), in order
 * t.close()       stop without calling onClose
 * ```
 *
 * A transport that carries binary frames (WebSocket only: document channels'
 * `StatePatch`es) also has `t.sendBinary(bytes)` and hands received binary
 * frames to `onBinary(bytes)`, in order with the text frames.
 *
 * `initial` lists subscriptions the transport may open with (SSE and
 * long-poll take them in the URL, replying with ids `init-0`, `init-1`, …).
 * @module
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code   WebSocket close code (or the fallback's `close` frame code; 1006 when the connection broke)
 * @property {string} reason
 */

/**
 * @typedef {object} TransportHandlers
 * @property {(frame: any) => void} onFrame
 * @property {(info: CloseInfo) => void} onClose
 * @property {(bytes: Uint8Array) => void} [onBinary] a binary frame (WebSocket)
 */

/** @typedef {{channel: string, since?: {epoch: string, seq: number}}} InitialSub */

/**
 * Where a gateway lives: builds `/ws`, `/sse`, `/poll` URLs (with a tenant).
 */
export class Endpoint {
  /**
   * @param {string} url `http(s)://host[:port][/prefix]` or `ws(s)://…`
   * @param {string} [tenant]
   */
  constructor(url, tenant) {
    const base = typeof globalThis.location?.href === 'string' ? globalThis.location.href : undefined;
    const u = new URL(url, base);
    const secure = u.protocol === 'https:' || u.protocol === 'wss:';
    const prefix = u.pathname.replace(/\/+$/, '').replace(/\/ws$/, '');
    this.httpBase = `${secure ? 'https' : 'http'}://${u.host}${prefix}`;
    this.wsBase = `${secure ? 'wss' : 'ws'}://${u.host}${prefix}`;
    this.tenantPath = tenant ? `/${encodeURIComponent(tenant)}` : '';
  }

  /** @param {string} kind `ws` | `sse` | `poll` @param {Record<string, string | undefined>} query */
  open(kind, query) {
    const base = kind === 'ws' ? this.wsBase : this.httpBase;
    return `${base}/${kind}${this.tenantPath}${encodeQuery(query)}`;
  }

  /** @param {'sse' | 'poll'} kind @param {string} session */
  session(kind, session) {
    return `${this.httpBase}/${kind}/session/${encodeURIComponent(session)}`;
  }
}

/** @param {Record<string, string | undefined>} query */
function encodeQuery(query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * `channels=` and `since=` for the fallbacks' opening request.
 * @param {InitialSub[]} initial
 */
export function initialQuery(initial) {
  return {
    channels: initial.map((s) => s.channel).join(','),
    since: initial
      .filter((s) => s.since)
      .map((s) => `${s.channel}@${s.since?.epoch}:${s.since?.seq}`)
      .join(','),
  };
}

/** @param {unknown} data */
function textOf(data) {
  if (typeof data === 'string') return data;
  // The `ws` package (Node 20) may hand over a Buffer.
  if (data && typeof data === 'object' && 'toString' in data && globalThis.Buffer?.isBuffer?.(data)) {
    return data.toString('utf8');
  }
  return null;
}

/**
 * The bytes of a binary WebSocket message, or null for a text one.
 * @param {unknown} data
 * @returns {Uint8Array | null}
 */
function binaryOf(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (!ArrayBuffer.isView(data)) return null;
  // Some `ws` versions hand text frames over as Buffers too: a JSON command
  // starts with `{`, which no StatePatch does (0x7b would be field 15 as a group).
  if (globalThis.Buffer?.isBuffer?.(data) && data.byteLength > 0 && /** @type {any} */ (data)[0] === 0x7b) return null;
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** @param {string | null} text */
function parse(text) {
  if (text === null) return null;
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' && !Array.isArray(v) && typeof v.type === 'string' ? v : null;
  } catch {
    return null;
  }
}

/** Common bookkeeping: onClose at most once, nothing after close(). */
class Base {
  /**
   * @param {Endpoint} endpoint
   * @param {any} options client options (token, clientId, injected implementations)
   * @param {InitialSub[]} initial
   * @param {TransportHandlers} handlers
   */
  constructor(endpoint, options, initial, handlers) {
    this.endpoint = endpoint;
    this.options = options;
    this.initial = initial;
    this.handlers = handlers;
    this.done = false;
  }

  /** @param {any} frame */
  deliver(frame) {
    if (this.done || !frame) return;
    if (frame.type === 'close') {
      this.finish({ code: Number(frame.code) || 1006, reason: String(frame.reason ?? '') });
      return;
    }
    this.handlers.onFrame(frame);
  }

  /** @param {Uint8Array} bytes */
  deliverBinary(bytes) {
    if (!this.done) this.handlers.onBinary?.(bytes);
  }

  /** @param {CloseInfo} info */
  finish(info) {
    if (this.done) return;
    this.done = true;
    this.teardown();
    this.handlers.onClose(info);
  }

  close() {
    if (this.done) return;
    this.done = true;
    this.teardown();
  }

  teardown() {}

  /** Query parameters every opening request carries. */
  credentials() {
    return { token: this.options.token, client_id: this.options.clientId };
  }
}

/** WebSocket with subprotocol `switchyard.v1`. */
export class WebSocketTransport extends Base {
  static transportName = 'websocket';
  static supportsInitial = false;
  /** @param {any} options */
  static available(options) {
    return typeof (options.WebSocket ?? globalThis.WebSocket) === 'function';
  }

  open() {
    const WS = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(this.endpoint.open('ws', this.credentials()), ['switchyard.v1']);
    } catch (e) {
      queueMicrotask(() => this.finish({ code: 1006, reason: String(e) }));
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (/** @type {any} */ ev) => {
      const bytes = binaryOf(ev.data);
      if (bytes) this.deliverBinary(bytes);
      else this.deliver(parse(textOf(ev.data)));
    };
    ws.onclose = (/** @type {any} */ ev) => this.finish({ code: ev.code || 1006, reason: ev.reason || '' });
    ws.onerror = () => {}; // a close event follows
  }

  /** @param {object} frame */
  send(frame) {
    if (!this.done && this.ws?.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  /** Sends one binary frame (a `StatePatch`). @param {Uint8Array} bytes */
  sendBinary(bytes) {
    if (!this.done && this.ws?.readyState === 1) this.ws.send(bytes);
  }

  teardown() {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch {
      /* already closing */
    }
  }
}

/**
 * Serial command POSTs (one in flight, so commands keep their order). Each
 * carries the session's CSRF token (from the SSE welcome / the poll open
 * reply) as `X-Switchyard-CSRF`, which the gateway requires.
 */
class CommandQueue {
  /**
   * @param {() => string | null} url
   * @param {typeof fetch} fetchImpl
   * @param {(info: CloseInfo) => void} fail
   * @param {() => string | null} csrf
   */
  constructor(url, fetchImpl, fail, csrf) {
    this.url = url;
    this.fetch = fetchImpl;
    this.fail = fail;
    this.csrf = csrf;
    /** @type {string[]} */
    this.queue = [];
    this.busy = false;
    this.stopped = false;
  }

  /** @param {object} frame */
  push(frame) {
    this.queue.push(JSON.stringify(frame));
    if (!this.busy) void this.pump();
  }

  async pump() {
    this.busy = true;
    let backoff = 20;
    while (this.queue.length && !this.stopped) {
      const url = this.url();
      if (!url) break;
      let res;
      try {
        // The CSRF header makes this a non-simple request: a cross-origin page needs a preflight.
        res = await this.fetch(url, {
          method: 'POST',
          body: this.queue[0],
          headers: { 'content-type': 'application/json', 'x-switchyard-csrf': this.csrf?.() ?? '' },
        });
      } catch (e) {
        if (!this.stopped) this.fail({ code: 1006, reason: `command failed: ${e}` });
        break;
      }
      if (res.status === 429) {
        // The session's command queue is full: wait and resend.
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1000);
        continue;
      }
      backoff = 20;
      this.queue.shift();
      if (res.status === 404 || res.status === 410) {
        if (!this.stopped) this.fail({ code: 1006, reason: 'session gone' });
        break;
      }
    }
    this.busy = false;
  }
}

/** Server-Sent Events down, POST commands up. */
export class SseTransport extends Base {
  static transportName = 'sse';
  static supportsInitial = true;
  /** @param {any} options */
  static available(options) {
    return (
      typeof (options.EventSource ?? globalThis.EventSource) === 'function' &&
      typeof (options.fetch ?? globalThis.fetch) === 'function'
    );
  }

  open() {
    const ES = this.options.EventSource ?? globalThis.EventSource;
    /** @type {string | null} */
    this.session = null;
    /** @type {string | null} */
    this.csrf = null;
    this.commands = new CommandQueue(
      () => (this.session ? this.endpoint.session('sse', this.session) : null),
      this.options.fetch ?? globalThis.fetch.bind(globalThis),
      (info) => this.finish(info),
      () => this.csrf,
    );
    let es;
    try {
      es = new ES(this.endpoint.open('sse', { ...initialQuery(this.initial), ...this.credentials() }));
    } catch (e) {
      queueMicrotask(() => this.finish({ code: 1006, reason: String(e) }));
      return;
    }
    this.es = es;
    es.onmessage = (/** @type {any} */ ev) => {
      const frame = parse(textOf(ev.data));
      // EventSource cannot read the x-switchyard-session header: the welcome names the session.
      if (frame?.type === 'welcome' && typeof frame.session === 'string') {
        this.session = frame.session;
        if (typeof frame.csrf === 'string') this.csrf = frame.csrf;
      }
      this.deliver(frame);
      if (this.session && this.commands?.queue.length && !this.commands.busy) void this.commands.pump();
    };
    es.addEventListener('close', (/** @type {any} */ ev) => {
      const f = parse(textOf(ev.data));
      this.finish({ code: Number(f?.code) || 1006, reason: String(f?.reason ?? 'closed') });
    });
    // EventSource would reconnect by itself with the old URL (old positions): the client does that instead.
    es.onerror = () => this.finish({ code: 1006, reason: 'event stream broke' });
  }

  /** @param {object} frame */
  send(frame) {
    if (!this.done) this.commands?.push(frame);
  }

  teardown() {
    if (this.commands) this.commands.stopped = true;
    const es = this.es;
    if (es) {
      es.onmessage = es.onerror = null;
      es.close();
    }
  }
}

/** Long-polling: POST /poll opens, GET waits for frames, POST sends commands. */
export class PollTransport extends Base {
  static transportName = 'poll';
  static supportsInitial = true;
  /** @param {any} options */
  static available(options) {
    return typeof (options.fetch ?? globalThis.fetch) === 'function';
  }

  open() {
    this.fetch = this.options.fetch ?? globalThis.fetch.bind(globalThis);
    this.abort = typeof AbortController === 'function' ? new AbortController() : null;
    /** @type {string | null} */
    this.session = null;
    /** @type {string | null} */
    this.csrf = null;
    this.commands = new CommandQueue(
      () => (this.session ? this.endpoint.session('poll', this.session) : null),
      this.fetch,
      (info) => this.finish(info),
      () => this.csrf,
    );
    void this.run();
  }

  async run() {
    const signal = this.abort?.signal;
    try {
      const url = this.endpoint.open('poll', { ...initialQuery(this.initial), ...this.credentials() });
      const res = await this.fetch(url, { method: 'POST', signal });
      if (!res.ok) {
        // Unlike WebSocket and EventSource, fetch sees why the gateway refused.
        const code = res.status === 401 ? 4001 : res.status === 403 ? 4003 : res.status === 503 ? 1013 : 1006;
        this.finish({ code, reason: `HTTP ${res.status}` });
        return;
      }
      const opened = await res.json();
      if (this.done) return;
      if (typeof opened?.session !== 'string' || !Array.isArray(opened.frames)) {
        this.finish({ code: 1002, reason: 'bad poll response' });
        return;
      }
      const session = String(opened.session);
      this.session = session;
      if (typeof opened.csrf === 'string') this.csrf = opened.csrf;
      for (const f of opened.frames) this.deliver(f);
      if (this.commands?.queue.length && !this.commands.busy) void this.commands.pump();
      const wait = Math.max(1, Math.min(30, Math.floor(this.options.pollWait ?? 25)));
      while (!this.done) {
        const r = await this.fetch(`${this.endpoint.session('poll', session)}?wait=${wait}`, { signal });
        if (this.done) return;
        if (r.status === 409) {
          await new Promise((res2) => setTimeout(res2, 100));
          continue;
        }
        if (r.status === 200 || r.status === 410) {
          const frames = await r.json();
          if (Array.isArray(frames)) for (const f of frames) this.deliver(f);
          if (r.status === 410) this.finish({ code: 1006, reason: 'session closed' });
          continue;
        }
        this.finish({ code: 1006, reason: `poll HTTP ${r.status}` });
      }
    } catch (e) {
      if (!this.done) this.finish({ code: 1006, reason: `poll failed: ${e}` });
    }
  }

  /** @param {object} frame */
  send(frame) {
    if (!this.done) this.commands?.push(frame);
  }

  teardown() {
    if (this.commands) this.commands.stopped = true;
    this.abort?.abort();
    const session = this.session;
    if (session && this.fetch) {
      // Best effort: end the session now instead of at the server's idle timeout.
      this.fetch(this.endpoint.session('poll', session), {
        method: 'DELETE',
        keepalive: true,
        headers: { 'x-switchyard-csrf': this.csrf ?? '' },
      }).catch(() => {});
    }
  }
}

/** Built-in transports by name. */
export const TRANSPORTS = Object.freeze({
  websocket: WebSocketTransport,
  sse: SseTransport,
  poll: PollTransport,
});
