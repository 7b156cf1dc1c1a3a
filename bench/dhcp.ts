// 3. DHCP: ISC perfdhcp against podtap's server and against dnsmasq, each
// behind the same relay: a guest network namespace wired to a TAP by
// test/tools/tap-guest (the stand-in VMM the tests use), so both servers read
// the same frames from a TAP, as they would from a VM.
//
//   podtap:   pod A (CNI ptp)  `podtap run -- tap-guest --netns GA
//             --nic fds={fds},ifname=eth0,mac={mac},mtu={mtu}`: podtap's
//             default data path (guard and all) and its DHCPv4 server on a
//             packet socket on its TAP
//   dnsmasq:  namespace S: a plain persistent TAP (`ip tuntap add ... vnet_hdr`,
//             the flags podtap's TAP has) with the same server identifier
//             podtap uses (169.254.75.1/32) as its only address, dnsmasq bound
//             to it; `tap-guest --netns GB --nic tap=tap0,ifname=eth0,mac=..,
//             mtu=..` opens the TAP by name, as Firecracker does
//
//   GA / GB:  eth0 with the VM's MAC, MTU and the pod's address (the handed
//             prefix), as a guest that has its lease; perfdhcp runs here
//
// So in front of either server: perfdhcp → the guest kernel → tap-guest (one
// read and one write per frame, each way) → a TAP; behind it, each server's
// own way of receiving (podtap: a classic-BPF-filtered packet socket, beside
// the guard; dnsmasq: the kernel's IP/UDP stack and a UDP socket) and of
// answering. Neither namespace has anything else in its way: S holds only the
// TAP, and the pod's own addresses are gone from pod A (podtap took them), so
// a unicast reply to the pod's address leaves through the TAP in both.
//
// perfdhcp (Kea 2.2) always acts as a relay agent in DHCPv4: it puts its own
// address in giaddr and sets hops=1. Both servers would then treat the
// traffic as relayed (podtap drops relayed requests by design), so an
// nftables output rule in each guest namespace zeroes hops and giaddr (and
// the UDP checksum, which IPv4 allows) on the way out: the packets are then
// exactly what a directly attached client broadcasts, and the rule costs the
// same in front of both servers. perfdhcp listens on port 68 (-L 68), where
// both servers answer a client.

import type { Cleanup } from '../test/helpers/netns.ts';
import { createNetns, run } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { buildTools, TAP_GUEST } from '../test/tools/build.ts';
import { makePods, resolvConfOf, tempDir, waitReady } from './pods.ts';
import { nsenter, podtapHead, Running, sleep, timed } from './proc.ts';
import { ratioAtLeast, ratioTarget, type Row, type Section } from './report.ts';
import { fmt, fmtSummary, median, summarize, type Summary } from './stats.ts';

export interface DhcpOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  /** Seconds per rate probe. */
  probeSeconds: number;
  /** The search stops when the failing rate is within this factor of the passing one (default 1.08). */
  tolerance?: number;
  /** Quiet time between probes, ms (default 1000). */
  settleMs?: number;
  /** Independent rate searches per server. */
  searches: number;
  /** Runs for the delay medians, and their rate and length. */
  delayRuns: number;
  delayRate: number;
  delaySeconds: number;
}

type Server = 'podtap' | 'dnsmasq';

interface Target {
  server: Server;
  /** The guest namespace perfdhcp runs in. */
  vm: string;
  mac: string;
  procs: Running[];
}

const MANGLE = `table ip podtap_bench_perfdhcp {
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 67 @th,88,8 set 0 @th,256,32 set 0 udp checksum set 0
  }
}
`;

export function perfdhcpArgv(vm: string, mac: string, extra: string[]): string[] {
  return nsenter(vm, ['perfdhcp', '-4', '-l', 'eth0', '-L', '68', '-b', `mac=${mac}`, '-R', '1', ...extra]);
}

export interface PerfResult {
  rate: number;
  period: number;
  sent: { DO: number; RA: number };
  received: { DO: number; RA: number };
  drops: { DO: number; RA: number };
  delays?: { DO: number[]; RA: number[] }; // ms, with -x t
  clientLimited: boolean;
  ok: boolean; // zero drops and perfdhcp kept the rate
}

