// `podtap status`: what a person debugging "my VM has no network" reads
// first. podtap up answers on a Unix socket (STATE_DIR/status.sock, or
// --status-socket in a volume the VMM's container shares) with one JSON
// document: per NIC the identity handed out, where DHCP stands, what the
// guard dropped and why (nftables counters), the data path, and whether the
// VMM has its fds. Without a running podtap, `status` says so and what the
// journal in the state dir means.

import { createServer, type Server } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import { run } from '../sys/exec.ts';
import { TABLE } from '../plan/guard.ts';

export type Json = Record<string, unknown>;

/** Guard drops by NIC and reason, from the counters of podtap's own tables. */
export async function guardCounters(families: ('bridge' | 'netdev')[]): Promise<Record<number, Record<string, number>>> {
  const out: Record<number, Record<string, number>> = {};
  for (const family of families) {
    const r = await run('nft', ['-j', 'list', 'table', family, TABLE]);
    if (r.exitCode !== 0) continue;
    let doc: { nftables?: Json[] };
    try {
      doc = JSON.parse(r.stdout);
    } catch {
      continue;
    }
    for (const item of doc.nftables ?? []) {
      const rule = item.rule as { chain?: string; comment?: string; expr?: Json[] } | undefined;
      if (!rule?.comment || !rule.chain) continue;
      const m = /^(vm|pod)(\d+)(?:_(?:ip6?|arp))?$/.exec(rule.chain);
      if (!m) continue;
      const counter = rule.expr?.find((e) => 'counter' in e)?.counter as { packets?: number } | undefined;
      if (!counter?.packets) continue;
      const nic = Number(m[2]);
      const key = `${m[1] === 'vm' ? 'from-vm' : 'from-pod'}:${rule.comment}`;
      (out[nic] ??= {})[key] = ((out[nic] ?? {})[key] ?? 0) + counter.packets;
    }
  }
  return out;
}

export interface StatusServer {
  readonly path: string;
  close(): Promise<void>;
}

/** Answers every connection with the current status document, then closes it. */
export async function serveStatus(path: string, mode: number, collect: () => Promise<Json>, onError: (e: Error) => void): Promise<StatusServer> {
  try {
    const st = lstatSync(path);
    if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
    unlinkSync(path); // an old podtap's; the lock says none runs now
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const server: Server = createServer((conn) => {
    conn.on('error', () => {});
    collect()
      .then((doc) => conn.end(JSON.stringify(doc) + '\n'))
      .catch((e: unknown) => {
        onError(e as Error);
        conn.destroy();
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Created with its final mode: no chmod that could follow a symlink.
    const old = process.umask(~mode & 0o777);
    try {
      server.listen(path, () => resolve());
    } finally {
      process.umask(old);
    }
  });
  server.on('error', onError);
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        try {
          unlinkSync(path);
        } catch {
          // gone already
        }
      }),
  };
}

