// The one lease this server knows about: the pod's address, held by the VM's
// MAC. The address is reserved for the VM whatever happens (there is no pool
// to give another), so the state here is for logs, stats and tests: it never
// decides whether the address is offered.

export type LeaseState = 'free' | 'offered' | 'bound' | 'released' | 'declined';

export type BindKind = 'selecting' | 'init-reboot' | 'renewing' | 'rebinding';

export interface LeaseSnapshot {
  state: LeaseState;
  boundAt?: number; // ms since the epoch, per the server's clock
  expiresAt?: number;
  binds: number;
  renewals: number; // ACKs in RENEWING or REBINDING
  expired: boolean;
}

export class Lease {
  state: LeaseState = 'free';
  boundAt = 0;
  expiresAt = 0;
  binds = 0;
  renewals = 0;

  offered(): void {
    if (this.state !== 'bound') this.state = 'offered';
  }

  bound(now: number, seconds: number, kind: BindKind): void {
    this.state = 'bound';
    this.boundAt = now;
    this.expiresAt = now + seconds * 1000;
    this.binds++;
    if (kind === 'renewing' || kind === 'rebinding') this.renewals++;
  }

  released(): void {
    this.state = 'released';
    this.expiresAt = 0;
  }

  declined(): void {
    this.state = 'declined';
    this.expiresAt = 0;
  }

  /** The guest chose another server's offer. */
  abandoned(): void {
    if (this.state === 'offered') this.state = 'free';
  }

  snapshot(now: number): LeaseSnapshot {
    const s: LeaseSnapshot = {
      state: this.state,
      binds: this.binds,
      renewals: this.renewals,
      expired: this.state === 'bound' && now >= this.expiresAt,
    };
    if (this.binds > 0) s.boundAt = this.boundAt;
    if (this.state === 'bound') s.expiresAt = this.expiresAt;
    return s;
  }
}