export function parsePerfdhcp(out: string, rate: number, period: number): PerfResult {
  const section = (name: string): string => {
    const head = `***Statistics for: ${name}***`;
    const i = out.indexOf(head);
    if (i < 0) return '';
    const j = out.indexOf('***', i + head.length);
    return out.slice(i + head.length, j < 0 ? undefined : j);
  };
  const num = (text: string, key: string): number => {
    const m = new RegExp(`^${key}:\\s*([\\d.]+)`, 'm').exec(text);
    return m ? Number(m[1]) : NaN;
  };
  const DO = section('DISCOVER-OFFER');
  const RA = section('REQUEST-ACK');
  const stamps = (name: string): number[] => {
    const head = `***Timestamps for packets: ${name}***`;
    const i = out.indexOf(head);
    if (i < 0) return [];
    const rest = out.slice(i + head.length);
    const end = rest.indexOf('***');
    const body = end < 0 ? rest : rest.slice(0, end);
    const res: number[] = [];
    for (const m of body.matchAll(/sent \/ received:\s*([\d.]+)\s*\/\s*([\d.]+)/g)) res.push((Number(m[2]) - Number(m[1])) * 1000);
    return res;
  };
  const sent = { DO: num(DO, 'sent packets'), RA: num(RA, 'sent packets') };
  const received = { DO: num(DO, 'received packets'), RA: num(RA, 'received packets') };
  const drops = { DO: num(DO, 'drops'), RA: num(RA, 'drops') };
  const expected = rate * period;
  const clientLimited = !(sent.DO >= 0.95 * expected);
  const ok = drops.DO === 0 && drops.RA === 0 && !clientLimited && received.RA === sent.RA;
  const d = { DO: stamps('DISCOVER-OFFER'), RA: stamps('REQUEST-ACK') };
  return { rate, period, sent, received, drops, ...(d.DO.length ? { delays: d } : {}), clientLimited, ok };
}

async function perf(t: Target, rate: number, seconds: number, timers: boolean): Promise<PerfResult> {
  const argv = perfdhcpArgv(t.vm, t.mac, ['-r', String(rate), '-p', String(seconds), '-W', '1000000', ...(timers ? ['-x', 't'] : [])]);
  const r = await timed(argv, { check: false, timeoutMs: (seconds + 30) * 1000 });
  if (!/Statistics for: DISCOVER-OFFER/.test(r.stdout)) throw new Error(`perfdhcp against ${t.server} produced no statistics (exit ${r.code}):\n${r.stderr.slice(-1500)}${r.stdout.slice(-1500)}`);
  return parsePerfdhcp(r.stdout, rate, seconds);
}

/** The guest side: eth0 (made by tap-guest) gets the lease's address, and the relay-agent fields are zeroed on the way out. */
async function configureGuest(vm: string, address: string, prefixlen: number): Promise<void> {
  await run('ip', ['-n', vm, 'addr', 'add', `${address}/${prefixlen}`, 'dev', 'eth0']);
  await timed(nsenter(vm, ['nft', '-f', '-']), { input: MANGLE });
}

/** Pod A: `podtap run` with tap-guest as its VMM. */
async function podtapTarget(pod: Pod, dir: string, cleanup: Cleanup): Promise<{ target: Target; ready: Record<string, any> }> {
  const vm = await createNetns({ prefix: 'ptb-ga-', cleanup });
  const argv = nsenter(pod.pod, [
    ...podtapHead(), 'run', '--state-dir', tempDir(cleanup, 'podtap-bench-state-'), '--resolv-conf', resolvConfOf(pod),
    '--', TAP_GUEST, '--netns', vm, '--nic', 'fds={fds},ifname=eth0,mac={mac},mtu={mtu}',
  ]);
  const up = new Running(argv, { cleanup, stderrFile: `${dir}/podtap.log` });
  const ready = (await waitReady(up)).line;
  await up.waitLine((l) => l === 'ready', 15_000); // tap-guest's, on podtap's stdout
  const [address, prefixlen] = String(ready.ip).split('/');
  await configureGuest(vm, address!, Number(prefixlen));
  return { target: { server: 'podtap', vm, mac: String(ready.mac), procs: [up] }, ready };
}

const SERVER_ID = '169.254.75.1';

