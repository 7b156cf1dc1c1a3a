// A hostile or broken guest against podtap's real DHCP server: a perfdhcp
// flood of full DORA exchanges with garbage mixed in, and a seeded socket
// fuzz of more than 100,000 random and mutated DHCP packets. podtap must
// stay up, keep its memory bounded, keep its log bounded, still give the
// real VM its lease afterwards, and restore the pod exactly on SIGTERM.
//
//   node ns          pod ns (podtap up)                     vm ns (stand-in)
//   veth ──────── eth0 ─┐
//                       br0 169.254.75.1 ── tap0  (no VMM attached)
//                        └── vmport ───veth─── eth0 (the VM's MAC, the pod's IP)
//
// A real VM cannot produce this load under TCG, so a veth whose pod end is
// enslaved to br0 stands in for the tap. The guard's rules match
// `iifname "tap0"`, so this stand-in port is NOT subject to antispoofing
// (nor to the guard's "guest DHCP never reaches the node" forward rule: the
// broadcasts here are also flooded out of eth0 into the test's node
// namespace, where nothing listens). That is fine for what is tested here,
// the server's robustness; the guard has its own tests. The stand-in's veth
// has the pod's address (the one the guest would get) so that perfdhcp and
// the fuzzer can bind to it and receive unicast replies.
//
// Tunables: DHCP_FLOOD_SEED (the fuzz seed, printed), PODTAP_TEST_FLOOD_RATE
// and PODTAP_TEST_FLOOD_PERIOD (perfdhcp exchanges/s and seconds, default
// 2000 and 10), PODTAP_TEST_FUZZ_COUNT and PODTAP_TEST_FUZZ_RATE (packets,
// packets/s; default 100,000 at 5,000/s).

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tmp from 'tmp';
import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup, createNetns, nsExec, pingFrom, run } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import { startPodtap, type ReadyLine, type Running } from '../helpers/podtap.ts';
import { events, have, hasUdhcpc, reported } from '../helpers/dhcp-clients.ts';
import { MSG, clientPacket } from '../helpers/dhcp-packets.ts';
import type { SenderConfig, SenderReport } from '../helpers/dhcp-fuzz-sender.ts';

const NODE = join(import.meta.dirname, '../../node_modules/.bin/node');
const SENDER = join(import.meta.dirname, '../helpers/dhcp-fuzz-sender.ts');

const SEED = Number(process.env.DHCP_FLOOD_SEED ?? 0x0f100d);
const FLOOD_RATE = Number(process.env.PODTAP_TEST_FLOOD_RATE ?? 2000);
const FLOOD_PERIOD = Number(process.env.PODTAP_TEST_FLOOD_PERIOD ?? 10);
const FUZZ_COUNT = Math.max(100_000, Number(process.env.PODTAP_TEST_FUZZ_COUNT ?? 100_000));
const FUZZ_RATE = Number(process.env.PODTAP_TEST_FUZZ_RATE ?? 5000);
const MiB = 1024;

const PORT = 'vmport'; // the stand-in's end in the pod namespace
const VM_IF = 'eth0';

const isRoot = process.getuid?.() === 0 && have('ip', ['netns', 'list']) && have('nft', ['--version']);
const hasPerfdhcp = have('perfdhcp', ['-v']);

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const results: string[] = [];
afterAll(() => {
  if (results.length) console.log(`dhcp flood results (seed ${SEED}, DHCP_FLOOD_SEED reproduces):\n  ${results.join('\n  ')}`);
});

// ---------------------------------------------------------------------------
// The stand-in VM

interface StandIn {
  vm: string;
  /** Removes the pod end of the veth, so the pod is back to what podtap built. */
  detach(): Promise<void>;
}

async function attachStandIn(pod: Pod, ready: ReadyLine, serverId: string, own: Cleanup): Promise<StandIn> {
  const vm = await createNetns({ cleanup: own, prefix: 'ptvm-' });
  // The veth is made in the VM's namespace with the VM's MAC; its peer is
  // created straight in the pod's namespace and enslaved to br0 like the tap.
  await run('ip', ['-n', vm, 'link', 'add', VM_IF, 'address', ready.mac, 'type', 'veth', 'peer', 'name', PORT, 'netns', pod.pod]);
  await run('ip', ['-n', pod.pod, 'link', 'set', PORT, 'master', ready.bridge, 'up']);
  await run('ip', ['-n', vm, 'link', 'set', VM_IF, 'up']);
  await run('ip', ['-n', vm, 'addr', 'add', `${pod.podIP}/32`, 'dev', VM_IF]);
  // The server identifier is on-link through br0, as for a renewing guest.
  await run('ip', ['-n', vm, 'route', 'add', serverId, 'dev', VM_IF, 'scope', 'link']);
  await waitSettled(vm);
  if (!(await pingFrom(vm, serverId))) throw new Error(`the stand-in VM cannot reach ${serverId} through br0`);
  return {
    vm,
    async detach() {
      await run('ip', ['-n', pod.pod, 'link', 'del', PORT], { reject: false });
    },
  };
}

