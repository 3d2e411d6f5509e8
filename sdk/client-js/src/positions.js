/**
 * Per-channel stream positions: the last `epoch` and `seq` seen, used to resume
 * after a reconnect (`subscribe` with `since`) and to drop duplicates and
 * notice gaps in live delivery.
 * @module
 */

/** @typedef {{epoch: string, seq: number}} Position */

/**
 * What to do with an incoming `message`:
 * - `deliver`: the next message (or the first one seen)
 * - `duplicate`: already delivered (seq not above the last one); drop it
 * - `gap`: messages are missing; hold it and resubscribe from the last position
 * - `epoch`: the channel's history was lost (new epoch); deliver, the app
 *   should reload its state
 * @typedef {'deliver' | 'duplicate' | 'gap' | 'epoch'} Verdict
 */

/** Last known position of every subscribed channel. */
export class Positions {
  /** @type {Map<string, Position>} */
  #map = new Map();

  /**
   * The position to resume `channel` from, if any.
   * @param {string} channel
   * @returns {Position | undefined}
   */
  get(channel) {
    const p = this.#map.get(channel);
    return p ? { epoch: p.epoch, seq: p.seq } : undefined;
  }

  /** @param {string} channel */
  delete(channel) {
    this.#map.delete(channel);
  }

  /**
   * Applies a `subscribed` reply. With `recovered: true` the position stays
   * where it was (the missed messages follow, in order); otherwise it jumps to
   * the channel's latest seq.
   * @param {{channel: string, epoch: string, seq: number, recovered?: boolean}} frame
   * @returns {{recovered: boolean, resumed: boolean}} `resumed`: there was a position to resume from
   */
  onSubscribed(frame) {
    const prev = this.#map.get(frame.channel);
    const recovered = frame.recovered === true && !!prev && prev.epoch === frame.epoch;
    if (!recovered) {
      this.#map.set(frame.channel, { epoch: String(frame.epoch), seq: toSeq(frame.seq) });
    }
    return { recovered, resumed: !!prev };
  }

  /**
   * Applies a `message` and says what to do with it.
   * @param {{channel: string, epoch: string, seq: number}} frame
   * @returns {Verdict}
   */
  onMessage(frame) {
    const seq = toSeq(frame.seq);
    const prev = this.#map.get(frame.channel);
    if (!prev) {
      this.#map.set(frame.channel, { epoch: String(frame.epoch), seq });
      return 'deliver';
    }
    if (prev.epoch !== frame.epoch) {
      this.#map.set(frame.channel, { epoch: String(frame.epoch), seq });
      return 'epoch';
    }
    if (seq <= prev.seq) return 'duplicate';
    if (seq > prev.seq + 1) return 'gap';
    prev.seq = seq;
    return 'deliver';
  }
}

/** @param {unknown} v */
function toSeq(v) {
  const n = Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}
