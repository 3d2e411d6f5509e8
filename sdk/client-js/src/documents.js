/**
 * Document channels (protocol v1 state sync): the replica of one document
 * (version, epoch, state), the built-in last-writer-wins JSON map, and the
 * `SwitchyardDocument` handle that `client.document()` returns.
 * @module
 */

import { Kind } from './statepatch.js';

/**
 * How a document's bytes become state. The default is `lwwMerge`; a CRDT
 * merge policy on the gateway needs a matching one here.
 * @template S, U
 * @typedef {object} Merge
 * @property {() => S} empty                 state before the first snapshot
 * @property {(bytes: Uint8Array, kind: number) => U} decode  a frame's `delta`
 * @property {(update: U) => S} snapshot     the state a `SNAPSHOT` carries
 * @property {(state: S, update: U) => S} apply  a `PATCH` (or `DIFF`) on top of `state`; returns the new state
 * @property {(delta: any) => Uint8Array} encode  what `doc.patch(delta)` sends
 */

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** @param {unknown} v @returns {v is Record<string, any>} */
function isPlainObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Applies an LWW delta: each key is set to its value, `null` deletes it.
 * Returns a new object; `state` is not changed.
 * @param {Record<string, any>} state
 * @param {Record<string, any>} delta
 * @returns {Record<string, any>}
 */
export function applyLww(state, delta) {
  const out = { ...state };
  for (const [k, v] of Object.entries(delta)) {
    if (v === null) delete out[k];
    // defineProperty, not `out[k] = v`: a key named "__proto__" stays a plain key.
    else Object.defineProperty(out, k, { value: v, writable: true, enumerable: true, configurable: true });
  }
  return out;
}

/**
 * Decodes an LWW `delta` (a UTF-8 JSON object; empty bytes are `{}`).
 * @param {Uint8Array} bytes
 * @returns {Record<string, any>}
 */
export function decodeLww(bytes) {
  if (bytes.length === 0) return {};
  let v;
  try {
    v = JSON.parse(utf8Decoder.decode(bytes));
  } catch (e) {
    throw new TypeError(`LWW delta is not UTF-8 JSON: ${e}`);
  }
  if (!isPlainObject(v)) throw new TypeError('LWW delta is not a JSON object');
  return v;
}

/**
 * Encodes an LWW delta for `patch()`.
 * @param {Record<string, any>} delta
 * @returns {Uint8Array}
 */
export function encodeLww(delta) {
  if (!isPlainObject(delta)) throw new TypeError('an LWW patch is a plain object of keys to set (null deletes)');
  return utf8Encoder.encode(JSON.stringify(delta));
}

/**
 * The built-in last-writer-wins JSON map (the gateway's default merge
 * policy): state is a plain object, a delta sets keys, `null` deletes.
 * @type {Merge<Record<string, any>, Record<string, any>>}
 */
export const lwwMerge = Object.freeze({
  empty: () => ({}),
  decode: (/** @type {Uint8Array} */ bytes) => decodeLww(bytes),
  snapshot: (/** @type {Record<string, any>} */ update) => applyLww({}, update),
  apply: applyLww,
  encode: encodeLww,
});

/**
 * What to do with an incoming frame:
 * - `applied`: the state moved to the frame's version
 * - `duplicate`: that version was applied already; dropped
 * - `gap`: versions are missing; dropped, resubscribe from the current version
 * - `epoch`: the document's history was reset (new epoch); resubscribe for a snapshot
 * - `ignored`: a patch while a snapshot is on its way (the snapshot includes it), or an unknown kind
 * @typedef {'applied' | 'duplicate' | 'gap' | 'epoch' | 'ignored'} FrameVerdict
 */

