// 4. Memory: VmRSS of `podtap up` idle-serving (ready + a settle time)
// against a bare Node 24 that only waits, started the same way in the same
// pod, interleaved. A third, informational process shows what Node's
// TypeScript loader alone costs (an idle .ts entry).

import { join } from 'node:path';
import type { Cleanup } from '../test/helpers/netns.ts';
import { makePods, startUp, tempDir, waitReady } from './pods.ts';
import { NODE, nsenter, procStatusKiB, ROOT, rssByMapping, Running, sleep } from './proc.ts';
import type { Row, Section } from './report.ts';
import { fmt, fmtSummary, summarize } from './stats.ts';

export interface MemoryOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  pairs: number;
  settleMs: number;
}

const LIMIT_MIB = 15;

export async function benchMemory(o: MemoryOptions): Promise<Section> {
  const [pod] = await makePods(1, o.cleanup, 1);
  const stateDir = tempDir(o.cleanup, 'podtap-bench-state-');
  const podtap: Record<string, number>[] = [];
  const bare: Record<string, number>[] = [];
  const ts: Record<string, number>[] = [];
  // Resident KiB per mapping, summed over rounds, for the podtap − bare breakdown.
  const maps = { podtap: new Map<string, number>(), bare: new Map<string, number>() };
  const addMaps = (into: Map<string, number>, pid: number) => {
    for (const [k, v] of rssByMapping(pid)) into.set(k, (into.get(k) ?? 0) + v);
  };
  const measureIdle = async (argv: string[], mapsInto?: Map<string, number>): Promise<Record<string, number>> => {
    const p = new Running(nsenter(pod!.pod, argv), { cleanup: o.cleanup });
    try {
      await sleep(o.settleMs);
      if (p.exitCode !== undefined) throw new Error(`${argv.join(' ')} exited early: ${p.stderr()}`);
      if (mapsInto) addMaps(mapsInto, p.pid);
      return procStatusKiB(p.pid);
    } finally {
      await p.stop();
    }
  };
  for (let k = 0; k < o.pairs; k++) {
    const order = k % 2 === 0 ? ['podtap', 'bare', 'ts'] : ['ts', 'bare', 'podtap'];
    for (const which of order) {
      if (which === 'podtap') {
        const up = startUp(pod!, { stateDir, cleanup: o.cleanup });
        try {
          await waitReady(up);
          await sleep(o.settleMs);
          podtap.push(procStatusKiB(up.pid));
          addMaps(maps.podtap, up.pid);
          await up.signalAndWait('SIGTERM', 30_000);
          if (up.exitCode !== 0) throw new Error(`podtap exited ${up.exitCode}: ${up.stderr().slice(-1500)}`);
        } finally {
          await up.stop();
        }
      } else if (which === 'bare') bare.push(await measureIdle([NODE, '-e', 'setInterval(()=>{},1e9)'], maps.bare));
      else ts.push(await measureIdle([NODE, '--disable-warning=ExperimentalWarning', join(ROOT, 'bench/fixtures/idle.ts')]));
    }
    o.log(`memory: pair ${k + 1}/${o.pairs}: podtap ${fmt(podtap.at(-1)!.VmRSS! / 1024)} MiB, bare node ${fmt(bare.at(-1)!.VmRSS! / 1024)} MiB, idle .ts ${fmt(ts.at(-1)!.VmRSS! / 1024)} MiB`);
  }
  const mib = (xs: Record<string, number>[], k = 'VmRSS') => summarize(xs.map((x) => (x[k] ?? NaN) / 1024));
  const p = mib(podtap);
  const b = mib(bare);
  const t = mib(ts);
  const delta = summarize(podtap.map((x, i) => (x.VmRSS! - bare[i]!.VmRSS!) / 1024));
  const over = delta.median - LIMIT_MIB;
  const rows: Row[] = [
    {
      metric: 'idle RSS above a bare Node 24',
      podtap: `${fmtSummary(p, 'MiB')}`,
      baseline: "node -e 'setInterval(()=>{},1e9)'",
      baselineValue: fmtSummary(b, 'MiB'),
      ratio: `+${fmt(delta.median)} MiB`,
      target: `≤ +${LIMIT_MIB} MiB`,
      met: delta.median <= LIMIT_MIB,
      margin: over <= 0 ? `met with ${fmt(-over)} MiB to spare` : `missed by ${fmt(over)} MiB (paired deltas ${fmt(delta.min)}–${fmt(delta.max)} MiB)`,
    },
    { metric: 'idle RSS of an idle .ts entry (Node type stripping)', podtap: '', baseline: 'node bench/fixtures/idle.ts', baselineValue: fmtSummary(t, 'MiB'), ratio: `+${fmt(t.median - b.median)} MiB vs bare`, target: 'info' },
  ];
  const notes = [
    `${o.pairs} interleaved rounds in one CNI ptp pod; each process is started with nsenter into the pod and read ${o.settleMs / 1000} s after podtap's ready line (podtap) or after start (the others). VmRSS from /proc/PID/status.`,
    `podtap detail (median KiB): RssAnon ${fmt(median(podtap, 'RssAnon'))}, RssFile ${fmt(median(podtap, 'RssFile'))}, VmHWM ${fmt(median(podtap, 'VmHWM'))}, threads ${fmt(median(podtap, 'Threads'))}; bare node: RssAnon ${fmt(median(bare, 'RssAnon'))}, RssFile ${fmt(median(bare, 'RssFile'))}, VmHWM ${fmt(median(bare, 'VmHWM'))}; idle .ts: RssAnon ${fmt(median(ts, 'RssAnon'))}, VmHWM ${fmt(median(ts, 'VmHWM'))}.`,
  ];
  // Where podtap's extra resident memory is: per mapping, podtap − bare, averaged over rounds.
  const keys = new Set([...maps.podtap.keys(), ...maps.bare.keys()]);
  const deltas = [...keys]
    .map((k) => ({ k, podtap: (maps.podtap.get(k) ?? 0) / o.pairs, bare: (maps.bare.get(k) ?? 0) / o.pairs }))
    .map((x) => ({ ...x, d: x.podtap - x.bare }))
    .sort((a, b) => b.d - a.d);
  const md = ['### Where the extra resident memory is (podtap − bare Node, KiB, mean over rounds; /proc/PID/smaps Rss per mapping)', '', '| Mapping | podtap | bare node | Δ |', '|---|---|---|---|'];
  for (const x of deltas.filter((x) => Math.abs(x.d) >= 64).slice(0, 12)) md.push(`| ${x.k} | ${fmt(x.podtap)} | ${fmt(x.bare)} | ${x.d >= 0 ? '+' : ''}${fmt(x.d)} |`);
  md.push(`| (all) | ${fmt(deltas.reduce((a, x) => a + x.podtap, 0))} | ${fmt(deltas.reduce((a, x) => a + x.bare, 0))} | ${fmt(deltas.reduce((a, x) => a + x.d, 0))} |`);
  return { name: 'Memory', rows, notes, data: { podtap, bare, ts, mappings: deltas }, extraMarkdown: md.join('\n') };
}

function median(xs: Record<string, number>[], k: string): number {
  return summarize(xs.map((x) => x[k] ?? NaN)).median;
}
