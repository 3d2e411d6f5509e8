/**
 * `SwitchyardClient`: one logical connection to a Switchyard gateway that
 * survives reconnects, transport changes and node drains.
 * @module
 */

import { DEFAULT_RECONNECT, calculateDelay, shutdownDelay } from './backoff.js';
import { Replica, SwitchyardDocument, lwwMerge } from './documents.js';
import { Emitter } from './emitter.js';
import { Positions } from './positions.js';
import { Kind, decodeStatePatch, encodeStatePatch } from './statepatch.js';
import { Endpoint, TRANSPORTS } from './transports.js';

/** Close codes after which retrying cannot help (credentials). */
const FATAL_CODES = new Set([4001, 4003]);

/** An error reply from the gateway, or a client-side failure (`timeout`, `disconnected`, `closed`). */
export class SwitchyardError extends Error {
  /** @param {string} code @param {string} message @param {number} [closeCode] */
  constructor(code, message, closeCode) {
    super(message);
    this.name = 'SwitchyardError';
    this.code = code;
    this.closeCode = closeCode;
  }
}

/**
 * @typedef {object} ClientOptions
 * @property {string | (() => string | Promise<string>)} [token] credentials, sent as the `token` query parameter
 * @property {string} [clientId] stable client id; by default the one the first `welcome` assigned is reused
 * @property {string} [tenant] tenant path segment (`/ws/{tenant}`); by default the gateway's Host mapping
 * @property {Array<'websocket' | 'sse' | 'poll' | TransportClass>} [transports] tried in order
 *   (a name, or a class implementing the interface in transports.js)
 * @property {number} [welcomeTimeout] ms to wait for `welcome` on one transport before the next (5000)
 * @property {number} [requestTimeout] ms to wait for a reply (10000)
 * @property {number} [publishTimeout] ms a publish may stay unacknowledged, across reconnects (30000)
 * @property {number} [pollWait] long-poll wait in seconds (25)
 * @property {number} [heartbeat] ms of silence after which a `ping` checks the connection
 *   (default: the welcome's `heartbeatMs`); no `pong` within `requestTimeout` (at most the
 *   heartbeat) counts as a lost connection. 0 turns it off.
 * @property {Partial<import('./backoff.js').ReconnectOptions>} [reconnect]
 * @property {any} [WebSocket] WebSocket implementation (Node 20: the `ws` package)
 * @property {any} [EventSource] EventSource implementation
 * @property {typeof fetch} [fetch] fetch implementation
 * @property {() => number} [random] uniform in [0, 1), for jitter
 */

/**
 * A transport implementation (see transports.js).
 * @typedef {{transportName: string, supportsInitial: boolean, available(options: any): boolean,
 *   new (endpoint: Endpoint, options: any, initial: any[], handlers: any): any}} TransportClass
 */

/**
 * @typedef {object} Subscription
 * @property {Set<(data: any, frame: any) => void>} handlers
 * @property {boolean} confirmed  a `subscribed` arrived on the current connection
 * @property {boolean} recovering a resubscribe for a gap is in flight
 * @property {Array<{resolve: Function, reject: Function}>} waiters `ready` promises
 */

/**
 * @typedef {object} DocumentOptions
 * @property {(state: any, change: import('./documents.js').DocumentChange) => void} [onChange]
 *   called after every applied snapshot or patch
 * @property {(error: Error) => void} [onError] the subscribe was refused (the document is closed then)
 * @property {import('./documents.js').Merge<any, any>} [merge] how bytes become state (default: the LWW map)
 */

/** Client for one gateway (see README.md). */
export class SwitchyardClient {
  /** @type {'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'} */
  #state = 'idle';
  #emitter = new Emitter();
  #positions = new Positions();
  /** @type {Map<string, Subscription>} */
  #subs = new Map();
  /** @type {Map<string | number, any>} */
  #pending = new Map();
  /** @type {Map<number, any>} outstanding publishes, resent (same msgId) after a reconnect */
  #publishes = new Map();
  /** @type {Map<string, import('./documents.js').DocumentEntry>} open documents by channel */
  #docs = new Map();
  /** @type {Map<number, any>} outstanding document patches, resent (same msgId) after a resubscribe */
  #patches = new Map();
  #nextId = 1;
  #nextPublish = 1;
  /** @type {any} */
  #transport = null;
  /** @type {any} */
  #opening = null;
  #transportName = /** @type {string | null} */ (null);
  #preferred = /** @type {string | null} */ (null);
  #retries = 0;
  #everOpened = false;
  #shutdownIn = /** @type {number | null} */ (null);
  /** @type {ReturnType<typeof setTimeout> | null} */
  #timer = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  #heartbeat = null;
  #lastRx = 0;
  #welcome = /** @type {any} */ (null);
  #clientId = /** @type {string | undefined} */ (undefined);
  /** @type {Array<{resolve: Function, reject: Function}>} */
  #connectWaiters = [];
  #endpoint;
  #opts;
  #reconnect;
  /** Counters, for tests and diagnostics. */
  stats = { duplicatesDropped: 0, gaps: 0, reconnects: 0 };