/** @param {unknown} v */
function toVersion(v) {
  const n = Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

/**
 * The client's copy of one document: its state at `version` under `epoch`.
 * Pure bookkeeping (no I/O), so it can be tested alone.
 * @template [S=Record<string, any>], [U=any]
 */
export class Replica {
  /** @type {string | null} */
  epoch = null;
  /** @type {number | null} version of `state`; null before the first snapshot */
  version = null;
  /** A snapshot was announced (`subscribed` with `recovered:false`) and has not arrived. */
  awaitingSnapshot = false;

  /** @param {Merge<S, U>} merge */
  constructor(merge) {
    this.merge = merge;
    /** @type {S} */
    this.state = merge.empty();
  }

  /** The point to resume from (`since` of the next subscribe), if any. */
  since() {
    return this.epoch !== null && this.version !== null ? { epoch: this.epoch, version: this.version } : undefined;
  }

  /**
   * Applies a `subscribed` reply. `recovered:true` under the same epoch: the
   * missed patches follow; otherwise a snapshot does.
   * @param {{epoch?: string, version?: number, recovered?: boolean}} frame
   * @returns {{recovered: boolean, resumed: boolean}} `resumed`: there was a position to resume from
   */
  onSubscribed(frame) {
    const prev = this.since();
    const recovered = frame.recovered === true && !!prev && prev.epoch === frame.epoch;
    if (!recovered) {
      this.awaitingSnapshot = true;
      if (typeof frame.epoch === 'string') this.epoch = frame.epoch;
    }
    return { recovered, resumed: !!prev };
  }

  /**
   * Applies a decoded `StatePatch` and says what happened. Throws when the
   * merge cannot decode the delta (the state is unchanged then).
   * @param {import('./statepatch.js').StatePatch} f
   * @returns {{verdict: FrameVerdict, update?: U}}
   */
  onFrame(f) {
    const version = toVersion(f.version);
    if (f.kind === Kind.SNAPSHOT) {
      const update = this.merge.decode(f.delta, f.kind);
      this.state = this.merge.snapshot(update);
      this.version = version;
      if (f.epoch) this.epoch = f.epoch;
      this.awaitingSnapshot = false;
      return { verdict: 'applied', update };
    }
    if (f.kind !== Kind.PATCH && f.kind !== Kind.DIFF) return { verdict: 'ignored' };
    if (this.awaitingSnapshot || this.version === null) return { verdict: 'ignored' };
    if (f.epoch && this.epoch !== null && f.epoch !== this.epoch) return { verdict: 'epoch' };
    if (version <= this.version) return { verdict: 'duplicate' };
    if (version > this.version + 1 && f.kind === Kind.PATCH) return { verdict: 'gap' };
    const update = this.merge.decode(f.delta, f.kind);
    this.state = this.merge.apply(this.state, update);
    this.version = version;
    return { verdict: 'applied', update };
  }

  /** Forgets the position: the next subscribe asks for a snapshot. */
  reset() {
    this.version = null;
    this.awaitingSnapshot = false;
  }
}

/**
 * One change to a document, as `onChange` listeners see it.
 * @typedef {object} DocumentChange
 * @property {'snapshot' | 'patch' | 'diff'} kind
 * @property {number} version   the document's version after the change
 * @property {string} epoch
 * @property {any} delta        the decoded update (for LWW: the keys set, `null` = deleted; a snapshot: the whole object)
 * @property {string} clientId  the client that made the change (empty for a snapshot)
 * @property {string} msgId
 * @property {number | bigint} lamport
 */

/**
 * The shared record behind a `SwitchyardDocument`, owned by the client.
 * @typedef {object} DocumentEntry
 * @property {string} channel
 * @property {Replica<any, any>} replica
 * @property {Set<(state: any, change: DocumentChange) => void>} listeners
 * @property {((error: Error) => void) | undefined} onError
 * @property {boolean} confirmed   a `subscribed` arrived on the current connection
 * @property {boolean} recovering  a resubscribe for a gap is in flight
 * @property {boolean} isReady     the first snapshot (or recovery) was applied
 * @property {boolean} closed
 * @property {Promise<any>} ready
 * @property {(doc: any) => void} resolveReady
 * @property {(err: Error) => void} rejectReady
 */

/**
 * A document channel seen from the app (`client.document(channel)`): the
 * state at `version`, kept current by the gateway's patches, resumed by
 * version after a reconnect.
 */
export class SwitchyardDocument {
  #e;
  #ctl;

  /**
   * @param {DocumentEntry} entry
   * @param {{patch: (delta: any, options: {msgId?: string, timeout?: number}) => Promise<number>, close: () => void}} ctl
   */
  constructor(entry, ctl) {
    this.#e = entry;
    this.#ctl = ctl;
  }

  /** The channel name. */
  get channel() {
    return this.#e.channel;
  }

  /** The state (for LWW a plain object; treat it as read-only, every change makes a new one). */
  get state() {
    return this.#e.replica.state;
  }

  /** The version of `state` (null before the first snapshot). */
  get version() {
    return this.#e.replica.version;
  }

  /** The document's epoch (null before the first `subscribed`). */
  get epoch() {
    return this.#e.replica.epoch;
  }

  /** True after `close()` or a refused subscribe. */
  get closed() {
    return this.#e.closed;
  }

  /** Resolves with this document once its first snapshot is applied; rejects with the gateway's error. */
  get ready() {
    return this.#e.ready;
  }

  /**
   * Calls `fn(state, change)` after every applied snapshot or patch.
   * Returns a function that removes it.
   * @param {(state: any, change: DocumentChange) => void} fn
   */
  onChange(fn) {
    this.#e.listeners.add(fn);
    return () => {
      this.#e.listeners.delete(fn);
    };
  }

  /**
   * Sends a patch (for LWW: keys to set, `null` deletes); resolves with the
   * version the gateway acknowledged. The state changes when the gateway's
   * broadcast of it arrives (this client gets it too). A patch made offline
   * waits for the resubscribe; a retried patch keeps its `msgId`, so the
   * gateway applies it once.
   * @param {any} delta
   * @param {{msgId?: string, timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  patch(delta, options = {}) {
    return this.#ctl.patch(delta, options);
  }

  /** Unsubscribes; unacknowledged patches fail with `closed`. */
  close() {
    this.#ctl.close();
  }
}
