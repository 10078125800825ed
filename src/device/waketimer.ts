/**
 * One timer for a sans-I/O core (or several): armed at the core's wake hint, re-armed only
 * when the hint moves earlier, so the per-packet cost is a comparison. When it fires, the
 * driver's `fire` runs the core's timers and sends what they produce.
 */
export interface Wakeable {
  readonly wakeHint: number;
  resetWakeHint(): void;
}

export class WakeTimer {
  readonly #core: Wakeable;
  readonly #fire: (now: number) => void;
  readonly #now: () => number;
  readonly #rate: () => number;
  #timer: NodeJS.Timeout | null = null;
  #at = Infinity;
  #running = true;

  /** `rate`: how many clock ms pass per real ms (1, or more under a test's time scale). */
  constructor(core: Wakeable, fire: (now: number) => void, now: () => number = () => performance.now(), rate: () => number = () => 1) {
    this.#core = core;
    this.#fire = fire;
    this.#now = now;
    this.#rate = rate;
  }

  /** Call after anything that may have armed a core timer. */
  schedule(): void {
    if (!this.#running) return;
    const at = this.#core.wakeHint;
    if (at >= this.#at) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#at = at;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#at = Infinity;
      this.#fire(this.#now());
      this.#core.resetWakeHint();
      this.schedule();
    }, Math.max(0, (at - this.#now()) / this.#rate()));
  }

  /** Forgets the armed time and re-arms from an exact hint (after configuration changes). */
  reset(): void {
    this.#core.resetWakeHint();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#at = Infinity;
    this.schedule();
  }

  stop(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
