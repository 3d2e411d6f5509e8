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
   * Seqs of this connection's own `skipSelf` publishes (from their acks): the
   * gateway never sends them here, so they are not a gap, and a replay of one
   * is dropped.
   * @type {Map<string, Set<number>>}
   */
  #skipped = new Map();

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
    this.#skipped.delete(channel);
  }

  /**
   * A `skipSelf` publish to `channel` was acked with `seq`: the position
   * moves over it (and over earlier skipped ones it now reaches).
   * @param {string} channel @param {number} seq
   */
  onSkipped(channel, seq) {
    let set = this.#skipped.get(channel);
    if (!set) this.#skipped.set(channel, (set = new Set()));
    if (set.size >= 4096) set.delete(set.values().next().value);
    set.add(toSeq(seq));
    const p = this.#map.get(channel);
    if (p) this.#advance(p, set);
  }

  /** @param {Position} p @param {Set<number>} set */
  #advance(p, set) {
    while (set.delete(p.seq + 1)) p.seq++;
    for (const s of set) if (s <= p.seq) set.delete(s);
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
      this.#skipped.delete(frame.channel);
      return 'epoch';
    }
    if (seq <= prev.seq) return 'duplicate';
    const set = this.#skipped.get(frame.channel);
    if (set?.has(seq)) return 'duplicate'; // our own skipSelf message, replayed
    if (seq > prev.seq + 1) {
      const missing = seq - prev.seq - 1;
      let covered = !!set && missing <= set.size;
      for (let s = prev.seq + 1; covered && s < seq; s++) covered = set.has(s);
      if (!covered) return 'gap';
    }
    prev.seq = seq;
    if (set) this.#advance(prev, set);
    return 'deliver';
  }
}

/** @param {unknown} v */
function toSeq(v) {
  const n = Number(v);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}
