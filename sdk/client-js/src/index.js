/**
 * switchyard-client: browser and Node client for the Switchyard gateway.
 * @module
 */
export { SwitchyardClient, SwitchyardError, randomId } from './client.js';
export { calculateDelay, shutdownDelay, DEFAULT_RECONNECT } from './backoff.js';
export { Positions } from './positions.js';
export { Endpoint, TRANSPORTS, WebSocketTransport, SseTransport, PollTransport } from './transports.js';
export { SwitchyardDocument, Replica, lwwMerge, applyLww, decodeLww, encodeLww } from './documents.js';
export { Kind, encodeStatePatch, decodeStatePatch, ProtobufError } from './statepatch.js';
