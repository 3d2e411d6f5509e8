/**
 * A hand-rolled protobuf codec for the one binary frame of protocol v1,
 * `switchyard.v1.StatePatch` (`proto/switchyard/v1/state.proto`):
 *
 * ```proto
 * message StatePatch {
 *   int64  version   = 1;
 *   bytes  delta     = 2;
 *   string client_id = 3;
 *   string channel   = 4;
 *   Kind   kind      = 5;  // PATCH = 0, SNAPSHOT = 1, DIFF = 2
 *   uint64 lamport   = 6;
 *   string msg_id    = 7;
 *   uint64 id        = 8;
 *   string epoch     = 9;
 * }
 * ```
 *
 * 64-bit integers decode to numbers while they are safe integers and to
 * `BigInt` beyond; both are accepted when encoding. Unknown fields are skipped
 * by wire type; malformed input (truncated, overlong varints, lengths past the
 * end, wrong wire types, invalid UTF-8) throws a `ProtobufError`.
 * @module
 */

/** `StatePatch.Kind`. */
export const Kind = Object.freeze({ PATCH: 0, SNAPSHOT: 1, DIFF: 2 });

/**
 * A decoded `StatePatch` (proto3: absent fields hold their defaults).
 * @typedef {object} StatePatch
 * @property {number | bigint} version
 * @property {Uint8Array} delta
 * @property {string} clientId
 * @property {string} channel
 * @property {number} kind      one of `Kind` (unknown values are kept as numbers)
 * @property {number | bigint} lamport
 * @property {string} msgId
 * @property {number | bigint} id
 * @property {string} epoch
 */

/** Input that cannot be a `StatePatch`, or a value that cannot be encoded. */
export class ProtobufError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'ProtobufError';
  }
}

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const START_GROUP = 3;
const END_GROUP = 4;
const FIXED32 = 5;

/** Field number → [name, wire type, scalar kind]. */
const FIELDS = /** @type {Record<number, [keyof StatePatch, number, 'int64' | 'uint64' | 'enum' | 'bytes' | 'string']>} */ ({
  1: ['version', VARINT, 'int64'],
  2: ['delta', LEN, 'bytes'],
  3: ['clientId', LEN, 'string'],
  4: ['channel', LEN, 'string'],
  5: ['kind', VARINT, 'enum'],
  6: ['lamport', VARINT, 'uint64'],
  7: ['msgId', LEN, 'string'],
  8: ['id', VARINT, 'uint64'],
  9: ['epoch', LEN, 'string'],
});

const MAX_GROUP_DEPTH = 64;
const U64_MAX = (1n << 64n) - 1n;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** @returns {StatePatch} */
function empty() {
  return { version: 0, delta: new Uint8Array(0), clientId: '', channel: '', kind: Kind.PATCH, lamport: 0, msgId: '', id: 0, epoch: '' };
}

// ---- decoding ----

/**
 * Decodes one `StatePatch`.
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView} input
 * @returns {StatePatch}
 */
export function decodeStatePatch(input) {
  const buf = toBytes(input);
  const r = { buf, pos: 0 };
  const out = empty();
  while (r.pos < buf.length) {
    const [field, wire] = readTag(r);
    const spec = FIELDS[field];
    if (!spec) {
      skipField(r, field, wire, 0);
      continue;
    }
    const [name, expected, type] = spec;
    if (wire !== expected) throw new ProtobufError(`field ${field} (${name}): wire type ${wire}, expected ${expected}`);
    const o = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (out));
    switch (type) {
      case 'int64':
        o[name] = narrow(BigInt.asIntN(64, toBig(readVarint(r))));
        break;
      case 'uint64':
        o[name] = narrow(toBig(readVarint(r)));
        break;
      case 'enum':
        o[name] = Number(BigInt.asIntN(32, toBig(readVarint(r))));
        break;
      case 'bytes':
        o[name] = readLen(r).slice();
        break;
      case 'string':
        try {
          o[name] = utf8Decoder.decode(readLen(r));
        } catch {
          throw new ProtobufError(`field ${field} (${name}): invalid UTF-8`);
        }
        break;
    }
  }
  return out;
}

/** @param {Uint8Array | ArrayBuffer | ArrayBufferView} input */
function toBytes(input) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  throw new ProtobufError('not binary data');
}

/**
 * Reads a varint: a number while it fits 49 bits, else a BigInt.
 * @param {{buf: Uint8Array, pos: number}} r
 * @returns {number | bigint}
 */
function readVarint(r) {
  const { buf } = r;
  let n = 0;
  for (let i = 0; i < 7; i++) {
    if (r.pos >= buf.length) throw new ProtobufError('truncated varint');
    const b = buf[r.pos++];
    n += (b & 0x7f) * 2 ** (7 * i);
    if (b < 0x80) return n;
  }
  let big = BigInt(n);
  for (let i = 7; i < 10; i++) {
    if (r.pos >= buf.length) throw new ProtobufError('truncated varint');
    const b = buf[r.pos++];
    if (i === 9 && b > 1) throw new ProtobufError('varint over 64 bits');
    big |= BigInt(b & 0x7f) << BigInt(7 * i);
    if (b < 0x80) return big;
  }
  throw new ProtobufError('varint longer than 10 bytes');
}

