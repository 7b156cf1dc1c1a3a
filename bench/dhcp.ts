// 3. DHCP: ISC perfdhcp against podtap's server and against dnsmasq, each in
// its own fresh CNI ptp pod with the same bridge shape:
//
//   pod A: `podtap up`              (br0, tap0, guard, podtap's DHCP server)
//   pod B: `podtap up --no-dhcp`    (the same br0, tap0, guard) + dnsmasq on br0
//
//   vm ns: veth0 (the VM's MAC, the VM's address) ─veth─ vmport, a port of br0
//
// The vm-namespace veth stands in for the tap: the guard table's tap rules
// match iifname "tap0", so this client port is not filtered by them (fine
// for a load test; the guard's cost is not measured here).
//
// perfdhcp (Kea 2.2) always acts as a relay agent in DHCPv4: it puts its own
// address in giaddr and sets hops=1. Both servers would then treat the
// traffic as relayed (podtap drops relayed requests by design), so an
// nftables output rule in the vm namespace zeroes hops and giaddr (and the
// UDP checksum, which IPv4 allows) on the way out — the packets are then
// exactly what a directly attached client broadcasts. perfdhcp listens on
// port 68 (-L 68), where both servers answer a client.

import type { Cleanup } from '../test/helpers/netns.ts';
import { createNetns, run } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { makePods, startUp, tempDir, waitReady } from './pods.ts';
import { nsenter, Running, sleep, timed } from './proc.ts';
import { ratioAtLeast, ratioTarget, type Row, type Section } from './report.ts';
import { fmt, fmtSummary, median, summarize, type Summary } from './stats.ts';

export interface DhcpOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  /** Seconds per rate probe. */
  probeSeconds: number;
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
  pod: Pod;
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
  return nsenter(vm, ['perfdhcp', '-4', '-l', 'veth0', '-L', '68', '-b', `mac=${mac}`, '-R', '1', ...extra]);
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

async function attachVm(pod: Pod, mac: string, address: string, prefixlen: number, cleanup: Cleanup): Promise<string> {
  const vm = await createNetns({ prefix: 'ptb-vm-', cleanup });
  await run('ip', ['-n', vm, 'link', 'add', 'veth0', 'address', mac, 'type', 'veth', 'peer', 'name', 'vmport', 'netns', pod.pod]);
  await run('ip', ['-n', pod.pod, 'link', 'set', 'vmport', 'master', 'br0', 'up']);
  await run('ip', ['-n', vm, 'addr', 'add', `${address}/${prefixlen}`, 'dev', 'veth0']);
  await run('ip', ['-n', vm, 'link', 'set', 'veth0', 'up']);
  await timed(nsenter(vm, ['nft', '-f', '-']), { input: MANGLE });
  return vm;
}

