// Runs inside a guest namespace behind podtap (`ip netns exec <guest> node
// dhcp-fuzz-sender.ts '<json config>'`, see test/helpers/guest-ns.ts) and
// sends the seeded hostile datagrams of dhcp-mutate.ts to podtap's DHCP
// server, paced at a fixed rate: broadcast to 255.255.255.255:67 and unicast
// to the server identifier (which the guest's routes send to the pod's
// gateway; podtap takes it off its TAP). The socket is bound to the address
// the guest got from podtap, which is what makes a limited broadcast leave
// through the guest's eth0 (dgram has no SO_BINDTODEVICE; the kernel sends a
// limited broadcast out of the device that owns its source address).
//
// With `listen`, it also owns UDP port 68 (unicast on the bound address,
// broadcast on the wildcard) and counts the server's replies; `probeEvery`
// interleaves valid DISCOVERs from the VM's MAC with known xids, so the
// share of probes answered shows how much of the flood the server really
// processed rather than the kernel dropping it, and (`window`) hold the
// flood back while the server is behind. `final` sends one more valid
// DISCOVER once the flood is over and waits for its OFFER.
//
// Prints one JSON line (SenderReport) on stdout.

import dgram from 'node:dgram';
import { setTimeout as sleep } from 'node:timers/promises';
import { parsePacket } from '../../src/serve/dhcp4/codec.ts';
import { formatIpv4 } from '../../src/net/ipv4.ts';
import { MSG_NAMES } from '../../src/serve/dhcp4/options.ts';
import { generator, probe, type FuzzTarget, type GeneratorOptions } from './dhcp-mutate.ts';

export interface SenderConfig extends FuzzTarget {
  seed: number;
  count: number;
  /** Datagrams a second. */
  rate: number;
  /** Source address: the VM veth's. */
  bind: string;
  listen: boolean;
  probeEvery: number; // 0 for none
  /** With listen: probes that may be unanswered before sending waits (0: never waits). */
  window?: number;
  final: boolean;
  generator?: GeneratorOptions;
}

export interface SenderReport {
  seed: number;
  sent: number;
  sendErrors: Record<string, number>;
  bytes: number;
  ms: number;
  kinds: Record<string, number>;
  mutations: Record<string, number>;
  unicast: number;
  /** Distinct client MACs other than the VM's (chaddr of packets long enough to have one). */
  foreignMacs: number;
  replies: Record<string, number>;
  probes: { sent: number; answered: number; late: number; waitedMs: number };
  final?: { answered: boolean; type?: string; yiaddr?: string; serverId?: string; attempts: number };
}

const PROBE_XID = 0xfeed0000;
const FINAL_XID = 0xc0de0000;
const SERVER_PORT = 67;
const CLIENT_PORT = 68;

const cfg = JSON.parse(process.argv[2] ?? '{}') as SenderConfig;
if (!cfg.bind || !cfg.count || !cfg.rate) {
  process.stderr.write('usage: dhcp-fuzz-sender.ts \'{"seed":1,"count":1000,"rate":1000,"bind":...}\'\n');
  process.exit(2);
}

const report: SenderReport = {
  seed: cfg.seed,
  sent: 0,
  sendErrors: {},
  bytes: 0,
  ms: 0,
  kinds: {},
  mutations: {},
  unicast: 0,
  foreignMacs: 0,
  replies: {},
  probes: { sent: 0, answered: 0, late: 0, waitedMs: 0 },
};
const bump = (o: Record<string, number>, k: string) => (o[k] = (o[k] ?? 0) + 1);

const probeXids = new Set<number>();
const answered = new Set<number>();
let finalReply: { type: string; yiaddr: string; serverId?: string } | undefined;
const onReply = (msg: Buffer) => {
  let type = 'unparsable';
  try {
    const p = parsePacket(msg);
    const t = p.options.get(53);
    type = t && t.length === 1 ? (MSG_NAMES[t[0]!] ?? `type-${t[0]}`) : 'no-type';
    if (probeXids.has(p.xid) && type === 'OFFER' && formatIpv4(p.yiaddr) === cfg.podIp) answered.add(p.xid);
    if (p.xid >>> 0 >= FINAL_XID && p.xid >>> 0 < FINAL_XID + 16) {
      const sid = p.options.get(54);
      finalReply = { type, yiaddr: formatIpv4(p.yiaddr), ...(sid && sid.length === 4 ? { serverId: formatIpv4(sid.readUInt32BE(0)) } : {}) };
    }
  } catch {
    // counted as unparsable
  }
  bump(report.replies, type);
};

