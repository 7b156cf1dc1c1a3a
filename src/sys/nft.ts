// What nftables can do here, found out before anything changes: `nft -c`
// has the kernel check a table shaped exactly like podtap's guard (every
// kind of rule, on the loopback device) and then throws it away. A missing
// `nft`, a kernel without the bridge family, or one without netdev `fwd`
// is known before the first change, never half-way through set-up.

import { PodtapError } from '../errors.ts';
import { run } from './exec.ts';
import { renderTable, TABLE, type NftTable } from '../plan/guard.ts';
import type { DatapathSupport } from '../plan/datapath/index.ts';

function probeTable(family: NftTable['family'], egress = false): string {
  return renderTable({
    ...(egress ? { quiet: [{ nic: 0, podIf: 'lo', vmMac: '02:00:00:00:00:01' }] } : {}),
    family,
    name: TABLE,
    nics: [
      {
        nic: 0,
        // The bridge family matches names as text; netdev hooks need a device
        // that exists, and loopback always does.
        podIf: family === 'bridge' ? 'podtap-probe0' : 'lo',
        tap: family === 'bridge' ? 'podtap-probe1' : 'lo',
        vmMac: '02:00:00:00:00:01',
        antispoof: true,
        ipv4: ['192.0.2.1'],
        ipv6: ['2001:db8::1'],
        guestLinkLocal: ['fe80::2'],
        reservedLinkLocal: ['fe80::1'],
        ndProxy: 'fe80::1',
      },
    ],
  });
}

async function check(script: string): Promise<string | undefined> {
  const r = await run('nft', ['-c', '-f', '-'], script);
  if (r.spawnError === 'ENOENT') throw new PodtapError('environment', 'the `nft` command (nftables) is not installed', 'install nftables in the container image (Debian: apt-get install nftables)');
  return r.exitCode === 0 ? undefined : r.stderr.trim() || `nft exited ${r.exitCode}`;
}

export async function probeNft(): Promise<DatapathSupport> {
  // One process on the usual path: both families in one check (each `nft -c`
  // also waits for an RCU grace period in the kernel's abort, so a second
  // process costs CPU and a wait). Only when that fails is each family
  // checked on its own, to say which is missing.
  if ((await check(probeTable('bridge') + probeTable('netdev', true))) === undefined) return { redirect: true, egress: true };
  const [bridge, full] = await Promise.all([check(probeTable('bridge')), check(probeTable('netdev', true))]);
  if (bridge)
    throw new PodtapError('environment', `nftables cannot load podtap's guard (bridge family): ${bridge.split('\n')[0]}`, 'use a kernel with nf_tables and its bridge family (nft_meta_bridge), and nftables 0.9.3 or newer');
  if (full === undefined) return { redirect: true, egress: true };
  return { redirect: (await check(probeTable('netdev'))) === undefined, egress: false };
}