  /**
   * @param {string} url gateway base URL (`http(s)://…` or `ws(s)://…`)
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    this.#opts = {
      transports: ['websocket', 'sse', 'poll'],
      welcomeTimeout: 5000,
      requestTimeout: 10000,
      publishTimeout: 30000,
      random: Math.random,
      ...options,
    };
    this.#reconnect = { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.#endpoint = new Endpoint(url, options.tenant);
    this.#clientId = options.clientId;
  }

  /**
   * Creates a client and connects it.
   * @param {string} url
   * @param {ClientOptions} [options]
   * @returns {Promise<SwitchyardClient>}
   */
  static async connect(url, options) {
    const c = new SwitchyardClient(url, options);
    await c.connect();
    return c;
  }

  /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /** Name of the transport in use (`websocket`, `sse`, `poll`), or null. */
  get transport() {
    return this.#state === 'open' ? this.#transportName : null;
  }

  /** The last `welcome` frame (session, client, node). */
  get welcome() {
    return this.#welcome;
  }

  /** The client id (given, or assigned by the first `welcome`). */
  get clientId() {
    return this.#clientId;
  }

  /**
   * Listens to `open`, `close`, `reconnecting`, `transport`, `error`,
   * `recovery`, `direct`, `presence` (`{channel, change: 'join' | 'leave',
   * client, principal, node}` for channels subscribed with `{presence: true}`).
   * Returns a function that removes the listener.
   * @param {string} event
   * @param {(payload: any) => void} fn
   */
  on(event, fn) {
    return this.#emitter.on(event, fn);
  }

  /** @param {string} event @param {(payload: any) => void} fn */
  off(event, fn) {
    this.#emitter.off(event, fn);
  }

