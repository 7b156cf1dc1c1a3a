// The one DHCPv6 binding this server knows about: the pod's addresses, held
// by whatever DUID the VM's MAC presents. As with DHCPv4 the addresses are
// reserved for the VM whatever happens, so this state never decides an
// answer; it is what a status report, the logs and the tests read.

export type Lease6State = 'never' | 'advertised' | 'bound' | 'released' | 'declined';

/** How the binding was made or refreshed. */
export type Bind6Kind = 'request' | 'rapid-commit' | 'renew' | 'rebind';

export interface Lease6Snapshot {
  state: Lease6State;
  since?: number; // ms, when the state last changed
  boundAt?: number; // ms, last bind or refresh
  expiresAt?: number; // only while bound
  expired: boolean;
  binds: number;
  renewals: number; // Renew and Rebind answered with our addresses
  clientDuid?: string; // hex, the last one seen from the VM
  iaid?: number; // of the IA_NA our addresses went in
  addresses: string[]; // as last assigned or released
}

export class Lease6 {
  state: Lease6State = 'never';
  since = 0;
  boundAt = 0;
  expiresAt = 0;
  binds = 0;
  renewals = 0;
  clientDuid: string | undefined;
  iaid: number | undefined;
  addresses: string[] = [];

  private move(now: number, state: Lease6State): void {
    if (this.state !== state) {
      this.state = state;
      this.since = now;
    }
  }

  /** Any valid message from the VM: a reboot with a fresh DUID shows up here. */
  seen(duid: Buffer): void {
    this.clientDuid = duid.toString('hex');
  }

  advertised(now: number): void {
    if (this.state !== 'bound') this.move(now, 'advertised');
  }

  bound(now: number, seconds: number, kind: Bind6Kind, iaid: number, addresses: string[]): void {
    this.move(now, 'bound');
    this.boundAt = now;
    this.expiresAt = now + seconds * 1000;
    this.binds++;
    if (kind === 'renew' || kind === 'rebind') this.renewals++;
    this.iaid = iaid;
    this.addresses = [...addresses];
  }

  released(now: number, addresses: string[]): void {
    this.move(now, 'released');
    this.expiresAt = 0;
    this.addresses = [...addresses];
  }

  declined(now: number, addresses: string[]): void {
    this.move(now, 'declined');
    this.expiresAt = 0;
    this.addresses = [...addresses];
  }

  snapshot(now: number): Lease6Snapshot {
    const s: Lease6Snapshot = {
      state: this.state,
      expired: this.state === 'bound' && now >= this.expiresAt,
      binds: this.binds,
      renewals: this.renewals,
      addresses: [...this.addresses],
    };
    if (this.state !== 'never') s.since = this.since;
    if (this.binds > 0) s.boundAt = this.boundAt;
    if (this.state === 'bound') s.expiresAt = this.expiresAt;
    if (this.clientDuid !== undefined) s.clientDuid = this.clientDuid;
    if (this.iaid !== undefined) s.iaid = this.iaid;
    return s;
  }
}
