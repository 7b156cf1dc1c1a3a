// Where `podtap up`'s set-up time goes (podtap's own phase timings from the
// ready line, with each child process and fsync around them):
//
//   ladder      start-up of ever more of podtap without doing anything:
//               node -e 0 → an empty .mjs → an empty .ts (type stripping) →
//               src/main.ts --version (sources) → dist/podtap.mjs --version
//               (compiled) → init/podtap --version (+ the sh launcher)
//   imports     each module's own import cost, dependencies first, in fresh
//               processes
//   traced up   `podtap up` with bench/trace-hook.mjs preloaded: a timeline
//               of exec, Node boot, module loading, each ip/nft child
//               process (the namespace read main() prefetches included),
//               fsyncs, ready
//   what-if     the same `up` without the launcher (dist/, src/), and as one
//               bundled .mjs (rolldown, when installed), interleaved

import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import type { Cleanup } from '../test/helpers/netns.ts';
import type { Pod } from '../test/helpers/pods.ts';
import { makePods, resolvConfOf, tempDir, waitReady } from './pods.ts';
import { launcherEntry, NODE, nsenter, PODTAP, podtapHead, ROOT, Running, sleep, timed } from './proc.ts';
import type { Row, Section } from './report.ts';
import { fmt, fmtSummary, summarize, type Summary } from './stats.ts';

export interface ProfileOptions {
  cleanup: Cleanup;
  log: (s: string) => void;
  ladderRounds: number;
  importRuns: number;
  tracedRuns: number;
  whatIfRuns: number;
}

const NODE_FLAGS = ['--disable-warning=ExperimentalWarning'];
const FIX = join(ROOT, 'bench/fixtures');

// ---------------------------------------------------------------- imports

/** Modules reachable from src/main.ts (static and dynamic imports), dependencies first; packages first of all. */
export function moduleOrder(entry = join(ROOT, 'src/main.ts')): { packages: string[]; modules: string[]; dynamic: Set<string> } {
  const packages: string[] = [];
  const modules: string[] = [];
  const dynamic = new Set<string>();
  const seen = new Set<string>();
  const visit = (file: string, depth: number) => {
    if (seen.has(file) || depth > 50) return;
    seen.add(file);
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      return;
    }
    const specs: { spec: string; dyn: boolean }[] = [];
    for (const m of text.matchAll(/^\s*(?:import|export)\s+(?!type\b)[^'"]*?from\s+['"]([^'"]+)['"]/gm)) specs.push({ spec: m[1]!, dyn: false });
    for (const m of text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm)) specs.push({ spec: m[1]!, dyn: false });
    for (const m of text.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) specs.push({ spec: m[1]!, dyn: true });
    for (const { spec, dyn } of specs) {
      if (spec.startsWith('.')) {
        const p = resolve(dirname(file), spec);
        if (dyn) dynamic.add(p);
        visit(p, depth + 1);
      } else if (!spec.startsWith('node:')) {
        const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
        if (!packages.includes(pkg)) packages.push(pkg);
      }
    }
    if (file !== entry) modules.push(file);
  };
  visit(entry, 0);
  return { packages, modules, dynamic };
}

async function importCosts(runs: number, entry: string, log: (s: string) => void): Promise<{ name: string; ms: Summary; dynamic: boolean }[]> {
  const { packages, modules, dynamic } = moduleOrder(join(ROOT, entry));
  const list = [...packages, ...modules];
  const per = new Map<string, number[]>();
  for (let k = 0; k < runs; k++) {
    const r = await timed([NODE, ...NODE_FLAGS, join(ROOT, 'bench/import-cost.ts'), ...list], { timeoutMs: 60_000 });
    for (const [m, ms] of JSON.parse(r.stdout) as [string, number][]) per.set(m, [...(per.get(m) ?? []), ms]);
  }
  log(`profile: import costs from ${runs} fresh processes`);
  return list.map((m) => ({ name: m.startsWith('/') ? relative(ROOT, m) : m, ms: summarize(per.get(m) ?? []), dynamic: dynamic.has(m) }));
}

// ---------------------------------------------------------------- ladder