  /**
   * Connects (trying the transports in order, retrying with backoff).
   * Resolves with the `welcome` frame once open.
   * @returns {Promise<any>}
   */
  connect() {
    if (this.#state === 'open') return Promise.resolve(this.#welcome);
    if (this.#state === 'closed') return Promise.reject(new SwitchyardError('closed', 'client was closed'));
    const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === 'idle') {
      this.#state = 'connecting';
      void this.#attempt();
    }
    return p;
  }

  /** Closes for good: no reconnect; pending requests and publishes fail with `closed`. */
  close() {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#clearTimer();
    this.#stopHeartbeat();
    this.#opening?.close();
    this.#opening = null;
    this.#transport?.close();
    this.#transport = null;
    this.#failAll(new SwitchyardError('closed', 'client was closed'));
    this.#emitter.emit('close', { code: 1000, reason: 'client closed', willReconnect: false });
  }

  /**
   * Subscribes `handler(data, frame)` to `channel`. Returns a function that
   * unsubscribes it; its `ready` promise resolves with the first `subscribed`
   * reply (or rejects with the gateway's error). With `{presence: true}` the
   * gateway also sends the channel's `join` / `leave` events (the `presence`
   * event of {@link SwitchyardClient#on}); once asked, they stay on for the
   * channel until it is unsubscribed.
   * @param {string} channel
   * @param {(data: any, frame: any) => void} handler
   * @param {{presence?: boolean}} [options]
   * @returns {(() => void) & {ready: Promise<any>}}
   */
  subscribe(channel, handler, options = {}) {
    if (this.#docs.has(channel)) throw new SwitchyardError('invalid', `${channel} is open as a document`);
    let sub = this.#subs.get(channel);
    const fresh = !sub;
    if (!sub) {
      sub = { handlers: new Set(), confirmed: false, recovering: false, waiters: [], presence: false };
      this.#subs.set(channel, sub);
    }
    const wantsPresence = options.presence === true && !sub.presence;
    if (wantsPresence) sub.presence = true;
    sub.handlers.add(handler);
    const s = sub;
    const ready = new Promise((resolve, reject) => {
      if (s.confirmed) resolve({ type: 'subscribed', channel, ...this.#positions.get(channel) });
      else s.waiters.push({ resolve, reject });
    });
    ready.catch(() => {});
    // A new `presence` wish on a live subscription: subscribe again (with
    // `since`, so nothing is missed or repeated).
    if ((fresh || wantsPresence) && this.#state === 'open') this.#sendSubscribe(channel);
    const unsubscribe = () => {
      const cur = this.#subs.get(channel);
      if (!cur || cur !== s || !cur.handlers.delete(handler) || cur.handlers.size > 0) return;
      this.#subs.delete(channel);
      this.#positions.delete(channel);
      if (this.#state === 'open') {
        const id = this.#nextId++;
        this.#pending.set(id, { kind: 'fire' });
        this.#transport.send({ type: 'unsubscribe', id, channel });
      }
    };
    return Object.assign(unsubscribe, { ready });
  }

  /**
   * Publishes `data` to `channel`; resolves with the acknowledged seq (null
   * when the router dropped it). The message carries a `msgId` (a new UUID
   * unless given) that is reused when it is resent after a reconnect, so the
   * gateway's dedupe delivers it once. With `{skipSelf: true}` the gateway
   * does not deliver it back to this connection (`"skipSelf"`).
   * @param {string} channel
   * @param {any} data
   * @param {{msgId?: string, timeout?: number, skipSelf?: boolean}} [options]
   * @returns {Promise<number | null>}
   */
  publish(channel, data, options = {}) {
    if (this.#state === 'closed') return Promise.reject(new SwitchyardError('closed', 'client was closed'));
    const msgId = options.msgId ?? randomId();
    const skipSelf = options.skipSelf === true;
    return new Promise((resolve, reject) => {
      const key = this.#nextPublish++;
      const p = { key, msgId, channel, data, skipSelf, resolve, reject, id: /** @type {number | null} */ (null), sends: 0, timer: /** @type {any} */ (null) };
      p.timer = setTimeout(() => {
        this.#publishes.delete(key);
        if (p.id !== null) this.#pending.delete(p.id);
        reject(new SwitchyardError('timeout', `publish to ${channel} not acknowledged`));
      }, options.timeout ?? this.#opts.publishTimeout);
      this.#publishes.set(key, p);
      if (this.#state === 'open') this.#sendPublish(p);
    });
  }

  /**
   * Opens the document channel `channel` (a tenant's `documents` pattern):
   * subscribes, applies the gateway's snapshot and patches to `doc.state`,
   * resumes by `{epoch, version}` after a reconnect and resends unacknowledged
   * patches with their msgId. Opening a channel that is already open returns
   * the same document (with `onChange` added). WebSocket only: over SSE or
   * long-polling the gateway refuses with `unsupported`.
   * @param {string} channel
   * @param {DocumentOptions} [options]
   * @returns {SwitchyardDocument}
   */
  document(channel, options = {}) {
    if (this.#state === 'closed') throw new SwitchyardError('closed', 'client was closed');
    if (this.#subs.has(channel)) throw new SwitchyardError('invalid', `${channel} is subscribed as a message channel`);
    const open = this.#docs.get(channel);
    if (open) {
      if (options.onChange) open.listeners.add(options.onChange);
      return /** @type {any} */ (open).doc;
    }
    /** @type {any} */
    const e = {
      channel,
      replica: new Replica(options.merge ?? lwwMerge),
      listeners: new Set(options.onChange ? [options.onChange] : []),
      onError: options.onError,
      confirmed: false,
      recovering: false,
      isReady: false,
      closed: false,
    };
    e.ready = new Promise((resolve, reject) => {
      e.resolveReady = resolve;
      e.rejectReady = reject;
    });
    e.ready.catch(() => {});
    e.doc = new SwitchyardDocument(e, {
      patch: (delta, opts) => this.#patch(e, delta, opts),
      close: () => this.#closeDocument(e),
    });
    this.#docs.set(channel, e);
    if (this.#state === 'open') this.#sendDocSubscribe(e);
    return e.doc;
  }

  /**
   * Who is subscribed to `channel` (every node).
   * @param {string} channel
   * @returns {Promise<Array<{client: string, principal: string, node: string}>>}
   */
  async presence(channel) {
    const reply = await this.#request({ type: 'presence', channel });
    return Array.isArray(reply.clients) ? reply.clients : [];
  }

  /** Application-level ping; resolves with the round-trip time in ms. */
  async ping() {
    const t0 = Date.now();
    await this.#request({ type: 'ping' });
    return Date.now() - t0;
  }

  /**
   * The last position seen on `channel` (`{epoch, seq}`), the point a
   * reconnect resumes from.
   * @param {string} channel
   */
  position(channel) {
    return this.#positions.get(channel);
  }

  /**
   * Test hook: drops the current connection as if the network broke (no
   * close handshake from the app's view); the client reconnects as usual.
   */
  simulateConnectionLoss() {
    const t = this.#transport;
    if (!t || this.#state !== 'open') return false;
    t.close();
    this.#onLost(t, { code: 1006, reason: 'simulated connection loss' });
    return true;
  }

  // ---- connection lifecycle ----

  async #attempt() {
    if (this.#state === 'closed') return;
    let token;
    try {
      token = typeof this.#opts.token === 'function' ? await this.#opts.token() : this.#opts.token;
    } catch (e) {
      this.#attemptFailed(new SwitchyardError('token', `token provider failed: ${e}`));
      return;
    }
    if (/** @type {string} */ (this.#state) === 'closed') return; // close() while awaiting the token
    const names = this.#opts.transports.map((t) => (typeof t === 'string' ? t : t.transportName));
    const order = this.#preferred && names.includes(this.#preferred)
      ? [this.#preferred, ...names.filter((n) => n !== this.#preferred)]
      : names;
    const impls = order.map((n) => {
      const given = this.#opts.transports.find((t) => typeof t !== 'string' && t.transportName === n);
      return given ?? /** @type {any} */ (TRANSPORTS)[n];
    });
    this.#tryTransport(impls, 0, token, null);
  }

  /**
   * @param {any[]} impls @param {number} i @param {string | undefined} token
   * @param {SwitchyardError | null} lastError
   */
  #tryTransport(impls, i, token, lastError) {
    if (this.#state === 'closed') return;
    if (i >= impls.length) {
      this.#attemptFailed(lastError ?? new SwitchyardError('unavailable', 'no transport available'));
      return;
    }
    const Impl = impls[i];
    const opts = { ...this.#opts, token, clientId: this.#clientId };
    if (!Impl || !Impl.available(opts)) {
      this.#tryTransport(impls, i + 1, token, lastError ?? new SwitchyardError('unavailable', `transport ${Impl?.transportName ?? '?'} not available here`));
      return;
    }
    const initial = Impl.supportsInitial ? this.#resumeList().filter((s) => !s.channel.includes('@') && !s.channel.includes(',')) : [];
    let settled = false;
    /** @type {any} */
    let timer = null;
    const t = new Impl(this.#endpoint, opts, initial, {
      onFrame: (/** @type {any} */ frame) => {
        if (t === this.#transport) {
          this.#onFrame(frame);
        } else if (!settled && frame.type === 'welcome') {
          settled = true;
          clearTimeout(timer);
          this.#onWelcome(t, Impl.transportName, frame, initial);
        }
      },
      onBinary: (/** @type {Uint8Array} */ bytes) => {
        if (t === this.#transport) this.#onBinary(bytes);
      },
      onClose: (/** @type {import('./transports.js').CloseInfo} */ info) => {
        if (t === this.#transport) {
          this.#onLost(t, info);
          return;
        }
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#opening = null;
        const err = new SwitchyardError('connect_failed', `${Impl.transportName}: ${info.code} ${info.reason}`, info.code);
        if (FATAL_CODES.has(info.code)) {
          this.#fatal(err, info);
          return;
        }
        this.#tryTransport(impls, i + 1, token, err);
      },
    });
    this.#opening = t;
    timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      t.close();
      this.#opening = null;
      this.#tryTransport(impls, i + 1, token, new SwitchyardError('timeout', `no welcome over ${Impl.transportName}`));
    }, this.#opts.welcomeTimeout);
    t.open();
  }

  /** Channels to subscribe on a new connection, with the positions to resume from. */
  #resumeList() {
    return [...this.#subs.keys()].map((channel) => {
      const since = this.#positions.get(channel);
      return since ? { channel, since } : { channel };
    });
  }

  /**
   * @param {any} t @param {string} name @param {any} welcome
   * @param {import('./transports.js').InitialSub[]} initial
   */
  #onWelcome(t, name, welcome, initial) {
    if (this.#state === 'closed') {
      t.close();
      return;
    }
    const reconnected = this.#everOpened;
    this.#opening = null;
    this.#transport = t;
    this.#transportName = name;
    this.#preferred = name;
    this.#welcome = welcome;
    if (typeof welcome.client === 'string' && welcome.client) this.#clientId = welcome.client;
    this.#state = 'open';
    this.#retries = 0;
    this.#shutdownIn = null;
    this.#everOpened = true;
    if (reconnected) this.stats.reconnects++;
    // Subscriptions the transport opened with reply under ids init-0, init-1, …
    const inInitial = new Set();
    initial.forEach((s, i) => {
      inInitial.add(s.channel);
      this.#pending.set(`init-${i}`, { kind: 'subscribe', channel: s.channel, cause: 'reconnect' });
    });
    for (const channel of this.#subs.keys()) {
      if (!inInitial.has(channel)) this.#sendSubscribe(channel);
    }
    // Document patches wait for their document's subscribed reply.
    for (const e of this.#docs.values()) this.#sendDocSubscribe(e);
    for (const p of this.#publishes.values()) this.#sendPublish(p);
    this.#startHeartbeat(t, welcome);
    this.#emitter.emit('transport', { name });
    this.#emitter.emit('open', { transport: name, session: welcome.session, client: welcome.client, node: welcome.node, reconnected });
    const waiters = this.#connectWaiters.splice(0);
    for (const w of waiters) w.resolve(welcome);
  }

  /** @param {any} t @param {import('./transports.js').CloseInfo} info */
  #onLost(t, info) {
    if (t !== this.#transport) return;
    this.#transport = null;
    this.#stopHeartbeat();
    for (const sub of this.#subs.values()) {
      sub.confirmed = false;
      sub.recovering = false;
    }
    for (const e of this.#docs.values()) {
      e.confirmed = false;
      e.recovering = false;
    }
    // Requests die with the connection; publishes are resent with their msgId.
    for (const [id, p] of this.#pending) {
      if (p.kind === 'request') {
        clearTimeout(p.timer);
        p.reject(new SwitchyardError('disconnected', 'connection lost before the reply'));
      }
      this.#pending.delete(id);
    }
    for (const p of this.#publishes.values()) p.id = null;
    for (const p of this.#patches.values()) p.id = null;
    if (this.#state === 'closed') return;
    if (FATAL_CODES.has(info.code)) {
      this.#fatal(new SwitchyardError(info.code === 4001 ? 'unauthorized' : 'forbidden', info.reason || 'refused', info.code), info);
      return;
    }
    this.#state = 'reconnecting';
    this.#emitter.emit('close', { code: info.code, reason: info.reason, willReconnect: true });
    this.#schedule();
  }

  /** @param {SwitchyardError} err */
  #attemptFailed(err) {
    if (this.#state === 'closed') return;
    this.#emitter.emit('error', { error: err });
    this.#state = this.#everOpened ? 'reconnecting' : 'connecting';
    this.#schedule();
  }

  /** Plans the next attempt: after a drain's `reconnectIn`, else with backoff. */
  #schedule() {
    let delay;
    let reason;
    if (this.#shutdownIn !== null) {
      delay = shutdownDelay(this.#shutdownIn, this.#reconnect, this.#opts.random);
      reason = 'server_shutdown';
      this.#shutdownIn = null;
    } else {
      if (this.#retries >= this.#reconnect.maxRetries) {
        this.#fatal(new SwitchyardError('gave_up', `no connection after ${this.#retries} retries`), { code: 1006, reason: 'gave up' });
        return;
      }
      delay = this.#reconnect.calculateDelay
        ? this.#reconnect.calculateDelay(this.#retries)
        : calculateDelay(this.#retries, this.#reconnect, this.#opts.random);
      reason = 'backoff';
      this.#retries++;
    }
    this.#emitter.emit('reconnecting', { attempt: this.#retries, delay, reason });
    this.#clearTimer();
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.#attempt();
    }, Math.max(0, delay));
  }

  /** Stops for good after an error retrying cannot fix. @param {SwitchyardError} err @param {{code: number, reason: string}} info */
  #fatal(err, info) {
    this.#state = 'closed';
    this.#clearTimer();
    this.#stopHeartbeat();
    this.#transport?.close();
    this.#transport = null;
    this.#emitter.emit('error', { error: err });
    this.#failAll(err);
    this.#emitter.emit('close', { code: info.code, reason: info.reason, willReconnect: false });
  }

  /** @param {SwitchyardError} err */
  #failAll(err) {
    for (const p of this.#pending.values()) {
      if (p.kind === 'request') {
        clearTimeout(p.timer);
        p.reject(err);
      }
    }
    this.#pending.clear();
    for (const p of this.#publishes.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#publishes.clear();
    for (const p of this.#patches.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.#patches.clear();
    for (const sub of this.#subs.values()) {
      for (const w of sub.waiters.splice(0)) w.reject(err);
    }
    for (const e of this.#docs.values()) {
      e.closed = true;
      if (!e.isReady) e.rejectReady(err);
    }
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
  }

  /**
   * Browsers hide WebSocket pings, and SSE comments are invisible too: after a
   * quiet `heartbeat`, an application-level ping must come back in time or
   * the connection is treated as lost (a half-open TCP connection can stay
   * "open" for minutes otherwise).
   * @param {any} t @param {any} welcome
   */
  #startHeartbeat(t, welcome) {
    this.#stopHeartbeat();
    const every = this.#opts.heartbeat ?? (Number(welcome.heartbeatMs) > 0 ? Number(welcome.heartbeatMs) : 30000);
    if (!(every > 0)) return;
    this.#lastRx = Date.now();
    let probe = /** @type {{id: number, sentAt: number, deadline: number} | null} */ (null);
    this.#heartbeat = setInterval(() => {
      if (t !== this.#transport) return;
      const now = Date.now();
      if (probe && this.#lastRx >= probe.sentAt) probe = null;
      if (probe && now >= probe.deadline) {
        this.#pending.delete(probe.id);
        t.close();
        this.#onLost(t, { code: 1006, reason: 'heartbeat timeout' });
        return;
      }
      if (!probe && now - this.#lastRx >= every) {
        const id = this.#nextId++;
        this.#pending.set(id, { kind: 'fire' });
        probe = { id, sentAt: now, deadline: now + Math.min(this.#opts.requestTimeout, every) };
        t.send({ type: 'ping', id });
      }
    }, Math.max(10, Math.min(every, this.#opts.requestTimeout) / 4));
  }

  #stopHeartbeat() {
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }

  #clearTimer() {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  // ---- frames ----

  /** @param {string} channel @param {'reconnect' | 'gap' | 'new'} [cause] */
  #sendSubscribe(channel, cause) {
    const since = this.#positions.get(channel);
    const id = this.#nextId++;
    this.#pending.set(id, { kind: 'subscribe', channel, cause: cause ?? (since ? 'reconnect' : 'new') });
    /** @type {any} */
    const frame = { type: 'subscribe', id, channel };
    if (since) frame.since = since;
    if (this.#subs.get(channel)?.presence) frame.presence = true;
    this.#transport.send(frame);
  }

  /** @param {any} p */
  #sendPublish(p) {
    if (p.id !== null) this.#pending.delete(p.id);
    p.id = this.#nextId++;
    p.sends++;
    this.#pending.set(p.id, { kind: 'publish', key: p.key });
    /** @type {any} */
    const frame = { type: 'publish', id: p.id, channel: p.channel, data: p.data, msgId: p.msgId };
    if (p.skipSelf) frame.skipSelf = true;
    this.#transport.send(frame);
  }

  /** @param {any} frame @returns {Promise<any>} */
  #request(frame) {
    if (this.#state !== 'open') {
      return Promise.reject(new SwitchyardError('disconnected', 'not connected'));
    }
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new SwitchyardError('timeout', `no reply to ${frame.type}`));
      }, this.#opts.requestTimeout);
      this.#pending.set(id, { kind: 'request', resolve, reject, timer });
      this.#transport.send({ ...frame, id });
    });
  }

  /** @param {any} frame */
  #onFrame(frame) {
    this.#lastRx = Date.now();
    switch (frame.type) {
      case 'message':
        this.#onMessage(frame);
        return;
      case 'direct':
        this.#emitter.emit('direct', frame);
        return;
      case 'join':
      case 'leave':
        if (typeof frame.channel === 'string' && typeof frame.client === 'string') {
          this.#emitter.emit('presence', {
            channel: frame.channel,
            change: frame.type,
            client: frame.client,
            principal: typeof frame.principal === 'string' ? frame.principal : '',
            node: typeof frame.node === 'string' ? frame.node : '',
          });
        }
        return;
      case 'SERVER_SHUTDOWN':
        this.#shutdownIn = Number(frame.reconnectIn) >= 0 ? Number(frame.reconnectIn) : this.#reconnect.baseDelay;
        return;
      default:
        break;
    }
    const p = frame.id !== undefined ? this.#pending.get(frame.id) : undefined;
    if (!p) {
      if (frame.type === 'error') this.#emitter.emit('error', { error: new SwitchyardError(frame.code, frame.message ?? '') });
      return;
    }
    this.#pending.delete(frame.id);
    if (p.kind === 'subscribe') this.#onSubscribeReply(p, frame);
    else if (p.kind === 'publish') this.#onPublishReply(p, frame);
    else if (p.kind === 'docsubscribe') this.#onDocSubscribeReply(p, frame);
    else if (p.kind === 'patch') this.#onPatchReply(p, frame);
    else if (p.kind === 'request') {
      clearTimeout(p.timer);
      if (frame.type === 'error') p.reject(new SwitchyardError(frame.code, frame.message ?? ''));
      else p.resolve(frame);
    }
  }

  /** @param {any} p @param {any} frame */
  #onSubscribeReply(p, frame) {
    const sub = this.#subs.get(p.channel);
    if (!sub) return; // unsubscribed meanwhile (the unsubscribe follows on the wire)
    if (frame.type === 'error') {
      const err = new SwitchyardError(frame.code, frame.message ?? '');
      this.#subs.delete(p.channel);
      this.#positions.delete(p.channel);
      for (const w of sub.waiters.splice(0)) w.reject(err);
      this.#emitter.emit('error', { error: err, channel: p.channel });
      return;
    }
    if (frame.type !== 'subscribed') return;
    const { recovered, resumed } = this.#positions.onSubscribed(frame);
    sub.confirmed = true;
    sub.recovering = false;
    for (const w of sub.waiters.splice(0)) w.resolve(frame);
    if (resumed) {
      // recovered:false means messages were lost: the app should reload this channel's state.
      this.#emitter.emit('recovery', { channel: p.channel, recovered, epoch: frame.epoch, seq: frame.seq, cause: p.cause });
    }
  }

  /** @param {any} p @param {any} frame */
  #onPublishReply(p, frame) {
    const pub = this.#publishes.get(p.key);
    if (!pub) return;
    this.#publishes.delete(p.key);
    clearTimeout(pub.timer);
    // never delivered to us: not a gap in our position
    if (frame.type === 'ack' && pub.skipSelf && Number.isSafeInteger(frame.seq) && frame.routes === undefined && this.#subs.has(pub.channel)) {
      this.#positions.onSkipped(pub.channel, frame.seq);
    }
    if (frame.type === 'ack') pub.resolve(frame.seq ?? null);
    else pub.reject(new SwitchyardError(frame.code ?? 'bad_reply', frame.message ?? `unexpected ${frame.type}`));
  }

  // ---- documents ----

  /** @param {any} e @param {'reconnect' | 'gap' | 'epoch_changed' | 'new'} [cause] */
  #sendDocSubscribe(e, cause) {
    const since = e.replica.since();
    const id = this.#nextId++;
    this.#pending.set(id, { kind: 'docsubscribe', channel: e.channel, entry: e, cause: cause ?? (since ? 'reconnect' : 'new') });
    /** @type {any} */
    const frame = { type: 'subscribe', id, channel: e.channel };
    if (since) frame.since = since;
    this.#transport.send(frame);
  }

  /** @param {any} p @param {any} frame */
  #onDocSubscribeReply(p, frame) {
    const e = p.entry;
    if (e.closed || this.#docs.get(e.channel) !== e) return;
    if (frame.type === 'error' || (frame.type === 'subscribed' && frame.document !== true)) {
      const err = frame.type === 'error'
        ? new SwitchyardError(frame.code, frame.message ?? '')
        : new SwitchyardError('invalid', `${e.channel} is not a document channel`);
      if (frame.type === 'subscribed') this.#sendUnsubscribe(e.channel);
      this.#failDocument(e, err);
      return;
    }
    if (frame.type !== 'subscribed') return;
    const { recovered, resumed } = e.replica.onSubscribed(frame);
    e.confirmed = true;
    e.recovering = false;
    if (resumed) {
      // recovered:false: the missed patches are gone, a snapshot replaces the state.
      this.#emitter.emit('recovery', { channel: e.channel, recovered, epoch: frame.epoch, version: frame.version, cause: p.cause, document: true });
    }
    for (const q of this.#patches.values()) if (q.entry === e && q.id === null) this.#sendPatch(q);
  }

  /** Closes a document the gateway refused; its patches fail with the same error. @param {any} e @param {SwitchyardError} err */
  #failDocument(e, err) {
    e.closed = true;
    this.#docs.delete(e.channel);
    this.#dropPatches(e, err);
    if (!e.isReady) e.rejectReady(err);
    if (e.onError) {
      try {
        e.onError(err);
      } catch (x) {
        this.#emitter.emit('error', { error: x, channel: e.channel });
      }
    }
    this.#emitter.emit('error', { error: err, channel: e.channel });
  }

  /** @param {any} e @param {SwitchyardError} err */
  #dropPatches(e, err) {
    for (const [key, q] of this.#patches) {
      if (q.entry !== e) continue;
      this.#patches.delete(key);
      clearTimeout(q.timer);
      if (q.id !== null) this.#pending.delete(q.id);
      q.reject(err);
    }
  }

  /** @param {any} e */
  #closeDocument(e) {
    if (e.closed) return;
    e.closed = true;
    this.#docs.delete(e.channel);
    const err = new SwitchyardError('closed', `document ${e.channel} was closed`);
    this.#dropPatches(e, err);
    if (!e.isReady) e.rejectReady(err);
    if (this.#state === 'open') this.#sendUnsubscribe(e.channel);
  }

  /** @param {string} channel */
  #sendUnsubscribe(channel) {
    const id = this.#nextId++;
    this.#pending.set(id, { kind: 'fire' });
    this.#transport.send({ type: 'unsubscribe', id, channel });
  }

  /**
   * @param {any} e @param {any} delta @param {{msgId?: string, timeout?: number}} options
   * @returns {Promise<number>}
   */
  #patch(e, delta, options) {
    if (this.#state === 'closed') return Promise.reject(new SwitchyardError('closed', 'client was closed'));
    if (e.closed) return Promise.reject(new SwitchyardError('closed', `document ${e.channel} was closed`));
    let bytes;
    try {
      bytes = e.replica.merge.encode(delta);
    } catch (x) {
      return Promise.reject(new SwitchyardError('invalid', String(/** @type {any} */ (x)?.message ?? x)));
    }
    const msgId = options.msgId ?? randomId();
    return new Promise((resolve, reject) => {
      const key = this.#nextPublish++;
      // `base`: the version this patch was made on (0 before the first snapshot).
      const p = { key, entry: e, msgId, bytes, base: e.replica.version ?? 0, resolve, reject, id: /** @type {number | null} */ (null), sends: 0, timer: /** @type {any} */ (null) };
      p.timer = setTimeout(() => {
        this.#patches.delete(key);
        if (p.id !== null) this.#pending.delete(p.id);
        reject(new SwitchyardError('timeout', `patch to ${e.channel} not acknowledged`));
      }, options.timeout ?? this.#opts.publishTimeout);
      this.#patches.set(key, p);
      if (this.#state === 'open' && e.confirmed) this.#sendPatch(p);
    });
  }

  /** @param {any} p */
  #sendPatch(p) {
    const t = this.#transport;
    if (typeof t?.sendBinary !== 'function') return; // the subscribe is refused with `unsupported`
    if (p.id !== null) this.#pending.delete(p.id);
    p.id = this.#nextId++;
    p.sends++;
    this.#pending.set(p.id, { kind: 'patch', key: p.key });
    t.sendBinary(encodeStatePatch({ kind: Kind.PATCH, channel: p.entry.channel, delta: p.bytes, msgId: p.msgId, id: p.id, version: p.base }));
  }

  /** @param {any} p @param {any} frame */
  #onPatchReply(p, frame) {
    const q = this.#patches.get(p.key);
    if (!q) return;
    this.#patches.delete(p.key);
    clearTimeout(q.timer);
    if (frame.type === 'ack') q.resolve(Number(frame.version));
    else q.reject(new SwitchyardError(frame.code ?? 'bad_reply', frame.message ?? `unexpected ${frame.type}`));
  }

  /** A binary frame: a `StatePatch` for one of the open documents. @param {Uint8Array} bytes */
  #onBinary(bytes) {
    this.#lastRx = Date.now();
    let f;
    try {
      f = decodeStatePatch(bytes);
    } catch (x) {
      this.#emitter.emit('error', { error: new SwitchyardError('bad_frame', `undecodable binary frame: ${/** @type {any} */ (x)?.message ?? x}`) });
      return;
    }
    const e = this.#docs.get(f.channel);
    if (!e) return;
    let result;
    try {
      result = e.replica.onFrame(f);
    } catch (x) {
      this.#emitter.emit('error', { error: new SwitchyardError('bad_frame', `${e.channel} v${f.version}: ${/** @type {any} */ (x)?.message ?? x}`), channel: e.channel });
      // A patch this replica cannot apply: start over from a snapshot (a bad snapshot is not asked for again).
      if (f.kind !== Kind.SNAPSHOT && !e.recovering && this.#state === 'open') {
        e.replica.reset();
        e.recovering = true;
        this.#sendDocSubscribe(e, 'gap');
      }
      return;
    }
    switch (result.verdict) {
      case 'applied':
        this.#docChanged(e, f, result.update);
        return;
      case 'duplicate':
        this.stats.duplicatesDropped++;
        return;
      case 'gap':
      case 'epoch':
        // Drop it: resubscribing from the current version replays it in order (or sends a snapshot).
        if (result.verdict === 'gap') this.stats.gaps++;
        if (!e.recovering && this.#state === 'open') {
          e.recovering = true;
          this.#sendDocSubscribe(e, result.verdict === 'gap' ? 'gap' : 'epoch_changed');
        }
        return;
      default:
        return;
    }
  }

  /** @param {any} e @param {import('./statepatch.js').StatePatch} f @param {any} update */
  #docChanged(e, f, update) {
    /** @type {import('./documents.js').DocumentChange} */
    const change = {
      kind: f.kind === Kind.SNAPSHOT ? 'snapshot' : f.kind === Kind.DIFF ? 'diff' : 'patch',
      version: e.replica.version,
      epoch: e.replica.epoch ?? '',
      delta: update,
      clientId: f.clientId,
      msgId: f.msgId,
      lamport: f.lamport,
    };
    for (const fn of [...e.listeners]) {
      try {
        fn(e.replica.state, change);
      } catch (x) {
        this.#emitter.emit('error', { error: x, channel: e.channel });
      }
    }
    if (!e.isReady) {
      e.isReady = true;
      e.resolveReady(e.doc);
    }
  }

  /** @param {any} frame */
  #onMessage(frame) {
    const sub = this.#subs.get(frame.channel);
    if (!sub) return;
    const verdict = this.#positions.onMessage(frame);
    if (verdict === 'duplicate') {
      this.stats.duplicatesDropped++;
      return;
    }
    if (verdict === 'gap') {
      // Hold it: resubscribing from the last position replays it in order.
      this.stats.gaps++;
      if (!sub.recovering && this.#state === 'open') {
        sub.recovering = true;
        this.#sendSubscribe(frame.channel, 'gap');
      }
      return;
    }
    if (verdict === 'epoch') {
      this.#emitter.emit('recovery', { channel: frame.channel, recovered: false, epoch: frame.epoch, seq: frame.seq, cause: 'epoch_changed' });
    }
    for (const h of [...sub.handlers]) {
      try {
        h(frame.data, frame);
      } catch (e) {
        this.#emitter.emit('error', { error: e, channel: frame.channel });
      }
    }
  }
}

/** A random UUID v4 (crypto.randomUUID where available, e.g. outside secure contexts). */
export function randomId() {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === 'function') return c.randomUUID();
  const b = new Uint8Array(16);
  if (typeof c?.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
