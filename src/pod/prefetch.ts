// Work that can start before podtap has finished loading: `up` and `run`
// always begin by reading the namespace and asking nft what it can load, so
// main starts that `ip` process and that `nft -c` first and lets them run
// while the rest of podtap is imported. Neither changes anything.

import { observe, type Observed } from './discover.ts';
import { probeNft } from '../sys/nft.ts';
import type { DatapathSupport } from '../plan/datapath/index.ts';

let pending: Promise<Observed> | undefined;
let probe: Promise<DatapathSupport> | undefined;

export function prefetchObservation(): void {
  pending = observe();
  pending.catch(() => {}); // a failure is reported where it is taken
  probe = probeNft();
  probe.catch(() => {});
}

/** The prefetched nftables probe, once; undefined if none was started. */
export function takeProbe(): Promise<DatapathSupport> | undefined {
  const p = probe;
  probe = undefined;
  return p;
}

/** The prefetched observation, once; undefined if none was started. */
export function takeObservation(): Promise<Observed> | undefined {
  const p = pending;
  pending = undefined;
  return p;
}
