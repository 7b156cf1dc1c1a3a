// 5. Churn: many up/down cycles (SIGTERM each) in one pod namespace and one
// state directory. After every cycle: processes left in the pod netns (and
// their open fds), links, nft rules, files in the state dir; at every ready
// line: podtap's RSS and open fds. The namespace snapshot after the last
// cycle must equal the one before the first.

import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Cleanup } from '../test/helpers/netns.ts';
import { diffSnapshots, snapshot } from '../test/helpers/snapshot.ts';
import { makePods, startUp, tempDir, waitReady } from './pods.ts';
import { fdCount, nsenter, pidsInNetns, procStatusKiB, sleep, timed } from './proc.ts';
import type { Row, Section } from './report.ts';
import { fmt, fmtSummary, summarize } from './stats.ts';

export interface ChurnOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  cycles: number;
  window: number; // first/last N cycles compared
}

interface Cycle {
  setupMs: number;
  teardownMs: number;
  exitCode: number | null | undefined;
  rssKiB: number; // podtap at ready
  podtapFds: number; // podtap at ready
  leftPids: number; // processes left in the pod netns after exit
  leftFds: number;
  links: number;
  nftRules: number;
  nftTables: number;
  stateFiles: number;
}

function countFiles(dir: string, depth = 0): number {
  if (depth > 4) return 0;
  let n = 0;
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    n++;
    try {
      if (statSync(p).isDirectory()) n += countFiles(p, depth + 1);
    } catch {
      // raced away
    }
  }
  return n;
}

async function nftCounts(ns: string): Promise<{ tables: number; rules: number }> {
  const r = await timed(nsenter(ns, ['nft', '-j', 'list', 'ruleset']), { timeoutMs: 10_000 });
  const items = (JSON.parse(r.stdout || '{"nftables":[]}').nftables ?? []) as Record<string, unknown>[];
  return { tables: items.filter((i) => 'table' in i).length, rules: items.filter((i) => 'rule' in i).length };
}

async function linkCount(ns: string): Promise<number> {
  const r = await timed(['ip', '-n', ns, '-j', 'link', 'show'], { timeoutMs: 10_000 });
  return (JSON.parse(r.stdout || '[]') as unknown[]).length;
}