/** A ptp pod with podtap up (JSON logs) and the stand-in VM port attached to br0. */
async function floodTarget(own: Cleanup) {
  const pod = await makePod('ptp', { cleanup: own });
  const before = await snapshot(pod.pod);
  const up = startPodtap(pod, ['up', '--log-format', 'json'], own);
  const ready = await up.ready;
  const serverId = ready.linkLocal.split('/')[0]!;
  const standIn = await attachStandIn(pod, ready, serverId, own);
  return { pod, before, up, ready, serverId, standIn };
}


// ---------------------------------------------------------------------------
// podtap's memory and log

const RSS_RE = /^VmRSS:\s+(\d+) kB$/m;

/** KiB, or undefined if the process is gone. */
function vmRss(pid: number): number | undefined {
  try {
    const m = RSS_RE.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

class RssSampler {
  readonly samples: { ms: number; kib: number }[] = [];
  died = false;
  #timer: NodeJS.Timeout;
  #t0 = performance.now();
  constructor(pid: number, everyMs = 250) {
    const take = () => {
      const kib = vmRss(pid);
      if (kib === undefined) this.died = true;
      else this.samples.push({ ms: Math.round(performance.now() - this.#t0), kib });
    };
    take();
    this.#timer = setInterval(take, everyMs);
  }
  stop(): void {
    clearInterval(this.#timer);
  }
  get peak(): number {
    return Math.max(...this.samples.map((s) => s.kib));
  }
  /** One sample per `ms`, for the record. */
  every(ms: number): number[] {
    const out: number[] = [];
    let next = 0;
    for (const x of this.samples) {
      if (x.ms >= next) {
        out.push(x.kib);
        next = x.ms + ms;
      }
    }
    return out;
  }
  /** Peak of the first and of the last third: steady growth shows as a gap. */
  thirds(): { first: number; last: number } {
    const n = Math.max(1, Math.floor(this.samples.length / 3));
    const peak = (xs: { kib: number }[]) => Math.max(...xs.map((s) => s.kib));
    return { first: peak(this.samples.slice(0, n)), last: peak(this.samples.slice(-n)) };
  }
}

/** RSS stays under baseline + 30 MiB and does not keep climbing through the load. */
function expectBoundedRss(label: string, baseline: number, s: RssSampler, after: number): string {
  const { first, last } = s.thirds();
  const summary = `RSS ${label}: baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(s.peak / MiB).toFixed(1)} MiB, ` +
    `first/last third peaks ${(first / MiB).toFixed(1)}/${(last / MiB).toFixed(1)} MiB, after ${(after / MiB).toFixed(1)} MiB (${s.samples.length} samples; ` +
    `every 2 s: ${s.every(2000).map((k) => (k / MiB).toFixed(0)).join(' ')})`;
  expect(s.samples.length, summary).toBeGreaterThan(8);
  expect(s.peak, summary).toBeLessThan(baseline + 30 * MiB);
  expect(after, summary).toBeLessThan(baseline + 30 * MiB);
  expect(last - first, summary).toBeLessThan(12 * MiB);
  return summary;
}

interface LogEntry {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** podtap runs with --log-format json: every stderr line must parse, or something else wrote there. */
function parseLog(stderr: string): { entries: LogEntry[]; unparsed: string[] } {
  const entries: LogEntry[] = [];
  const unparsed: string[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.trim()) continue;
    try {
      entries.push(JSON.parse(line) as LogEntry);
    } catch {
      unparsed.push(line);
    }
  }
  return { entries, unparsed };
}

/** One key per kind of line: a NAK's reason and the like are left out. */
const logKey = (e: LogEntry) => (e.msg.startsWith('dhcp: NAK') ? 'dhcp: NAK' : e.msg);

const STACK = /internal error|\n\s+at .*\(.*:\d+:\d+\)|\n\s+at .*:\d+:\d+/;
const FOREIGN = 'dhcp: not answering a MAC that is not the VM\'s';

/**
 * Log checks common to both floods, on the lines written while it ran:
 * nothing unparsable (a crash writes plain text), no stack trace, no handler
 * or socket error, foreign MACs logged at the server's 10 a minute, and no
 * kind of line more than a dozen a minute.
 */
function expectSaneLog(label: string, stderr: string, from: number, seconds: number): string {
  const { entries, unparsed } = parseLog(stderr);
  const during = entries.slice(from);
  expect(unparsed, `${label}: stderr lines that are not podtap's JSON log`).toEqual([]);
  expect(stderr).not.toMatch(STACK);
  const errors = during.filter((e) => /handling a packet failed|socket error|internal error|\n\s+at /.test(e.msg));
  expect(errors, `${label}: handler or socket errors`).toEqual([]);
  const tally: Record<string, number> = {};
  for (const e of during) tally[logKey(e)] = (tally[logKey(e)] ?? 0) + 1;
  const minutes = Math.max(1, Math.ceil(seconds / 60));
  // The server's token bucket: a burst of 10, then 10 a minute.
  const foreignBound = 10 + Math.ceil((10 * seconds) / 60) + 1;
  expect(tally[FOREIGN] ?? 0, `${label}: foreign-MAC lines ${JSON.stringify(tally)}`).toBeLessThanOrEqual(foreignBound);
  const loud = Object.entries(tally).filter(([, n]) => n > 12 * minutes + 10);
  expect(loud, `${label}: kinds of log line over the limit (all: ${JSON.stringify(tally)})`).toEqual([]);
  return `${label}: ${during.length} log lines in ${seconds.toFixed(0)} s (${tally[FOREIGN] ?? 0} foreign-MAC, ${Object.keys(tally).length} kinds)`;
}

// ---------------------------------------------------------------------------
// Helpers for running things in the VM

async function udpCounters(ns: string): Promise<Record<string, number>> {
  const r = await nsExec(ns, ['cat', '/proc/net/snmp']);
  const [names, values] = r.stdout.split('\n').filter((l) => l.startsWith('Udp:'));
  const k = (names ?? '').split(/\s+/).slice(1);
  const v = (values ?? '').split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(k.map((name, i) => [name, v[i] ?? 0]));
}

async function runSender(vm: string, cfg: SenderConfig, timeoutMs: number): Promise<SenderReport> {
  const r = await nsExec(vm, [NODE, SENDER, JSON.stringify(cfg)], { timeoutMs, reject: false });
  if (r.exitCode !== 0) throw new Error(`fuzz sender exited ${r.exitCode}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as SenderReport;
}

// The format test/helpers/dhcp-clients.ts's events() reads; this one only
// reports, it configures nothing.
const UDHCPC_SCRIPT = `#!/bin/sh
echo "EVENT $1"
env | grep -v -E '^(PATH|PWD|SHLVL|_)=' | sort | sed 's/^/  /'
echo "END $1"
exit 0
`;

/** A real busybox udhcpc on the stand-in, from scratch: it must get the pod's address from podtap. */
async function udhcpcLease(vm: string, dir: string): Promise<Record<string, string>> {
  const script = join(dir, 'udhcpc.sh');
  await writeFile(script, UDHCPC_SCRIPT, { mode: 0o755 });
  await run('ip', ['-n', vm, 'addr', 'flush', 'dev', VM_IF]);
  const r = await nsExec(vm, ['busybox', 'udhcpc', '-f', '-q', '-n', '-i', VM_IF, '-s', script, '-t', '5', '-T', '1'], { timeoutMs: 30_000, reject: false });
  const bound = events(r.stdout).find((e) => e.event === 'bound');
  if (r.exitCode !== 0 || !bound) throw new Error(`udhcpc got no lease (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
  return bound.vars;
}

/** podtap is alive: its process has not exited and is not a zombie. */
function alive(up: Running): boolean {
  return up.proc.exitCode === null && up.proc.signalCode === null && vmRss(up.pid) !== undefined;
}

/** Takes the stand-in away, SIGTERMs podtap: exit 0 and the pod exactly as before podtap. */
async function stopAndCompare(pod: Pod, up: Running, standIn: StandIn, before: Awaited<ReturnType<typeof snapshot>>): Promise<void> {
  await standIn.detach();
  up.proc.kill('SIGTERM');
  const r = await up.proc;
  expect(r.exitCode, up.stderr()).toBe(0);
  expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
}

function scratchDir(own: Cleanup): string {
  const dir = tmp.dirSync({ tmpdir: '/run', prefix: 'podtap-test-flood-' }).name;
  own.path(dir);
  return dir;
}

// ---------------------------------------------------------------------------
// perfdhcp

interface PerfStats {
  rate?: number;
  exchanges: Record<string, { sent: number; received: number; drops: number; orphans: number }>;
}

function parsePerfdhcp(out: string): PerfStats {
  const stats: PerfStats = { exchanges: {} };
  const rate = /^Rate: ([\d.]+) /m.exec(out);
  if (rate) stats.rate = Number(rate[1]);
  for (const section of out.split('***Statistics for: ').slice(1)) {
    const name = section.slice(0, section.indexOf('***'));
    const num = (key: string) => Number(new RegExp(`^${key}: (\\d+)`, 'm').exec(section)?.[1] ?? NaN);
    stats.exchanges[name] = { sent: num('sent packets'), received: num('received packets'), drops: num('drops'), orphans: num('orphans') };
  }
  return stats;
}

/**
 * perfdhcp acts as a relay: its own packets always carry giaddr (its
 * address) and hops 1, which podtap rightly drops as relayed. Templates
 * (-T) are sent as they are, with only xid, MAC, server id and requested
 * address patched in at the offsets given: a DISCOVER and a REQUEST exactly
 * as a guest sends them.
 */
async function perfdhcpTemplates(dir: string, mac: string): Promise<{ args: string[] }> {
  const discover = clientPacket({ type: MSG.DISCOVER, mac, xid: 0 });
  // Options: 53 at 240, 50 at 243, 54 at 249 (clientPacket's order).
  const request = clientPacket({ type: MSG.REQUEST, mac, xid: 0, requested: '0.0.0.0', serverId: '0.0.0.0' });
  expect([request[243], request[249]]).toEqual([50, 54]);
  const d = join(dir, 'discover.hex');
  const r = join(dir, 'request.hex');
  await writeFile(d, discover.toString('hex'));
  await writeFile(r, request.toString('hex'));
  // -X: xid offset, -O: offset of the MAC's last octet, -I/-S: where options 50/54 go.
  return { args: ['-T', d, '-T', r, '-X', '4', '-X', '4', '-O', '33', '-O', '33', '-I', '243', '-S', '249'] };
}

// ---------------------------------------------------------------------------

describe.skipIf(!isRoot)('a hostile or broken guest against the real DHCP server', () => {
  it.skipIf(!hasPerfdhcp || !hasUdhcpc())(
    `perfdhcp at ${FLOOD_RATE} exchanges/s for ${FLOOD_PERIOD} s plus garbage: podtap stays up, bounded, and still serves udhcpc`,
    async () => {
      const own = new Cleanup();
      const t0 = performance.now();
      try {
        const { pod, before, up, ready, serverId, standIn } = await floodTarget(own);
        const dir = scratchDir(own);
        const { args: templateArgs } = await perfdhcpTemplates(dir, ready.mac);

        const logFrom = parseLog(up.stderr()).entries.length;
        const baseline = vmRss(up.pid)!;
        const cpu0 = cpuSeconds(up.pid);
        const [podUdp0, vmUdp0] = await Promise.all([udpCounters(pod.pod), udpCounters(standIn.vm)]);
        const rss = new RssSampler(up.pid);
        const started = performance.now();
        // perfdhcp binds the stand-in's address, port 68 (-L), so the
        // unicast OFFERs and ACKs to the pod's address reach it; -B lets it
        // broadcast to 255.255.255.255 as a guest does.
        const perf = nsExec(
          standIn.vm,
          ['perfdhcp', '-4', '-l', VM_IF, '-L', '68', '-B', '-r', String(FLOOD_RATE), '-p', String(FLOOD_PERIOD), '-b', `mac=${ready.mac}`, ...templateArgs, '-x', 'e', '255.255.255.255'],
          { timeoutMs: (FLOOD_PERIOD + 60) * 1000, reject: false },
        );
        // Garbage alongside, paced over the same period: random bytes and
        // broken packets from other MACs, broadcast and unicast.
        const garbageRate = 1000;
        const garbage = runSender(
          standIn.vm,
          {
            seed: SEED + 1,
            count: garbageRate * FLOOD_PERIOD,
            rate: garbageRate,
            bind: pod.podIP,
            serverId,
            vmMac: ready.mac,
            podIp: pod.podIP,
            listen: false, // port 68 is perfdhcp's
            probeEvery: 0,
            final: false,
            generator: { vmShare: 0, validShare: 0.05, randomShare: 0.5 },
          },
          (FLOOD_PERIOD + 60) * 1000,
        );
        const [p, g] = await Promise.all([perf, garbage]);
        const floodSeconds = (performance.now() - started) / 1000;
        const cpu = cpuSeconds(up.pid) - cpu0;
        const [podUdp1, vmUdp1] = await Promise.all([udpCounters(pod.pod), udpCounters(standIn.vm)]);
        const delta = (a: Record<string, number>, b: Record<string, number>, k: string) => (b[k] ?? 0) - (a[k] ?? 0);
        const podIn = delta(podUdp0, podUdp1, 'InDatagrams');
        const podDrops = delta(podUdp0, podUdp1, 'RcvbufErrors');
        const vmDrops = delta(vmUdp0, vmUdp1, 'RcvbufErrors');
        await sleep(1000);
        rss.stop();
        const after = vmRss(up.pid);

        expect(rss.died, up.stderr()).toBe(false);
        expect(alive(up), up.stderr()).toBe(true);
        // 3: some exchanges were not completed, which at this rate is normal.
        expect([0, 3], `perfdhcp:\n${p.stdout}\n${p.stderr}`).toContain(p.exitCode);
        const stats = parsePerfdhcp(p.stdout);
        const dora = stats.exchanges['DISCOVER-OFFER'];
        const ra = stats.exchanges['REQUEST-ACK'];
        expect(dora && ra, p.stdout).toBeTruthy();
        const completed = ra!.received / dora!.sent;
        const perSecond = ra!.received / FLOOD_PERIOD;
        const perfLine =
          `perfdhcp: ${stats.rate ?? '?'} 4-way exchanges/s reported (asked ${FLOOD_RATE}); DO sent ${dora!.sent} received ${dora!.received} drops ${dora!.drops}; ` +
          `RA sent ${ra!.sent} received ${ra!.received} drops ${ra!.drops}; ${(completed * 100).toFixed(2)}% completed, ${perSecond.toFixed(0)} leases/s; ` +
          `garbage ${g.sent} datagrams (${g.unicast} unicast) in ${(g.ms / 1000).toFixed(1)} s; ` +
          `kernel socket-buffer drops: podtap's ${podDrops} of ${podIn + podDrops}, perfdhcp's ${vmDrops}; podtap used ${cpu.toFixed(1)} CPU s in ${floodSeconds.toFixed(1)} s`;
        results.push(perfLine);
        expect(dora!.sent, perfLine).toBeGreaterThan(FLOOD_RATE * FLOOD_PERIOD * 0.5);
        // perfdhcp and podtap share two cores with whatever else runs, so
        // the bar for perfdhcp's count is lower than for podtap's own
        // drops: what the kernel dropped in front of podtap's sockets.
        expect(completed, perfLine).toBeGreaterThan(0.7);
        expect(perSecond, perfLine).toBeGreaterThan(FLOOD_RATE * 0.5);
        expect(podDrops, perfLine).toBeLessThan((podIn + podDrops) * 0.1);
        expect(g.sent, perfLine).toBe(garbageRate * FLOOD_PERIOD);

        results.push(expectBoundedRss('perfdhcp', baseline, rss, after!));
        results.push(expectSaneLog('perfdhcp', up.stderr(), logFrom, floodSeconds));

        // A real client still gets the pod's lease.
        const lease = await udhcpcLease(standIn.vm, dir);
        expect(reported('udhcpc', lease)).toMatchObject({ ip: pod.podIP, serverId, router: pod.gateway });
        expect(alive(up)).toBe(true);

        await stopAndCompare(pod, up, standIn, before);
        results.push(`perfdhcp test: ${((performance.now() - t0) / 1000).toFixed(1)} s in all`);
      } finally {
        await own.cleanupAll();
      }
    },
    180_000,
  );

  it(`${FUZZ_COUNT} fuzzed packets at ${FUZZ_RATE}/s on the real socket: no crash, bounded memory and log, still OFFERs the pod's address`, async () => {
    const own = new Cleanup();
    const t0 = performance.now();
    console.log(`dhcp socket fuzz seed ${SEED} (set DHCP_FLOOD_SEED=${SEED} to reproduce)`);
    try {
      const { pod, before, up, ready, serverId, standIn } = await floodTarget(own);

      const logFrom = parseLog(up.stderr()).entries.length;
      const logStart = performance.now();
      // Warm-up: the first few thousand packets compile the server's code
      // paths (about 10 MiB of RSS); growth after that is what counts.
      const cold = vmRss(up.pid)!;
      const warm = { seed: SEED ^ 0x5a5a5a, count: 5000, rate: FUZZ_RATE, bind: pod.podIP, serverId, vmMac: ready.mac, podIp: pod.podIP, listen: false, probeEvery: 0, final: false };
      await runSender(standIn.vm, warm, 60_000);
      await sleep(500);

      const udpBefore = await udpCounters(pod.pod);
      const baseline = vmRss(up.pid)!;
      const cpu0 = cpuSeconds(up.pid);
      const rss = new RssSampler(up.pid);
      const started = performance.now();
      const report = await runSender(
        standIn.vm,
        {
          seed: SEED,
          count: FUZZ_COUNT,
          rate: FUZZ_RATE,
          bind: pod.podIP,
          serverId,
          vmMac: ready.mac,
          podIp: pod.podIP,
          listen: true,
          probeEvery: 100,
          window: 2,
          final: true,
        },
        (FUZZ_COUNT / FUZZ_RATE + 60) * 1000,
      );
      const fuzzSeconds = (performance.now() - started) / 1000;
      const cpu = cpuSeconds(up.pid) - cpu0;
      rss.stop();
      const after = vmRss(up.pid);
      const udpAfter = await udpCounters(pod.pod);
      const delivered = (udpAfter.InDatagrams ?? 0) - (udpBefore.InDatagrams ?? 0);
      const kernelDrops = (udpAfter.RcvbufErrors ?? 0) - (udpBefore.RcvbufErrors ?? 0);

      const fuzzLine =
        `fuzz seed ${SEED}: ${report.sent} datagrams (${FUZZ_COUNT} fuzzed + ${report.probes.sent} probes + final; ${report.unicast} fuzzed unicast, ` +
        `${(report.bytes / 1e6).toFixed(1)} MB) in ${(report.ms / 1000).toFixed(1)} s; kinds ${JSON.stringify(report.kinds)}; ` +
        `pod UDP delivered ${delivered}, socket-buffer drops ${kernelDrops}; replies ${JSON.stringify(report.replies)}; ` +
        `${report.foreignMacs} foreign MACs; probes answered ${report.probes.answered}/${report.probes.sent} (${report.probes.late} late, sender held back ${report.probes.waitedMs} ms); send errors ${JSON.stringify(report.sendErrors)}; ` +
        `podtap used ${cpu.toFixed(1)} CPU s in ${fuzzSeconds.toFixed(1)} s`;
      results.push(fuzzLine);
      results.push(`fuzz mutations applied: ${JSON.stringify(report.mutations)}`);

      // podtap never crashed.
      expect(rss.died, up.stderr()).toBe(false);
      expect(alive(up), up.stderr()).toBe(true);
      // Everything was sent, and the server saw it rather than the kernel
      // dropping it: nearly all was delivered, nearly all probes answered.
      const fuzzed = Object.values(report.kinds).reduce((a, b) => a + b, 0);
      expect(fuzzed, fuzzLine).toBe(FUZZ_COUNT);
      expect(report.sent, fuzzLine).toBeGreaterThanOrEqual(FUZZ_COUNT + report.probes.sent);
      expect(delivered, fuzzLine).toBeGreaterThan(report.sent * 0.9);
      expect(kernelDrops, fuzzLine).toBeLessThan(report.sent * 0.1);
      expect(report.probes.answered, fuzzLine).toBeGreaterThanOrEqual(report.probes.sent * 0.9);
      // Afterwards a valid DISCOVER still gets an OFFER of the pod's address.
      expect(report.final, fuzzLine).toMatchObject({ answered: true, type: 'OFFER', yiaddr: pod.podIP, serverId });

      results.push(`RSS fuzz: ${(cold / MiB).toFixed(1)} MiB at ready, before the ${warm.count}-packet warm-up`);
      results.push(expectBoundedRss('fuzz', baseline, rss, after!));
      results.push(expectSaneLog('fuzz (with warm-up)', up.stderr(), logFrom, (performance.now() - logStart) / 1000));

      await stopAndCompare(pod, up, standIn, before);
      const total = (performance.now() - t0) / 1000;
      results.push(`fuzz test: ${total.toFixed(1)} s in all, ${fuzzSeconds.toFixed(1)} s of fuzzing`);
      expect(total).toBeLessThan(120);
    } finally {
      await own.cleanupAll();
    }
  }, 180_000);
});
