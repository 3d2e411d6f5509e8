/** A minimal event emitter (works the same in browsers and Node). @module */

export class Emitter {
  /** @type {Map<string, Set<Function>>} */
  #handlers = new Map();

  /**
   * Adds a listener; returns a function that removes it.
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void}
   */
  on(event, fn) {
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {Function} fn */
  off(event, fn) {
    this.#handlers.get(event)?.delete(fn);
  }

  /**
   * Calls every listener; a throwing listener is reported on `error` and does
   * not stop the others.
   * @param {string} event
   * @param {unknown} payload
   */
  emit(event, payload) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (e) {
        if (event !== 'error') this.emit('error', { error: e, source: event });
      }
    }
  }
}
