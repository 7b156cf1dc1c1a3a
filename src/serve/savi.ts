// The guest's link-local addresses, bound first come, first served (the idea
// of RFC 6620's FCFS SAVI). The guard lets the guest use only its own
// link-local source: the EUI-64 address its MAC gives from the start, and
// the address it claims by duplicate address detection when it makes its
// own (stable-privacy, as NetworkManager does by default). podtap's packet
// socket sees the guest's DAD probe before any hook; the first such claim
// (never a router's address) is added to the NIC's guard, atomically, by
// reloading podtap's table with the journal's typed copy updated first.

import type { Logger } from '../log.ts';
import type { Journal } from '../journal/journal.ts';
import { renderTable, type NftTable } from '../plan/guard.ts';
import { run } from '../sys/exec.ts';

/** Beyond the EUI-64 one, how many link-local addresses a guest may claim. */
export const LEARNED_LINK_LOCAL = 1;

export interface LinkLocalBinder {
  /** The guest of NIC `nic` probed for `address` (DAD): bind it if it may be the guest's. */
  claim(nic: number, address: string): Promise<void>;
}

export function linkLocalBinder(journal: Journal, log: Logger): LinkLocalBinder {
  let chain = Promise.resolve();
  const tableOf = (nic: number): NftTable | undefined => {
    for (const step of journal.state.steps) {
      for (const a of step.do) if (a.op === 'nft-load' && a.table.nics.some((g) => g.nic === nic)) return a.table;
    }
    return undefined;
  };
  const claim = async (nic: number, address: string) => {
    const table = tableOf(nic);
    const g = table?.nics.find((x) => x.nic === nic);
    if (!table || !g || !g.antispoof) return;
    if (g.guestLinkLocal.includes(address)) return;
    if (g.reservedLinkLocal.includes(address)) {
      log('warn', `the guest claimed the router's link-local address ${address}; refused`, { nic });
      return;
    }
    if (g.guestLinkLocal.length > LEARNED_LINK_LOCAL) {
      log('warn', `the guest claimed another link-local address ${address}; it keeps ${g.guestLinkLocal.join(', ')}`, { nic });
      return;
    }
    g.guestLinkLocal = [...g.guestLinkLocal, address];
    journal.flush();
    const r = await run('nft', ['-f', '-'], renderTable(table));
    if (r.exitCode !== 0) log('error', `could not let the guest use its link-local address ${address}: ${r.stderr.trim()}`, { nic });
    else log('info', 'the guest\'s link-local address is bound', { nic, address });
  };
  return {
    // One at a time: each reload renders the whole table from the journal.
    claim: (nic, address) => (chain = chain.then(() => claim(nic, address)).catch((e) => log('error', `binding a link-local address failed: ${(e as Error).message}`))),
  };
}