interface Rung {
  label: string;
  argv: string[];
  env?: NodeJS.ProcessEnv;
}

async function ladder(rounds: number, bundle: string | undefined, bundleCache: string): Promise<{ label: string; ms: Summary }[]> {
  const dist = join(ROOT, 'dist/podtap.mjs');
  const rungs: Rung[] = [
    { label: 'node -e 0', argv: [NODE, '-e', '0'] },
    { label: 'node empty.mjs', argv: [NODE, join(FIX, 'empty.mjs')] },
    { label: 'node -e with node:crypto initialised (randomBytes)', argv: [NODE, '-e', "require('node:crypto').randomBytes(6)"] },
    { label: 'node -e spawning one `true` (child_process)', argv: [NODE, '-e', "require('node:child_process').spawnSync('true')"] },
    { label: 'node empty.ts (type stripping on)', argv: [NODE, ...NODE_FLAGS, join(FIX, 'empty.ts')] },
    { label: 'node src/main.ts --version (sources, static graph)', argv: [NODE, ...NODE_FLAGS, join(ROOT, 'src/main.ts'), '--version'] },
    ...(existsSync(dist) ? [{ label: 'node dist/podtap.mjs --version (compiled)', argv: [NODE, ...NODE_FLAGS, dist, '--version'] }] : []),
    { label: `init/podtap --version (sh launcher → ${launcherEntry().entry})`, argv: [PODTAP, '--version'] },
    ...(bundle ? [{ label: 'what-if: one bundled .mjs --version (NODE_COMPILE_CACHE)', argv: [NODE, ...NODE_FLAGS, bundle, '--version'], env: { ...process.env, NODE_COMPILE_CACHE: bundleCache } }] : []),
  ];
  for (const r of rungs) await timed(r.argv, { ...(r.env ? { env: r.env } : {}) }); // warm the page cache and the compile cache
  const per = rungs.map(() => [] as number[]);
  for (let k = 0; k < rounds; k++) {
    const order = rungs.map((_, i) => i);
    for (let i = 0; i < k % rungs.length; i++) order.push(order.shift()!);
    for (const i of order) per[i]!.push((await timed(rungs[i]!.argv, { ...(rungs[i]!.env ? { env: rungs[i]!.env } : {}) })).ms);
  }
  return rungs.map((r, i) => ({ label: r.label, ms: summarize(per[i]!) }));
}

// ---------------------------------------------------------------- traced up

interface TraceEvent {
  k: string;
  s: number;
  e?: number;
  exit?: number;
  spawned?: number;
  cmd?: string;
  url?: string;
  path?: string;
}

interface Trace {
  timeOrigin: number;
  hookAt: number;
  events: TraceEvent[];
}

interface TracedRun {
  execToReady: number;
  phases: Record<string, number>;
  children: { cmd: string; ms: number }[];
  timeline: { t: number; what: string; ms?: number }[];
  loadedModules: string[];
  timings: Record<string, number>;
}