/** Namespace S: a plain TAP, dnsmasq on it, tap-guest opening it by name; the guest gets podtap's identity for the pod. */
async function dnsmasqTarget(pod: Pod, ready: Record<string, any>, dir: string, cleanup: Cleanup): Promise<Target> {
  const srv = await createNetns({ prefix: 'ptb-dns-', cleanup });
  for (const cmd of [
    ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'vnet_hdr'],
    ['link', 'set', 'dev', 'tap0', 'addrgenmode', 'none'],
    ['link', 'set', 'dev', 'tap0', 'mtu', String(ready.mtu), 'up'],
    ['addr', 'add', `${SERVER_ID}/32`, 'dev', 'tap0'],
  ]) await run('ip', ['-n', srv, ...cmd]);
  const dn = new Running(dnsmasqArgv(srv, pod, ready, `${dir}/dnsmasq.leases`), { cleanup, stderrFile: `${dir}/dnsmasq.log`, stdoutToFile: true });
  const vm = await createNetns({ prefix: 'ptb-gb-', cleanup });
  const relay = new Running(nsenter(srv, [TAP_GUEST, '--netns', vm, '--nic', `tap=tap0,ifname=eth0,mac=${ready.mac},mtu=${ready.mtu}`]), { cleanup, stderrFile: `${dir}/tap-guest-dnsmasq.log` });
  await relay.waitLine((l) => l === 'ready', 15_000);
  const [address, prefixlen] = String(ready.ip).split('/');
  await configureGuest(vm, address!, Number(prefixlen));
  return { server: 'dnsmasq', vm, mac: String(ready.mac), procs: [relay, dn] };
}

export function dnsmasqArgv(ns: string, pod: Pod, ready: Record<string, any>, leaseFile: string): string[] {
  const [addr, prefix] = String(ready.ip).split('/');
  const mask = prefixToMask(Number(prefix));
  const net = networkOf(addr!, Number(prefix));
  const gw = ready.gateway as string | undefined;
  return nsenter(ns, [
    'dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--port=0', // DHCP only, no DNS
    '--interface=tap0',
    '--bind-interfaces',
    `--dhcp-range=${net},static,${mask}`,
    `--shared-network=tap0,${net}`, // tap0 only has the link-local server address
    `--dhcp-host=${ready.mac},${addr},${pod.hostname},1h`,
    // The routes podtap hands out for a CNI ptp pod: the gateway on-link, the pod's subnet through it, the default.
    ...(gw ? [`--dhcp-option=option:router,${gw}`, `--dhcp-option=option:classless-static-route,${gw}/32,0.0.0.0,${networkOf(pod.podIP, pod.prefix)}/${pod.prefix},${gw},0.0.0.0/0,${gw}`] : []),
    `--dhcp-option=option:dns-server,${pod.resolvConf.nameservers.join(',')}`,
    `--dhcp-option=option:domain-search,${pod.resolvConf.search.join(',')}`,
    `--dhcp-option=option:mtu,${ready.mtu}`,
    '--dhcp-authoritative',
    `--dhcp-leasefile=${leaseFile}`,
    '--log-facility=-', // its default per-exchange log lines, to stderr → a file (podtap logs each bound lease to a file too)
    '--pid-file',
    '--user=root',
  ]);
}

function prefixToMask(p: number): string {
  const m = p === 0 ? 0 : (0xffffffff << (32 - p)) >>> 0;
  return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join('.');
}

function networkOf(addr: string, p: number): string {
  const n = addr.split('.').reduce((a, o) => ((a << 8) | Number(o)) >>> 0, 0);
  const m = p === 0 ? 0 : (0xffffffff << (32 - p)) >>> 0;
  const x = (n & m) >>> 0;
  return [24, 16, 8, 0].map((s) => (x >>> s) & 255).join('.');
}

interface Search {
  lo: number; // highest zero-drop rate seen
  hi: number; // lowest failing rate seen
  probes: { rate: number; ok: boolean; drops: number; clientLimited: boolean }[];
  done: boolean;
  clientLimited: boolean;
}

const START_RATE = 250;
const MAX_RATE = 64_000;
const MAX_PROBES = 12;

function nextRate(s: Search, tolerance: number): number | undefined {
  if (s.done || s.probes.length >= MAX_PROBES) return undefined;
  if (!Number.isFinite(s.hi)) {
    const r = s.lo === 0 ? START_RATE : s.lo * 2;
    return r > MAX_RATE ? undefined : r;
  }
  if (s.hi / Math.max(s.lo, 1) <= tolerance || s.hi - s.lo <= 10) return undefined;
  return Math.round((s.lo + s.hi) / 2);
}

