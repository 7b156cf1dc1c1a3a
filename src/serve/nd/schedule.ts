// When to send router advertisements (RFC 4861 §6.2.4-6.2.6), without
// timers: the caller passes the time in and asks when the next RA is due,
// so the whole schedule can be replayed in a test with a fake clock and a
// seeded random source.
//
// - Unsolicited RAs go out every MinRtrAdvInterval..MaxRtrAdvInterval
//   seconds, uniformly at random, the first MAX_INITIAL_RTR_ADVERTISEMENTS
//   at most MAX_INITIAL_RTR_ADVERT_INTERVAL apart so a guest booting
//   alongside podtap hears one soon.
// - A solicitation is answered after a random 0..MAX_RA_DELAY_TIME, and
//   never sooner than MIN_DELAY_BETWEEN_RAS after the previous multicast RA;
//   if an RA is already due sooner than that, it is the answer.
// - Any RA sent restarts the unsolicited interval.

export const MAX_INITIAL_RTR_ADVERT_INTERVAL = 16_000; // ms
export const MAX_INITIAL_RTR_ADVERTISEMENTS = 3;
export const MAX_FINAL_RTR_ADVERTISEMENTS = 3;
export const MIN_DELAY_BETWEEN_RAS = 3_000; // ms
export const MAX_RA_DELAY_TIME = 500; // ms

export interface RaScheduleOptions {
  maxInterval: number; // seconds (RaConfig.maxInterval)
  minInterval: number; // seconds
  /** Uniform in [0, 1); Math.random unless a test seeds its own. */
  random?: () => number;
}

export class RaScheduler {
  private readonly maxMs: number;
  private readonly minMs: number;
  private readonly random: () => number;
  private sentCount = 0;
  private lastSent = -Infinity;
  private due = Infinity;
  private solicitedPending = false;

  constructor(o: RaScheduleOptions) {
    if (!(o.maxInterval >= 4 && o.maxInterval <= 1800)) throw new Error(`bad MaxRtrAdvInterval ${o.maxInterval}`);
    if (!(o.minInterval >= 3 && o.minInterval <= 0.75 * o.maxInterval)) throw new Error(`bad MinRtrAdvInterval ${o.minInterval}`);
    this.maxMs = o.maxInterval * 1000;
    this.minMs = o.minInterval * 1000;
    this.random = o.random ?? Math.random;
  }

  /** The interface starts advertising: the first RA goes out at once. */
  start(now: number): void {
    this.due = now;
  }

  /** When the next RA is due (ms, the caller's clock); Infinity before start() or after stop(). */
  nextAt(): number {
    return this.due;
  }

  /** Milliseconds until the next RA, never negative; for setTimeout. */
  delay(now: number): number {
    return Math.max(0, this.due - now);
  }

  /** How many RAs have gone out. */
  get sent(): number {
    return this.sentCount;
  }

  /**
   * Call when the timer fires (or at any time): true if an RA should be sent
   * now, in which case it is counted as sent and the next one scheduled.
   */
  poll(now: number): boolean {
    if (now < this.due) return false;
    this.sentCount++;
    this.lastSent = now;
    this.solicitedPending = false;
    let interval = this.minMs + this.random() * (this.maxMs - this.minMs);
    if (this.sentCount < MAX_INITIAL_RTR_ADVERTISEMENTS) interval = Math.min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL);
    this.due = now + interval;
    return true;
  }

  /**
   * A valid router solicitation arrived (§6.2.6). Returns when the answer
   * will go out, which is also the new nextAt().
   */
  solicited(now: number): number {
    if (this.due === Infinity) return Infinity; // not advertising
    if (this.solicitedPending) return this.due; // one answer covers every RS until it goes
    let at = now + this.random() * MAX_RA_DELAY_TIME;
    // Multicast RAs are rate limited: at most one per MIN_DELAY_BETWEEN_RAS.
    if (at < this.lastSent + MIN_DELAY_BETWEEN_RAS) at = this.lastSent + MIN_DELAY_BETWEEN_RAS + (at - now);
    if (at < this.due) {
      this.due = at;
      this.solicitedPending = true;
    }
    return this.due;
  }

  /** Stop advertising (send MAX_FINAL_RTR_ADVERTISEMENTS withdrawals separately, §6.2.5). */
  stop(): void {
    this.due = Infinity;
    this.solicitedPending = false;
  }
}