function analyse(trace: Trace, spawnEpoch: number, readyEpoch: number, timings: Record<string, number>): TracedRun {
  const T0 = trace.timeOrigin;
  const at = (s: number) => T0 + s - spawnEpoch; // ms since the benchmark's spawn()
  const ev = [...trace.events].sort((a, b) => a.s - b.s);
  const setupStart = ev.find((e) => e.k === 'setup-start') ?? ev.find((e) => e.k === 'spawn');
  const ready = ev.find((e) => e.k === 'ready');
  const execToReady = readyEpoch - spawnEpoch;
  const launch = Math.max(0, T0 - spawnEpoch);
  const sStart = setupStart?.s ?? trace.hookAt;
  const sReady = ready?.s ?? sStart;
  // Every child up to ready: the namespace read starts before setUp (main
  // prefetches it while the rest of podtap loads).
  const spawns = ev.filter((e) => e.k === 'spawn' && e.s <= sReady);
  const dur = (e: TraceEvent) => (e.exit ?? e.s) - e.s;
  const children = spawns.map((e) => ({ cmd: shortCmd(e.cmd ?? '?'), ms: dur(e) }));
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const fsync = ev.filter((e) => e.k === 'fsync' && e.s >= sStart && e.s <= sReady);
  const fsyncMs = sum(fsync.map((e) => (e.e ?? e.s) - e.s));
  const read = spawns.find((e) => /-j -d -batch/.test(e.cmd ?? ''));
  const probes = spawns.filter((e) => /nft -c\b/.test(e.cmd ?? ''));
  const probesEnd = probes.length ? Math.max(...probes.map((e) => e.exit ?? e.s)) : undefined;
  const t = (k: string) => timings[k] ?? 0;
  const inPhases = ['discovery', 'plan', 'apply', 'tapOpen', 'dhcpReady', 'handoff'].reduce((a, k) => a + t(k), 0);
  const phases: Record<string, number> = {
    'spawn() → Node process start (fork/exec, nsenter, sh launcher)': launch,
    'Node bootstrap (to the preload)': trace.hookAt,
    'module loading + main() until setUp': sStart - trace.hookAt,
    "setUp: discovery (ip read, nft -c probes, addon load side by side; podtap's timing)": t('discovery'),
    'setUp: plan': t('plan'),
    'setUp: apply (journal write, ip -batch and nft -f side by side)': t('apply'),
    'setUp: TAP open': t('tapOpen'),
    'setUp: DHCP ready (packet sockets, servers)': t('dhcpReady'),
    'setUp: hand-off': t('handoff'),
    'setUp: the rest (preflight, lock, journal)': t('total') - inPhases,
    'after setUp until the ready line (journal phase, ready file)': sReady - sStart - t('total'),
    'ready write → benchmark reads it': readyEpoch - (T0 + sReady),
    // Details, not parts of the sum:
    '· of which fsync (journal and ready file writes)': fsyncMs,
    '· nft -c probes: last one ends after the namespace read ends by': read && probesEnd !== undefined ? Math.max(0, probesEnd - (read.exit ?? read.s)) : NaN,
  };
  const timeline: TracedRun['timeline'] = [];
  timeline.push({ t: launch, what: 'node process starts' });
  timeline.push({ t: at(trace.hookAt), what: 'preload hook runs (Node bootstrapped)' });
  const loads = ev.filter((e) => e.k === 'load');
  const firstSrc = loads.find((e) => /\/(src|dist)\//.test(e.url ?? ''));
  if (firstSrc) timeline.push({ t: at(firstSrc.s), what: `first module load: ${shortUrl(firstSrc.url!)}` });
  if (setupStart) timeline.push({ t: at(sStart), what: 'setUp starts (preflight)' });
  for (const e of ev) {
    if (e.s > sReady) continue;
    if (e.k === 'spawn') timeline.push({ t: at(e.s), what: `spawn ${shortCmd(e.cmd ?? '')}`, ms: dur(e) });
    else if (e.s < sStart) continue;
    else if (e.k === 'fsync') timeline.push({ t: at(e.s), what: 'fsync', ms: (e.e ?? e.s) - e.s });
    else if (e.k === 'load') timeline.push({ t: at(e.s), what: `load ${shortUrl(e.url!)}` });
  }
  if (ready) timeline.push({ t: at(ready.s), what: 'ready line written' });
  timeline.push({ t: execToReady, what: 'ready line read by the benchmark' });
  timeline.sort((a, b) => a.t - b.t);
  return { execToReady, phases, children, timeline, loadedModules: loads.map((e) => shortUrl(e.url!)), timings };
}

interface TracedDown {
  sigtermToExit: number;
  phases: Record<string, number>;
  polls: number;
  timeline: { t: number; what: string; ms?: number }[];
}

function analyseDown(trace: Trace, sigEpoch: number, exitEpoch: number): TracedDown | undefined {
  const T0 = trace.timeOrigin;
  const ev = [...trace.events].sort((a, b) => a.s - b.s);
  const sig = ev.find((e) => e.k === 'sigterm');
  const exit = ev.find((e) => e.k === 'exit');
  if (!sig || !exit) return undefined;
  const at = (s: number) => T0 + s - sigEpoch; // ms since the benchmark sent SIGTERM
  const spawns = ev.filter((e) => e.k === 'spawn' && e.s >= sig.s);
  const kind = (c: string) => (/^\S*nft\b/.test(c) ? 'nft' : /-force/.test(c) ? 'undo' : /-j/.test(c) ? 'poll' : 'other');
  const dur = (e: TraceEvent) => (e.exit ?? e.s) - e.s;
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const polls = spawns.filter((e) => kind(e.cmd ?? '') === 'poll');
  const firstSpawn = spawns[0];
  const lastSpawn = spawns[spawns.length - 1];
  const settle = polls.length ? (polls[polls.length - 1]!.exit ?? polls[polls.length - 1]!.s) - polls[0]!.s : 0;
  const phases: Record<string, number> = {
    'SIGTERM delivered → podtap notices': Math.max(0, T0 + sig.s - sigEpoch),
    'before the first child (DHCP close, ready file, journal phase)': firstSpawn ? firstSpawn.s - sig.s : 0,
    'nft (guard removal)': sum(spawns.filter((e) => kind(e.cmd ?? '') === 'nft').map(dur)),
    'ip -force -batch (undo)': sum(spawns.filter((e) => kind(e.cmd ?? '') === 'undo').map(dur)),
    [`waiting for IPv6 DAD: ${polls.length} polls of ip + 50 ms sleeps`]: settle,
    'after the last child (journal removal, lock, exit)': exit.s - (lastSpawn ? (lastSpawn.exit ?? lastSpawn.s) : sig.s),
    'process exit → benchmark sees it': exitEpoch - (T0 + exit.s),
  };
  const covered = sum(Object.values(phases));
  phases['other (gaps between children)'] = exitEpoch - sigEpoch - covered;
  const timeline: TracedDown['timeline'] = [{ t: at(sig.s), what: 'SIGTERM handled' }];
  for (const e of spawns) timeline.push({ t: at(e.s), what: `spawn ${shortCmd(e.cmd ?? '')}`, ms: dur(e) });
  for (const e of ev.filter((e) => e.k === 'fsync' && e.s >= sig.s)) timeline.push({ t: at(e.s), what: 'fsync', ms: (e.e ?? e.s) - e.s });
  timeline.push({ t: at(exit.s), what: "process 'exit'" });
  timeline.push({ t: exitEpoch - sigEpoch, what: 'benchmark sees the exit' });
  timeline.sort((a, b) => a.t - b.t);
  return { sigtermToExit: exitEpoch - sigEpoch, phases, polls: polls.length, timeline };
}

function shortUrl(u: string): string {
  const p = u.replace(/^file:\/\//, '');
  return p.startsWith(ROOT) ? relative(ROOT, p) : p;
}

function shortCmd(c: string): string {
  return c.replace(/^\S*\/(ip|nft)\b/, '$1');
}

async function upOnce(pod: Pod, argvHead: string[], stateDir: string, env: NodeJS.ProcessEnv, cleanup: Cleanup, note = true): Promise<{ ms: number; startedEpoch: number; readyEpoch: number; timings: Record<string, number>; downMs: number; sigEpoch: number; exitEpoch: number }> {
  const run = new Running(nsenter(pod.pod, [...argvHead, 'up', '--state-dir', stateDir, '--resolv-conf', resolvConfOf(pod)]), { env, cleanup });
  try {
    const r = await waitReady(run, 30_000, note);
    await sleep(200);
    const sigAt = performance.now();
    const downMs = await run.signalAndWait('SIGTERM', 30_000);
    if (run.exitCode !== 0) throw new Error(`podtap exited ${run.exitCode}: ${run.stderr().slice(-1500)}`);
    return {
      ms: r.ms,
      startedEpoch: performance.timeOrigin + run.startedAt,
      readyEpoch: performance.timeOrigin + r.at,
      timings: r.line.timings ?? {},
      downMs,
      sigEpoch: performance.timeOrigin + sigAt,
      exitEpoch: performance.timeOrigin + run.exitedAt!,
    };
  } finally {
    await run.stop();
  }
}

// ---------------------------------------------------------------- bundle

async function buildBundle(outFile: string): Promise<string | undefined> {
  let rolldown: any;
  try {
    rolldown = await import('rolldown' as string);
  } catch {
    return undefined;
  }
  mkdirSync(dirname(outFile), { recursive: true });
  await rolldown.build({
    input: join(ROOT, 'src/main.ts'),
    platform: 'node',
    logLevel: 'silent',
    output: { file: outFile, format: 'esm', codeSplitting: false },
  });
  return existsSync(outFile) ? outFile : undefined;
}

// ---------------------------------------------------------------- section

export async function benchProfile(o: ProfileOptions): Promise<Section> {
  const bundleDir = join(ROOT, '.cache/bench');
  const bundle = await buildBundle(join(bundleDir, 'podtap-bundle.mjs')).catch((e) => {
    o.log(`profile: bundling for the what-if failed (${(e as Error).message}); skipped`);
    return undefined;
  });
  o.cleanup.defer('bundle', async () => rmSync(bundleDir, { recursive: true, force: true }));

  o.log('profile: start-up ladder');
  const lad = await ladder(o.ladderRounds, bundle, tempDir(o.cleanup, 'podtap-bench-cc-'));
  // The bundle has no imports of its own: the module costs are those of the
  // source graph that goes into it.
  const entry = 'src/main.ts';
  const imports = await importCosts(o.importRuns, entry, o.log);

  const [pod] = await makePods(1, o.cleanup, 1);
  const stateDir = tempDir(o.cleanup, 'podtap-bench-state-');
  const traceDir = tempDir(o.cleanup, 'podtap-bench-trace-');
  const hook = pathToFileURL(join(ROOT, 'bench/trace-hook.mjs')).href;
  // One untraced run first: the first `up` in a pod pays for cold caches.
  await upOnce(pod!, podtapHead(), stateDir, process.env, o.cleanup);
  const traced: TracedRun[] = [];
  const tracedDown: TracedDown[] = [];
  for (let k = 0; k < o.tracedRuns; k++) {
    const file = join(traceDir, `trace-${k}.json`);
    const env = { ...process.env, NODE_OPTIONS: `--import=${hook}`, PODTAP_BENCH_TRACE: file };
    const r = await upOnce(pod!, podtapHead(), stateDir, env, o.cleanup);
    const trace = JSON.parse(readFileSync(file, 'utf8')) as Trace;
    traced.push(analyse(trace, r.startedEpoch, r.readyEpoch, r.timings));
    const d = analyseDown(trace, r.sigEpoch, r.exitEpoch);
    if (d) tracedDown.push(d);
    await sleep(200);
  }
  o.log(`profile: ${traced.length} traced runs`);

  // What-ifs, interleaved with podtap as it is.
  // The bundle's own code is compiled before its enableCompileCache() call
  // runs, so it gets the cache from the environment to be fair.
  const bundleEnv = { ...process.env, NODE_COMPILE_CACHE: tempDir(o.cleanup, 'podtap-bench-cc-') };
  const variants: { label: string; head: string[]; env: NodeJS.ProcessEnv }[] = [
    { label: `as benchmarked (${podtapHead()[0] === PODTAP ? `init/podtap → ${launcherEntry().entry}` : relative(ROOT, podtapHead().at(-1)!)})`, head: podtapHead(), env: process.env },
    ...(existsSync(join(ROOT, 'dist/podtap.mjs')) ? [{ label: 'node dist/podtap.mjs up (no sh launcher)', head: [NODE, ...NODE_FLAGS, join(ROOT, 'dist/podtap.mjs')], env: process.env }] : []),
    { label: 'node src/main.ts up (no launcher, type stripping)', head: [NODE, ...NODE_FLAGS, join(ROOT, 'src/main.ts')], env: process.env },
    ...(bundle ? [{ label: 'rebuilt bundle .mjs (rolldown; NODE_COMPILE_CACHE)', head: [NODE, ...NODE_FLAGS, bundle], env: bundleEnv }] : []),
  ];
  for (const [i, v] of variants.entries()) await upOnce(pod!, v.head, stateDir, v.env, o.cleanup, i === 0); // warm caches
  const whatIf = variants.map(() => [] as number[]);
  for (let k = 0; k < o.whatIfRuns; k++) {
    const order = variants.map((_, i) => i);
    for (let i = 0; i < k % variants.length; i++) order.push(order.shift()!);
    for (const i of order) {
      whatIf[i]!.push((await upOnce(pod!, variants[i]!.head, stateDir, variants[i]!.env, o.cleanup, i === 0)).ms);
      await sleep(200);
    }
  }
  o.log('profile: what-ifs done');

  // ---- tables
  const phaseNames = Object.keys(traced[0]?.phases ?? {});
  const phaseMed = phaseNames.map((n) => ({ n, s: summarize(traced.map((t) => t.phases[n]!)) }));
  const execToReady = summarize(traced.map((t) => t.execToReady));
  const byExec = [...traced].sort((a, b) => a.execToReady - b.execToReady);
  const medianRun = byExec[Math.floor(byExec.length / 2)];
  const childNames = medianRun?.children.map((c) => c.cmd) ?? [];
  const childMed = childNames.map((cmd, i) => ({ cmd, s: summarize(traced.map((t) => t.children[i]?.ms ?? NaN)) }));

  const md: string[] = [];
  md.push(`### Where exec → ready goes (traced \`podtap up\`, median of ${traced.length}; exec → ready ${fmtSummary(execToReady, 'ms')} with the trace hook loaded)`, '');
  md.push('| Phase | median ms (min–max) | share |', '|---|---|---|');
  for (const p of phaseMed) md.push(`| ${p.n} | ${fmtSummary(p.s)} | ${p.n.startsWith('·') ? '' : `${fmt((p.s.median / execToReady.median) * 100, 2)}%`} |`);
  md.push('', `Child processes in set-up (median ms, spawn → exit): ${childMed.map((c) => `\`${c.cmd.slice(0, 60)}\` ${fmt(c.s.median)}`).join('; ')}.`, '');
  if (medianRun) {
    md.push(`Timeline of the median traced run (ms since the benchmark's spawn; podtap's own timings: ${Object.entries(medianRun.timings).map(([k, v]) => `${k} ${v}`).join(', ')}):`, '', '```');
    for (const e of medianRun.timeline) md.push(`${e.t.toFixed(1).padStart(7)}  ${e.what}${e.ms !== undefined ? `  (${e.ms.toFixed(1)} ms)` : ''}`);
    md.push('```', '');
  }
  if (tracedDown.length) {
    const dNames = Object.keys(tracedDown[0]!.phases);
    const dTotal = summarize(tracedDown.map((t) => t.sigtermToExit));
    md.push(`### Where teardown goes (same traced runs; SIGTERM → exit ${fmtSummary(dTotal, 'ms')})`, '', '| Phase | median ms (min–max) | share |', '|---|---|---|');
    for (const n of dNames) {
      const s = summarize(tracedDown.map((t) => t.phases[n] ?? NaN));
      md.push(`| ${n} | ${fmtSummary(s)} | ${fmt((s.median / dTotal.median) * 100, 2)}% |`);
    }
    const mid = [...tracedDown].sort((a, b) => a.sigtermToExit - b.sigtermToExit)[Math.floor(tracedDown.length / 2)]!;
    md.push('', 'Teardown timeline of the median traced run (ms since SIGTERM was sent):', '', '```');
    for (const e of mid.timeline) md.push(`${e.t.toFixed(1).padStart(7)}  ${e.what}${e.ms !== undefined ? `  (${e.ms.toFixed(1)} ms)` : ''}`);
    md.push('```', '');
  }
  md.push(`### Start-up ladder (median of ${o.ladderRounds} interleaved rounds, no netns)`, '', '| Command | ms | Δ vs node -e 0 |', '|---|---|---|');
  lad.forEach((r, i) => md.push(`| ${r.label} | ${fmtSummary(r.ms)} | ${i === 0 ? '' : `${r.ms.median - lad[0]!.ms.median >= 0 ? '+' : ''}${fmt(r.ms.median - lad[0]!.ms.median)}`} |`));
  md.push('');
  const loadedByUp = new Set(traced.flatMap((t) => t.loadedModules));
  const sorted = [...imports].sort((a, b) => b.ms.median - a.ms.median);
  const totalStatic = imports.filter((m) => !m.dynamic).reduce((a, m) => a + m.ms.median, 0);
  md.push(`### Module import cost of ${entry}'s graph (own cost, dependencies imported first; median of ${o.importRuns} fresh processes with the compile cache on; TypeScript loader already initialised)`, '', '| Module | ms | loaded by `up`? |', '|---|---|---|');
  for (const m of sorted.slice(0, 20)) {
    const used = !/^(src|dist)\//.test(m.name) ? 'yes' : loadedByUp.has('dist/podtap.mjs') ? 'bundled into dist/podtap.mjs' : loadedByUp.has(m.name) ? (m.dynamic ? 'yes (dynamic)' : 'yes') : 'no';
    md.push(`| ${m.name} | ${fmtSummary(m.ms)} | ${used} |`);
  }
  md.push(`| (${imports.length} modules; sum of medians) | ${fmt(imports.reduce((a, m) => a + m.ms.median, 0))} | |`, '');
  md.push(`### What-if (exec → ready of \`up\` in a pod, median of ${o.whatIfRuns} interleaved runs each)`, '', '| Variant | exec → ready | Δ vs as is |', '|---|---|---|');
  const w = variants.map((v, i) => ({ label: v.label, s: summarize(whatIf[i]!) }));
  for (const v of w) md.push(`| ${v.label} | ${fmtSummary(v.s, 'ms')} | ${v === w[0] ? '' : `${fmt(v.s.median - w[0]!.s.median)} ms`} |`);

  const rows: Row[] = [
    { metric: 'profile: module loading + main() until setUp (traced)', podtap: fmtSummary(phaseMed.find((p) => p.n.startsWith('module loading'))?.s, 'ms'), target: 'info' },
    { metric: 'profile: child processes up to ready (traced)', podtap: `${childNames.length}: ${childMed.map((c) => `${c.cmd.split(' ').slice(0, 2).join(' ')} ${fmt(c.s.median)}`).join(', ')} ms`, target: 'info' },
    { metric: 'profile: nft -c probes beyond the namespace read (traced; upper bound of their cost on the critical path)', podtap: fmtSummary(phaseMed.find((p) => p.n.startsWith('· nft -c probes'))?.s, 'ms'), target: 'info' },
    ...w.slice(1).map((v) => ({ metric: `what-if: ${v.label}`, podtap: fmtSummary(v.s, 'ms'), baseline: 'as is', baselineValue: fmtSummary(w[0]!.s, 'ms'), ratio: `${fmt(v.s.median / w[0]!.s.median)}×`, target: 'info' })),
  ];
  const notes = [
    'Traced runs preload bench/trace-hook.mjs via NODE_OPTIONS=--import (plain JS, so it does not start the TypeScript loader early); it wraps child_process.spawn, fs.fsyncSync and readFileSync(/proc/self/status) (setUp\'s start), and uses module.registerHooks to see module loads. The hook adds a little time of its own. The setUp phases are podtap\'s own timings from its ready line; the lines starting with · are details inside them, not parts of the sum.',
    `Static module graph: ${totalStatic.toFixed(0)} ms summed own import cost (packages: ${imports.filter((m) => !/^(src|dist)\//.test(m.name)).map((m) => `${m.name} ${fmt(m.ms.median)} ms`).join(', ')}).`,
    bundle ? `The bundle is built by rolldown from src/main.ts into ${relative(ROOT, bundle)} (removed afterwards) it is a what-if, not podtap's shipped form; it runs with NODE_COMPILE_CACHE set, since its own code is compiled before the enableCompileCache() inside it runs.` : 'rolldown is not installed: no bundled what-if.',
  ];
  return { name: 'Profile', rows, notes, data: { ladder: lad, imports, traced, tracedDown, whatIf: w }, extraMarkdown: md.join('\n') };
}