export async function benchDhcp(o: DhcpOptions): Promise<Section> {
  o.log('dhcp: a fresh ptp pod, two guest namespaces, a server namespace');
  await buildTools();
  const [podA] = await makePods(1, o.cleanup, 1);
  const dir = tempDir(o.cleanup);
  const targets: Target[] = [];
  try {
    const a = await podtapTarget(podA!, dir, o.cleanup);
    targets.push(a.target);
    const readyA = a.ready;
    targets.push(await dnsmasqTarget(podA!, readyA, dir, o.cleanup));
    await sleep(1000); // links up, dnsmasq listening
    for (const t of targets) {
      const r = await perf(t, 10, 2, false);
      if (!(r.received.RA > 0 && r.drops.DO + r.drops.RA === 0)) throw new Error(`dhcp: ${t.server} does not answer perfdhcp at 10/s: ${JSON.stringify(r)}\n${t.procs.map((p) => p.stderr().slice(-1500)).join('\n')}`);
    }

    // Delays at a light, steady rate.
    const delays: Record<Server, { DO: number[]; RA: number[]; runMedians: { DO: number[]; RA: number[] }; drops: number }> = {
      podtap: { DO: [], RA: [], runMedians: { DO: [], RA: [] }, drops: 0 },
      dnsmasq: { DO: [], RA: [], runMedians: { DO: [], RA: [] }, drops: 0 },
    };
    for (let k = 0; k < o.delayRuns; k++) {
      for (const t of k % 2 === 0 ? targets : [...targets].reverse()) {
        const r = await perf(t, o.delayRate, o.delaySeconds, true);
        const d = delays[t.server];
        d.DO.push(...(r.delays?.DO ?? []));
        d.RA.push(...(r.delays?.RA ?? []));
        d.runMedians.DO.push(median(r.delays?.DO ?? []));
        d.runMedians.RA.push(median(r.delays?.RA ?? []));
        d.drops += r.drops.DO + r.drops.RA;
        o.log(`dhcp: delay run ${k + 1}/${o.delayRuns} ${t.server}: DO ${fmt(median(r.delays?.DO ?? []))} ms, RA ${fmt(median(r.delays?.RA ?? []))} ms, drops ${r.drops.DO + r.drops.RA}`);
        await sleep(500);
      }
    }

    // Zero-drop rate: independent searches per server, probes interleaved.
    const found: Record<Server, number[]> = { podtap: [], dnsmasq: [] };
    const searches: Record<Server, Search[]> = { podtap: [], dnsmasq: [] };
    for (let rep = 0; rep < o.searches; rep++) {
      const st: Record<Server, Search> = {
        podtap: { lo: 0, hi: Infinity, probes: [], done: false, clientLimited: false },
        dnsmasq: { lo: 0, hi: Infinity, probes: [], done: false, clientLimited: false },
      };
      for (let round = 0; round < MAX_PROBES; round++) {
        let any = false;
        for (const t of (rep + round) % 2 === 0 ? targets : [...targets].reverse()) {
          const s = st[t.server];
          const rate = nextRate(s, o.tolerance ?? 1.08);
          if (rate === undefined) {
            s.done = true;
            continue;
          }
          any = true;
          const r = await perf(t, rate, o.probeSeconds, false);
          const drops = r.drops.DO + r.drops.RA;
          s.probes.push({ rate, ok: r.ok, drops, clientLimited: r.clientLimited });
          if (r.ok) s.lo = Math.max(s.lo, rate);
          else {
            s.hi = Math.min(s.hi, rate);
            if (r.clientLimited && drops === 0) s.clientLimited = true;
          }
          o.log(`dhcp: search ${rep + 1}/${o.searches} ${t.server} ${rate}/s: ${r.ok ? 'zero drops' : r.clientLimited ? `perfdhcp sent only ${r.sent.DO}` : `${drops} drops`}`);
          await sleep(o.settleMs ?? 1000); // let queues drain between probes
        }
        if (!any) break;
      }
      for (const srv of ['podtap', 'dnsmasq'] as const) {
        found[srv].push(st[srv].lo);
        searches[srv].push(st[srv]);
      }
    }

    const rate = { podtap: summarize(found.podtap), dnsmasq: summarize(found.dnsmasq) };
    const dly = (srv: Server, k: 'DO' | 'RA'): Summary => {
      const s = summarize(delays[srv].runMedians[k]);
      return s;
    };
    const rows: Row[] = [
      { metric: 'highest zero-drop rate (4-way exchanges/s)', podtap: fmtSummary(rate.podtap, '/s'), baseline: 'dnsmasq 2.90', baselineValue: fmtSummary(rate.dnsmasq, '/s'), ...ratioAtLeast(rate.podtap, rate.dnsmasq, 1, '/s') },
      { metric: `median DISCOVER→OFFER delay @${o.delayRate}/s`, podtap: fmtSummary(dly('podtap', 'DO'), 'ms'), baseline: 'dnsmasq', baselineValue: fmtSummary(dly('dnsmasq', 'DO'), 'ms'), ...ratioTarget(dly('podtap', 'DO'), dly('dnsmasq', 'DO'), 1.5) },
      { metric: `median REQUEST→ACK delay @${o.delayRate}/s`, podtap: fmtSummary(dly('podtap', 'RA'), 'ms'), baseline: 'dnsmasq', baselineValue: fmtSummary(dly('dnsmasq', 'RA'), 'ms'), ...ratioTarget(dly('podtap', 'RA'), dly('dnsmasq', 'RA'), 1.5) },
    ];
    const limited = (srv: Server) => searches[srv].filter((s) => s.clientLimited).length;
    const notes = [
      `podtap: a fresh CNI ptp pod running \`podtap run -- tap-guest --netns GA --nic fds={fds},ifname=eth0,mac={mac},mtu={mtu}\` (its default data path, ${readyA.datapath}: guard, packet socket and all); dnsmasq: a namespace holding only a plain persistent TAP (\`ip tuntap add dev tap0 mode tap vnet_hdr\`, podtap's TAP flags) with podtap's server identifier ${SERVER_ID}/32, and \`tap-guest --netns GB --nic tap=tap0,...\` opening it by name. Both guests' eth0 get the VM's MAC, MTU and address (${readyA.ip}), so each server sees the same frames through the same relay (tap-guest: one read and one write per frame each way) and answers the same client.`,
      `perfdhcp invocation (in the vm netns): \`${perfdhcpArgv('VM', 'VM_MAC', ['-r', 'RATE', '-p', String(o.probeSeconds), '-W', '1000000']).slice(3).join(' ')}\` (delays: \`-r ${o.delayRate} -p ${o.delaySeconds} -x t\`). \`-b mac=\` with \`-R 1\` makes every simulated client the VM's MAC (perfdhcp matches replies by xid); \`-L 68\` listens on the client port; server defaults to 255.255.255.255 via \`-l eth0\`.`,
      'perfdhcp always fills giaddr with its own address and hops=1 (it simulates a relay); an nft output rule in each guest netns zeroes both and the UDP checksum, so the servers see a directly attached client: `udp dport 67 @th,88,8 set 0 @th,256,32 set 0 udp checksum set 0`.',
      `dnsmasq: \`${dnsmasqArgv('S', podA!, readyA, 'LEASEFILE').slice(3).join(' ')}\` — one static lease for the VM's MAC with the pod's router, the routes podtap hands out (option 121), DNS, search list, hostname and MTU; DNS off (--port=0); lease file on /run. Both servers log at their defaults (podtap one line per bound lease, dnsmasq four per exchange) into files, not pipes, so draining logs costs the benchmark nothing.`,
      `Zero-drop rate: ${o.searches} independent searches per server (start ${START_RATE}/s, doubling until drops, then bisecting to ${fmt(((o.tolerance ?? 1.08) - 1) * 100)}%; ${o.probeSeconds} s per probe, ${(o.settleMs ?? 1000) / 1000} s settle), podtap and dnsmasq probes interleaved. A probe passes with 0 drops in both exchanges and perfdhcp reaching ≥95% of the asked rate${limited('podtap') + limited('dnsmasq') ? `; perfdhcp itself was the limit in ${limited('podtap')} podtap and ${limited('dnsmasq')} dnsmasq searches (the figure is then a lower bound)` : ''}. Found: podtap ${found.podtap.join(', ')}; dnsmasq ${found.dnsmasq.join(', ')}.`,
      `Delays: ${o.delayRuns} runs per server at ${o.delayRate}/s for ${o.delaySeconds} s, alternating; median of the per-run medians (min–max across runs) from perfdhcp's per-exchange timestamps (-x t). Pooled medians: podtap DO ${fmt(median(delays.podtap.DO))} / RA ${fmt(median(delays.podtap.RA))} ms; dnsmasq DO ${fmt(median(delays.dnsmasq.DO))} / RA ${fmt(median(delays.dnsmasq.RA))} ms; drops during delay runs: podtap ${delays.podtap.drops}, dnsmasq ${delays.dnsmasq.drops}.`,
    ];
    return {
      name: 'DHCP',
      rows,
      notes,
      data: {
        found,
        searches,
        delays: Object.fromEntries((['podtap', 'dnsmasq'] as const).map((s) => [s, { runMedians: delays[s].runMedians, pooledMedian: { DO: median(delays[s].DO), RA: median(delays[s].RA) }, p90: { DO: quant(delays[s].DO, 0.9), RA: quant(delays[s].RA, 0.9) }, drops: delays[s].drops }])),
      },
    };
  } finally {
    for (const t of targets) for (const p of t.procs) await p.stop();
  }
}

function quant(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))]! : NaN;
}
