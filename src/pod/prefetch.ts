// Work that can start before podtap has finished loading: `up` and `run`
// always begin by reading the namespace, so main starts that `ip` process
// first and lets it run while the rest of podtap is imported.

import { observe, type Observed } from './discover.ts';

let pending: Promise<Observed> | undefined;

export function prefetchObservation(): void {
  pending = observe();
  pending.catch(() => {}); // a failure is reported where it is taken
}

/** The prefetched observation, once; undefined if none was started. */
export function takeObservation(): Promise<Observed> | undefined {
  const p = pending;
  pending = undefined;
  return p;
}