/** @param {number | bigint} v */
function toBig(v) {
  return typeof v === 'bigint' ? v : BigInt(v);
}

/** A BigInt as a number when that is exact. @param {bigint} v */
function narrow(v) {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** @param {{buf: Uint8Array, pos: number}} r @returns {[number, number]} */
function readTag(r) {
  const v = readVarint(r);
  if (typeof v === 'bigint' || v > 0xffffffff) throw new ProtobufError('tag over 32 bits');
  const field = Math.floor(v / 8);
  if (field === 0) throw new ProtobufError('field number 0');
  return [field, v % 8];
}

/** @param {{buf: Uint8Array, pos: number}} r */
function readLen(r) {
  const len = readVarint(r);
  if (typeof len === 'bigint' || len > r.buf.length - r.pos) throw new ProtobufError('length past the end of the frame');
  const start = r.pos;
  r.pos += len;
  return r.buf.subarray(start, start + len);
}

/**
 * Skips one field's value.
 * @param {{buf: Uint8Array, pos: number}} r @param {number} field @param {number} wire @param {number} depth
 */
function skipField(r, field, wire, depth) {
  switch (wire) {
    case VARINT:
      readVarint(r);
      return;
    case FIXED64:
      skip(r, 8);
      return;
    case LEN:
      readLen(r);
      return;
    case FIXED32:
      skip(r, 4);
      return;
    case START_GROUP: {
      if (depth >= MAX_GROUP_DEPTH) throw new ProtobufError('groups nested too deep');
      for (;;) {
        if (r.pos >= r.buf.length) throw new ProtobufError(`group ${field} not closed`);
        const [f, w] = readTag(r);
        if (w === END_GROUP) {
          if (f !== field) throw new ProtobufError(`group ${field} closed by ${f}`);
          return;
        }
        skipField(r, f, w, depth + 1);
      }
    }
    case END_GROUP:
      throw new ProtobufError(`unexpected end of group ${field}`);
    default:
      throw new ProtobufError(`field ${field}: unknown wire type ${wire}`);
  }
}

/** @param {{buf: Uint8Array, pos: number}} r @param {number} n */
function skip(r, n) {
  if (r.buf.length - r.pos < n) throw new ProtobufError('truncated fixed-width field');
  r.pos += n;
}

// ---- encoding ----

/**
 * Encodes a `StatePatch`; absent and default fields are left out (proto3).
 * @param {Partial<StatePatch> & {delta?: Uint8Array | string}} p `delta` may be a string (UTF-8 encoded)
 * @returns {Uint8Array}
 */
export function encodeStatePatch(p) {
  /** @type {Array<number[] | Uint8Array>} */
  const parts = [];
  for (const [num, [name, , type]] of Object.entries(FIELDS)) {
    const field = Number(num);
    const v = /** @type {any} */ (p)[name];
    if (v === undefined || v === null) continue;
    switch (type) {
      case 'int64':
      case 'uint64':
      case 'enum': {
        const big = integer(v, name, type);
        if (big === 0n) break;
        parts.push(varint(BigInt(field * 8 + VARINT)), varint(big));
        break;
      }
      case 'bytes':
      case 'string': {
        let bytes;
        if (typeof v === 'string') bytes = utf8Encoder.encode(v);
        else if (type === 'bytes' && (v instanceof Uint8Array || v instanceof ArrayBuffer || ArrayBuffer.isView(v))) bytes = toBytes(v);
        else throw new ProtobufError(`${name}: expected ${type === 'bytes' ? 'bytes or a string' : 'a string'}`);
        if (bytes.length === 0) break;
        parts.push(varint(BigInt(field * 8 + LEN)), varint(BigInt(bytes.length)), bytes);
        break;
      }
    }
  }
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Checks an integer field and returns its unsigned 64-bit two's-complement value.
 * @param {unknown} v @param {string} name @param {'int64' | 'uint64' | 'enum'} type
 */
function integer(v, name, type) {
  let big;
  if (typeof v === 'bigint') big = v;
  else if (typeof v === 'number' && Number.isSafeInteger(v)) big = BigInt(v);
  else throw new ProtobufError(`${name}: expected a safe integer or a BigInt, got ${String(v)}`);
  const [lo, hi] =
    type === 'uint64' ? [0n, U64_MAX] : type === 'int64' ? [-(1n << 63n), (1n << 63n) - 1n] : [-(1n << 31n), (1n << 31n) - 1n];
  if (big < lo || big > hi) throw new ProtobufError(`${name}: ${big} out of range for ${type}`);
  return BigInt.asUintN(64, big); // negative int64/enum values take 10 bytes, as in protobuf
}

/** @param {bigint} v unsigned, < 2^64 */
function varint(v) {
  const out = [];
  while (v > 0x7fn) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}