export function dnsmasqArgv(pod: Pod, ready: Record<string, any>, leaseFile: string): string[] {
  const [addr, prefix] = String(ready.ip).split('/');
  const mask = prefixToMask(Number(prefix));
  const net = networkOf(addr!, Number(prefix));
  const gw = ready.gateway as string | undefined;
  return nsenter(pod.pod, [
    'dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--port=0', // DHCP only, no DNS
    '--interface=br0',
    '--bind-interfaces',
    `--dhcp-range=${net},static,${mask}`,
    `--shared-network=br0,${net}`, // br0 only has the link-local server address
    `--dhcp-host=${ready.mac},${addr},${pod.hostname},1h`,
    ...(gw ? [`--dhcp-option=option:router,${gw}`, `--dhcp-option=option:classless-static-route,${net}/${prefix},${gw},0.0.0.0/0,${gw}`] : []),
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

function nextRate(s: Search): number | undefined {
  if (s.done || s.probes.length >= MAX_PROBES) return undefined;
  if (!Number.isFinite(s.hi)) {
    const r = s.lo === 0 ? START_RATE : s.lo * 2;
    return r > MAX_RATE ? undefined : r;
  }
  if (s.hi / Math.max(s.lo, 1) <= 1.08 || s.hi - s.lo <= 10) return undefined;
  return Math.round((s.lo + s.hi) / 2);
}

export async function benchDhcp(o: DhcpOptions): Promise<Section> {
  o.log('dhcp: making 2 fresh ptp pods');
  const [podA, podB] = await makePods(2, o.cleanup, 2);
  const dir = tempDir(o.cleanup);
  const targets: Target[] = [];
  try {
    const upA = startUp(podA!, { stateDir: tempDir(o.cleanup, 'podtap-bench-state-'), cleanup: o.cleanup, stderrFile: `${dir}/podtap-a.log` });
    const readyA = (await waitReady(upA)).line;
    const upB = startUp(podB!, { stateDir: tempDir(o.cleanup, 'podtap-bench-state-'), cleanup: o.cleanup, args: ['--no-dhcp'], stderrFile: `${dir}/podtap-b.log` });
    const readyB = (await waitReady(upB)).line;
    const dn = new Running(dnsmasqArgv(podB!, readyB, `${dir}/dnsmasq.leases`), { cleanup: o.cleanup, stderrFile: `${dir}/dnsmasq.log`, stdoutToFile: true });
    const [addrA, plA] = String(readyA.ip).split('/');
    const [addrB, plB] = String(readyB.ip).split('/');
    targets.push({ server: 'podtap', pod: podA!, vm: await attachVm(podA!, readyA.mac, addrA!, Number(plA), o.cleanup), mac: readyA.mac, procs: [upA] });
    targets.push({ server: 'dnsmasq', pod: podB!, vm: await attachVm(podB!, readyB.mac, addrB!, Number(plB), o.cleanup), mac: readyB.mac, procs: [dn, upB] });
    await sleep(2000); // links up, bridge forwarding, dnsmasq listening
    for (const t of targets) {
      const r = await perf(t, 10, 2, false);
      if (!(r.received.RA > 0 && r.drops.DO + r.drops.RA === 0)) throw new Error(`dhcp: ${t.server} does not answer perfdhcp at 10/s: ${JSON.stringify(r)}\n${t.procs[0]!.stderr().slice(-2000)}`);
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
          const rate = nextRate(s);
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
          await sleep(1000); // let queues drain between probes
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
      `Two fresh CNI ptp pods: A runs \`podtap up\`; B runs \`podtap up --no-dhcp\` (identical br0/tap0/guard) plus dnsmasq on br0. In each, a "vm" namespace's veth0 (the VM's MAC and address ${readyA.ip}) is attached to br0 in place of the tap (\`ip link set vmport master br0\`); the guard's tap rules match iifname "tap0", so they do not filter this port — fine for a load test.`,
      `perfdhcp invocation (in the vm netns): \`${perfdhcpArgv('VM', 'VM_MAC', ['-r', 'RATE', '-p', String(o.probeSeconds), '-W', '1000000']).slice(3).join(' ')}\` (delays: \`-r ${o.delayRate} -p ${o.delaySeconds} -x t\`). \`-b mac=\` with \`-R 1\` makes every simulated client the VM's MAC (perfdhcp matches replies by xid); \`-L 68\` listens on the client port; server defaults to 255.255.255.255 via \`-l veth0\`.`,
      'perfdhcp always fills giaddr with its own address and hops=1 (it simulates a relay); an nft output rule in the vm netns zeroes both and the UDP checksum, so the servers see a directly attached client: `udp dport 67 @th,88,8 set 0 @th,256,32 set 0 udp checksum set 0`.',
      `dnsmasq: \`${dnsmasqArgv(podB!, readyB, 'LEASEFILE').slice(3).join(' ')}\` — one static lease for the VM's MAC with the pod's router, routes, DNS, search list and MTU; DNS off (--port=0); lease file on /run. Both servers log at their defaults (podtap one line per bound lease, dnsmasq four per exchange) into files, not pipes, so draining logs costs the benchmark nothing.`,
      `Zero-drop rate: ${o.searches} independent searches per server (start ${START_RATE}/s, doubling until drops, then bisecting to 8%; ${o.probeSeconds} s per probe, 1 s settle), podtap and dnsmasq probes interleaved. A probe passes with 0 drops in both exchanges and perfdhcp reaching ≥95% of the asked rate${limited('podtap') + limited('dnsmasq') ? `; perfdhcp itself was the limit in ${limited('podtap')} podtap and ${limited('dnsmasq')} dnsmasq searches (the figure is then a lower bound)` : ''}. Found: podtap ${found.podtap.join(', ')}; dnsmasq ${found.dnsmasq.join(', ')}.`,
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