function ago(ms: number | undefined, now: number): string {
  if (ms === undefined) return '';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

/** What a guard drop reason means for someone whose VM has no network. */
const DROP_HINTS: Record<string, (nic: Json) => string> = {
  'from-vm:spoofed-mac': (n) => `frames from a MAC other than the VM's: give the VMM's NIC mac=${n.mac}`,
  'from-vm:spoofed-ipv4': () => "IPv4 from an address other than the pod's: let the guest configure itself by DHCP",
  'from-vm:spoofed-arp': () => "ARP claiming an address other than the pod's",
  'from-vm:spoofed-ipv6': () => "IPv6 from an address other than the pod's or the guest's link-local one",
  'from-vm:not-ip': () => 'neither IPv4, ARP nor IPv6 (VLAN tags, other protocols)',
  'from-vm:flood': () => 'broadcast or multicast over the rate limit',
  'from-vm:dhcp-server': () => 'the guest answers DHCP itself',
  'from-vm:router': () => 'the guest advertises itself as an IPv6 router',
};

/**
 * The hand-off line, from the structured fields. For the fd socket: after an
 * adoption, no fetch from this podtap is the normal case.
 */
function handoffLine(h: Json, p: Json): string {
  const list = (x: unknown) => (Array.isArray(x) ? x.join(', ') : '');
  switch (h.mode) {
    case 'run': {
      const vmm = h.vmm as Json | undefined;
      return vmm ? `podtap started the VMM (pid ${vmm.pid}, ${vmm.running ? 'running' : 'exited'})` : 'the VMM is not started yet';
    }
    case 'qmp':
      return `hot-plugged into QEMU (${h.qmp}) as ${list(h.devices)}`;
    case 'cloud-hypervisor':
      return `hot-plugged into Cloud Hypervisor (${h.chApi}) as ${list(h.devices)}`;
    case 'persistent-tap':
      return `persistent taps ${list(h.taps)} for a VMM that opens them by name`;
  }
  const n = typeof h.fetches === 'number' ? h.fetches : 0;
  const held = Array.isArray(h.fdsHeld) ? (h.fdsHeld as number[]) : [];
  const at = `serving fds on ${h.fdSocket}`;
  if (n > 0) return `${at}: fetched ${n} time${n === 1 ? '' : 's'}${p.adopted ? ' since podtap adopted the VM' : ''}`;
  if (p.adopted && held.every((x) => x === 0)) return `${at}: the running VMM holds the TAP (podtap adopted it); a restarted VMM fetches it again here`;
  return `${at}: never fetched, so the VMM has no TAP (has the VMM container run \`podtap exec\` with this socket?)`;
}

function dhcp4Line(d4: Json, adopted: boolean, now: number): string {
  const st = d4.state as string;
  const extras = [
    d4.renewals ? `${d4.renewals} renewal${d4.renewals === 1 ? '' : 's'}` : '',
    d4.naks ? `${d4.naks} NAK${d4.naks === 1 ? '' : 's'}` : '',
    d4.foreign ? `ignored ${d4.foreign} request${d4.foreign === 1 ? '' : 's'} from other MACs (is the VMM's NIC given the VM's MAC?)` : '',
  ].filter(Boolean);
  let what: string;
  if (st === 'free')
    what = adopted && !d4.binds
      ? 'no request since podtap adopted the VM; the guest keeps the lease it had and renews it at half its lease time'
      : 'the guest never asked (is its DHCP client running on this NIC?)';
  else if (st === 'offered') what = 'offered, not bound yet (the guest did not REQUEST the offer)';
  else if (st === 'bound')
    what = d4.expired
      ? `lease EXPIRED ${ago(d4.expiresAt as number, now)} (the guest stopped renewing: is its DHCP client still running?)`
      : `bound ${ago(d4.boundAt as number, now)}`;
  else if (st === 'released') what = 'released by the guest';
  else if (st === 'declined') what = 'declined by the guest (it found the address in use)';
  else what = st;
  return `  DHCPv4: ${[what, ...extras].join(', ')}`;
}

/** The text form: one block per NIC, the likely problem first. */
export function statusText(doc: Json): string {
  const now = typeof doc.time === 'number' ? doc.time : Date.now();
  const lines: string[] = [];
  const p = doc.podtap as Json;
  lines.push(`podtap ${p.version} pid ${p.pid}, ready ${ago(p.readyAt as number, now)}${p.adopted ? ' (adopted a running VM)' : ''}`);
  lines.push(`hand-off: ${handoffLine(doc.handoff as Json, p)}`);
  for (const n of (doc.nics as Json[]) ?? []) {
    lines.push('');
    lines.push(`NIC ${n.nic}: ${n.interface} (${n.kind}) via ${n.datapath}${n.bridge ? ` ${n.bridge}` : ''} → ${n.tap}, MAC ${n.mac}, MTU ${n.mtu}${n.defaultRoute ? ', default route' : ''}`);
    if (n.ip) lines.push(`  IPv4 ${n.ip}${n.gateway ? ` via ${n.gateway}` : ''}`);
    if (n.ipv6) lines.push(`  IPv6 ${(n.ipv6 as string[]).join(' ')}${n.gateway6 ? ` via ${n.gateway6}` : ''} (router ${n.router6})`);
    const d4 = n.dhcp4 as Json | undefined;
    if (d4) lines.push(dhcp4Line(d4, p.adopted === true, now));
    else if (n.ip) lines.push('  DHCPv4: not served (--no-dhcp)');
    const d6 = n.dhcp6 as Json | undefined;
    if (d6) lines.push(`  DHCPv6: ${d6.state === 'never' ? 'the guest never asked' : d6.state}${d6.boundAt ? `, bound ${ago(d6.boundAt as number, now)}` : ''}${d6.renewals ? `, ${d6.renewals} renewals` : ''}`);
    const ra = n.ra as Json | undefined;
    if (ra) lines.push(`  router advertisements: ${ra.sent} sent (${ra.solicited} solicited)${ra.gatewayMac ? `, gateway MAC ${ra.gatewayMac}` : ra.needsGatewayMac ? ', gateway MAC NOT known yet' : ''}`);
    const g = n.guardDrops as Record<string, number> | undefined;
    const drops = Object.entries(g ?? {}).filter(([, v]) => v > 0);
    if (!drops.length) lines.push('  guard dropped nothing');
    else {
      lines.push('  guard dropped:');
      for (const [k, v] of drops) lines.push(`    ${k} ${v}${DROP_HINTS[k] ? `: ${DROP_HINTS[k](n)}` : ''}`);
    }
  }
  const f = doc.forward as Json[] | undefined;
  if (f?.length) lines.push('', `forwarded ports: ${f.map((x) => `${x.port}/${x.proto} (${x.flows} open, ${x.total} total)`).join(', ')}`);
  return lines.join('\n') + '\n';
}