export async function benchChurn(o: ChurnOptions): Promise<Section> {
  const [pod] = await makePods(1, o.cleanup, 1);
  const ns = pod!.pod;
  const stateDir = tempDir(o.cleanup, 'podtap-bench-state-');
  const before = await snapshot(ns);
  const baseline = { links: await linkCount(ns), ...(await nftCounts(ns)), stateFiles: countFiles(stateDir), pids: pidsInNetns(ns).length };
  const cycles: Cycle[] = [];
  const failures: string[] = [];
  for (let i = 0; i < o.cycles; i++) {
    const up = startUp(pod!, { stateDir, cleanup: o.cleanup });
    let c: Cycle;
    try {
      const ready = await waitReady(up, 30_000);
      const st = procStatusKiB(up.pid);
      const podtapFds = fdCount(up.pid);
      const teardownMs = await up.signalAndWait('SIGTERM', 30_000);
      const left = pidsInNetns(ns);
      const nft = await nftCounts(ns);
      c = {
        setupMs: ready.ms,
        teardownMs,
        exitCode: up.exitCode,
        rssKiB: st.VmRSS ?? NaN,
        podtapFds,
        leftPids: left.length,
        leftFds: left.reduce((a, p) => a + fdCount(p), 0),
        links: await linkCount(ns),
        nftRules: nft.rules,
        nftTables: nft.tables,
        stateFiles: countFiles(stateDir),
      };
    } catch (e) {
      failures.push(`cycle ${i + 1}: ${(e as Error).message}`);
      await up.stop();
      if (failures.length >= 3) throw new Error(`churn: giving up after 3 failed cycles:\n${failures.join('\n')}`);
      continue;
    } finally {
      await up.stop();
    }
    if (c.exitCode !== 0) failures.push(`cycle ${i + 1}: podtap exited ${c.exitCode}: ${up.stderr().slice(-500)}`);
    cycles.push(c);
    if ((i + 1) % 10 === 0 || i === 0) o.log(`churn: cycle ${i + 1}/${o.cycles}: up ${c.setupMs.toFixed(0)} ms, down ${c.teardownMs.toFixed(0)} ms, RSS ${fmt(c.rssKiB / 1024)} MiB, fds ${c.podtapFds}, left pids ${c.leftPids}, links ${c.links}, nft rules ${c.nftRules}, state files ${c.stateFiles}`);
    await sleep(50);
  }
  const after = await snapshot(ns);
  const diff = diffSnapshots(before, after);

  const w = Math.min(o.window, Math.floor(cycles.length / 2));
  const first = cycles.slice(0, w);
  const last = cycles.slice(-w);
  const cyc = (xs: Cycle[]) => summarize(xs.map((c) => c.setupMs + c.teardownMs));
  const f = cyc(first);
  const l = cyc(last);
  const slow = l.median / f.median;
  const rssF = summarize(first.map((c) => c.rssKiB / 1024));
  const rssL = summarize(last.map((c) => c.rssKiB / 1024));
  const rssGrowth = rssL.median - rssF.median;
  const range = (k: keyof Cycle) => {
    const xs = cycles.map((c) => Number(c[k]));
    return { min: Math.min(...xs), max: Math.max(...xs), first: xs[0]!, last: xs.at(-1)! };
  };
  const flat = (k: keyof Cycle, base: number) => {
    const r = range(k);
    return { ok: r.min === base && r.max === base, text: r.min === r.max ? `${r.min} every cycle` : `${r.min}–${r.max} (first ${r.first}, last ${r.last})` };
  };
  const links = flat('links', baseline.links);
  const rules = flat('nftRules', baseline.rules);
  const tables = flat('nftTables', baseline.tables);
  const files = flat('stateFiles', baseline.stateFiles);
  const pids = flat('leftPids', 0);
  const fds = flat('leftFds', 0);
  const pfd = range('podtapFds');
  const RSS_SLACK_MIB = 2;
  const rows: Row[] = [
    { metric: `cycles completed (SIGTERM each)`, podtap: `${cycles.length}/${o.cycles}`, target: `${o.cycles}/${o.cycles}, exit 0`, met: cycles.length === o.cycles && cycles.every((c) => c.exitCode === 0) },
    { metric: 'processes / open fds left in the pod netns', podtap: `${pids.text} / ${fds.text}`, target: '0 / 0', met: pids.ok && fds.ok },
    { metric: "podtap's open fds at ready", podtap: pfd.min === pfd.max ? `${pfd.min} every cycle` : `${pfd.min}–${pfd.max} (first ${pfd.first}, last ${pfd.last})`, target: 'no growth', met: pfd.last <= pfd.first },
    { metric: 'links in the pod netns after each cycle', podtap: links.text, baselineValue: `${baseline.links} before`, target: 'no growth', met: links.ok },
    { metric: 'nft tables / rules after each cycle', podtap: `${tables.text} / ${rules.text}`, baselineValue: `${baseline.tables} / ${baseline.rules} before`, target: 'no growth', met: tables.ok && rules.ok },
    { metric: 'entries in the state dir after each cycle', podtap: files.text, baselineValue: `${baseline.stateFiles} before`, target: 'no growth', met: files.ok },
    { metric: `RSS at ready, last ${w} vs first ${w}`, podtap: `${fmtSummary(rssL, 'MiB')}`, baseline: `first ${w}`, baselineValue: fmtSummary(rssF, 'MiB'), ratio: `${rssGrowth >= 0 ? '+' : ''}${fmt(rssGrowth)} MiB`, target: `no growth (≤ +${RSS_SLACK_MIB} MiB noise)`, met: rssGrowth <= RSS_SLACK_MIB },
    {
      metric: `cycle time (up + down), last ${w} vs first ${w}`,
      podtap: fmtSummary(l, 'ms'),
      baseline: `first ${w}`,
      baselineValue: fmtSummary(f, 'ms'),
      ratio: `${fmt(slow)}×`,
      target: '≤ 1.2×',
      met: slow <= 1.2,
      margin: slow <= 1.2 ? `met with ${fmt((1 - slow / 1.2) * 100, 2)}% headroom` : `missed: ${fmt(slow / 1.2)}× over`,
    },
    { metric: 'snapshot after last cycle = before first', podtap: diff.length ? `${diff.length} differences` : 'equal', target: 'equal', met: diff.length === 0 },
  ];
  const notes = [
    `${o.cycles} cycles of \`podtap up\` → ready → SIGTERM → exit in one CNI ptp pod with one state dir; after each: processes in the pod netns (from /proc/*/ns/net), \`ip -j link\`, \`nft -j list ruleset\`, a recursive count of the state dir.`,
    `Set-up first ${w}: ${fmtSummary(summarize(first.map((c) => c.setupMs)), 'ms')}, last ${w}: ${fmtSummary(summarize(last.map((c) => c.setupMs)), 'ms')}; teardown first ${w}: ${fmtSummary(summarize(first.map((c) => c.teardownMs)), 'ms')}, last ${w}: ${fmtSummary(summarize(last.map((c) => c.teardownMs)), 'ms')}.`,
    ...(diff.length ? [`Snapshot differences: ${diff.slice(0, 20).join('; ')}`] : []),
    ...(failures.length ? [`Failures: ${failures.slice(0, 5).join(' | ')}`] : []),
  ];
  return { name: 'Churn', rows, notes, data: { cycles, baseline, diff, failures } };
}