function open(address: string, port: number): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind({ address, port }, () => {
      s.off('error', reject);
      s.on('error', (e) => bump(report.sendErrors, `socket: ${e.message}`));
      resolve(s);
    });
  });
}

const tx = await open(cfg.bind, cfg.listen ? CLIENT_PORT : 0);
tx.setBroadcast(true);
const listeners: dgram.Socket[] = [];
if (cfg.listen) {
  tx.on('message', onReply);
  // Limited broadcasts reach only sockets bound to the wildcard.
  const bx = await open('0.0.0.0', CLIENT_PORT);
  bx.on('message', onReply);
  listeners.push(bx);
}

const send = (data: Buffer, unicast: boolean) =>
  new Promise<void>((resolve) => {
    tx.send(data, SERVER_PORT, unicast ? cfg.serverId : '255.255.255.255', (err) => {
      if (err) bump(report.sendErrors, (err as NodeJS.ErrnoException).code ?? err.message);
      else {
        report.sent++;
        report.bytes += data.length;
      }
      resolve();
    });
  });

const probeXid = (k: number) => (PROBE_XID | (k & 0xffff)) >>> 0;

/**
 * Flow control by probes: before probe k goes out, probe k - window must
 * have been answered (or 250 ms passed). The server's socket buffers hold a
 * few hundred datagrams; this keeps the flood from outrunning a server that
 * is merely short of CPU (a busy CI machine), so that what the kernel drops
 * says something about the server, not the machine.
 */
async function waitForProbe(k: number): Promise<void> {
  if (!cfg.listen || !cfg.window || k < 0) return;
  const xid = probeXid(k);
  if (answered.has(xid)) return;
  const t = performance.now();
  while (!answered.has(xid) && performance.now() - t < 250) await sleep(1);
  report.probes.waitedMs += performance.now() - t;
  if (!answered.has(xid)) report.probes.late++;
}

const vmMacHex = cfg.vmMac.replaceAll(':', '').toLowerCase();
const foreign = new Set<string>();
const gen = generator(cfg.seed, cfg, cfg.generator);
const started = performance.now();
// A token bucket: `rate` a second, bursts of at most 10 ms worth, so a stall
// (ours or the server's) is not followed by a catch-up burst.
const burst = Math.max(20, Math.ceil(cfg.rate / 100));
let credit = 0;
let last = started;
let i = 0;
while (i < cfg.count) {
  const now = performance.now();
  credit = Math.min(burst, credit + ((now - last) / 1000) * cfg.rate);
  last = now;
  const n = Math.min(Math.floor(credit), cfg.count - i);
  if (n < 1) {
    await sleep(1);
    continue;
  }
  credit -= n;
  const pending: Promise<void>[] = [];
  for (const end = i + n; i < end; i++) {
    const g = gen(i);
    bump(report.kinds, g.kind);
    for (const m of g.mutations) bump(report.mutations, m);
    if (g.unicast) report.unicast++;
    if (g.data.length >= 34) {
      const mac = g.data.toString('hex', 28, 34);
      if (mac !== vmMacHex) foreign.add(mac);
    }
    pending.push(send(g.data, g.unicast));
    if (cfg.probeEvery > 0 && i % cfg.probeEvery === 0) {
      const k = report.probes.sent;
      await waitForProbe(k - (cfg.window ?? 0));
      const xid = probeXid(k);
      report.probes.sent++;
      probeXids.add(xid);
      pending.push(send(probe(cfg, xid), k % 2 === 1));
    }
  }
  await Promise.all(pending);
}
report.ms = Math.round(performance.now() - started);
report.foreignMacs = foreign.size;

if (cfg.listen) {
  // Replies to the last packets are still on their way.
  await sleep(1000);
  report.probes.answered = answered.size;
  report.probes.waitedMs = Math.round(report.probes.waitedMs);
}

if (cfg.final) {
  let attempts = 0;
  for (; attempts < 5 && !finalReply; attempts++) {
    // Unicast reply first (as most clients ask), then with the broadcast flag.
    await send(probe(cfg, FINAL_XID + attempts, attempts % 2 === 1), false);
    const until = performance.now() + 2000;
    while (!finalReply && performance.now() < until) await sleep(10);
  }
  report.final = { answered: finalReply !== undefined, attempts, ...finalReply };
}

for (const s of [tx, ...listeners]) s.close();
process.stdout.write(JSON.stringify(report) + '\n');
