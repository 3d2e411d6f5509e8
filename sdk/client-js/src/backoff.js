/**
 * Reconnect delays: exponential backoff with jitter, so that clients dropped
 * together (a node restart) do not come back together.
 * @module
 */

/**
 * @typedef {object} ReconnectOptions
 * @property {number} maxRetries  consecutive failed attempts before giving up
 * @property {number} baseDelay   delay of the first retry, ms
 * @property {number} maxDelay    cap of the exponential part, ms
 * @property {number} jitter      total spread: 0.4 means ±20 %
 * @property {(attempt: number) => number} [calculateDelay] overrides the formula
 */

/** Defaults: the seed's reconnect configuration. @type {Readonly<ReconnectOptions>} */
export const DEFAULT_RECONNECT = Object.freeze({
  maxRetries: 8,
  baseDelay: 1000,
  maxDelay: 30000,
  jitter: 0.4,
});

/**
 * Delay before retry number `attempt` (0-based):
 * `min(maxDelay, baseDelay * 2^attempt) * (1 + (random() * jitter - jitter / 2))`.
 * With the defaults this is the seed's
 * `min(30000, 1000 * 2^attempt) * (1 + (Math.random() * 0.4 - 0.2))`.
 * @param {number} attempt
 * @param {ReconnectOptions} [opts]
 * @param {() => number} [random] uniform in [0, 1)
 * @returns {number} milliseconds
 */
export function calculateDelay(attempt, opts = DEFAULT_RECONNECT, random = Math.random) {
  const n = Math.max(0, Math.floor(attempt));
  const base = Math.min(opts.maxDelay, opts.baseDelay * Math.pow(2, n));
  return base * (1 + (random() * opts.jitter - opts.jitter / 2));
}

/**
 * Delay after `SERVER_SHUTDOWN {reconnectIn}`: the announced delay plus up to
 * `jitter` of it again, spreading the reconnects of a drained node.
 * @param {number} reconnectIn ms announced by the server
 * @param {ReconnectOptions} [opts]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function shutdownDelay(reconnectIn, opts = DEFAULT_RECONNECT, random = Math.random) {
  const ms = Number.isFinite(reconnectIn) && reconnectIn >= 0 ? Math.min(reconnectIn, 300000) : opts.baseDelay;
  return ms * (1 + random() * opts.jitter);
}
