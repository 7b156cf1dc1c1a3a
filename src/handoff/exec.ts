// `podtap exec`: the VMM side of the sidecar pattern. Fetch the TAP fds and
// the network description from `podtap up --fd-socket`, then become the VMM
// with the fds at 3, 4, ... This process needs neither NET_ADMIN nor
// /dev/net/tun.

import { PodtapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Options } from '../options.ts';
import { execWithFds, fetchFds } from './fd-socket.ts';
import { PlaceholderError } from './placeholders.ts';

export async function execFromSocket(opts: Options, vmm: string[], log: Logger): Promise<number> {
  let fetched;
  try {
    fetched = await fetchFds(opts.fdSocket!, { timeoutMs: 30_000 });
  } catch (e) {
    throw new PodtapError('handoff', `fetching the TAP fds from ${opts.fdSocket} failed: ${(e as Error).message}`, 'start `podtap up --fd-socket PATH` in the pod first and share the socket directory with this container');
  }
  log('info', 'fetched the TAP fds', { fds: fetched.fds.length, nics: fetched.nics.length, mac: fetched.nics[0]?.mac });
  try {
    execWithFds(vmm, fetched.fds, fetched.nics);
  } catch (e) {
    if (e instanceof PlaceholderError) throw new PodtapError('usage', e.message, 'fix the placeholder in the VMM arguments (see `podtap --help`)');
    throw new PodtapError('handoff', `cannot exec ${vmm[0]}: ${(e as Error).message}`, 'check the VMM command and PATH');
  }
}
