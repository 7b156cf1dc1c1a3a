// `npm run bench`: measures podtap against its floors and peers and writes
// bench/results/{bench-<stamp>,latest}.{md,json,svg}.
//
//   node bench/run.ts [--quick] [--only setup,dhcp,memory,churn,profile,datapath]
//                     [--runs N] [--cycles N] [--out DIR]
//                     [--entry launcher|dist|src] [--datapath bridge|redirect]
//                     [--dp-trials N] [--dp-seconds S] [--dp-queues N]
//
// --entry: how podtap is started. launcher (default) runs init/podtap, which
// picks dist/podtap.mjs when the build is current and src/main.ts otherwise;
// dist / src run `node <entry>` directly. Each section notes which entry the
// podtap processes it measured really ran.
//
// --datapath: the set-up section measures only that data path (default:
// every path podtap has, its default one started without --datapath, the
// others with it, each against a floor replaying its plan). The datapath
// section always measures every
// data path podtap has, next to macvtap and passt; --dp-trials / --dp-seconds
// override its trial count and window, --dp-queues gives podtap's TAP and the
// macvtap that many queues (one dpgen thread each; passt has one).
//
// Runs as root: it creates network namespaces (all named pt-*/ptb-*) and
// removes them again, with every process it started, even on failure or
// Ctrl-C.

import { performance } from 'node:perf_hooks';
import { Cleanup, sweepOrphans } from '../test/helpers/netns.ts';
import { benchChurn } from './churn.ts';
import { benchDatapath, podtapDefaultDatapath } from './datapath.ts';
import { benchDhcp } from './dhcp.ts';
import { describeMachine, preflight } from './machine.ts';
import { entriesSeen, launcherEntry, setEntryMode, type EntryMode } from './proc.ts';
import { benchMemory } from './memory.ts';
import { benchProfile } from './profile.ts';
import { markdownTable, writeResults, type Results, type Section } from './report.ts';
import { benchSetup, type SetupData } from './setup.ts';
import { phaseChart } from './chart.ts';

const SECTIONS = ['setup', 'dhcp', 'memory', 'churn', 'profile', 'datapath'] as const;
type SectionName = (typeof SECTIONS)[number];

interface Args {
  quick: boolean;
  only: SectionName[];
  runs?: number;
  cycles?: number;
  out?: string;
  entry: EntryMode;
  datapath?: string;
  dpTrials?: number;
  dpSeconds?: number;
  dpQueues?: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, only: [...SECTIONS], entry: 'launcher' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = () => {
      const v = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    if (arg === '--quick') a.quick = true;
    else if (arg.startsWith('--only')) {
      const names = value().split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of names) if (!(SECTIONS as readonly string[]).includes(n)) throw new Error(`--only: unknown section ${n} (have ${SECTIONS.join(', ')})`);
      a.only = names as SectionName[];
    } else if (arg.startsWith('--runs')) a.runs = positive(value(), '--runs');
    else if (arg.startsWith('--cycles')) a.cycles = positive(value(), '--cycles');
    else if (arg.startsWith('--out')) a.out = value();
    else if (arg.startsWith('--datapath')) {
      const v = value();
      if (v !== 'bridge' && v !== 'redirect') throw new Error(`--datapath wants bridge or redirect, not ${v}`);
      a.datapath = v;
    } else if (arg.startsWith('--dp-trials')) a.dpTrials = positive(value(), '--dp-trials');
    else if (arg.startsWith('--dp-queues')) a.dpQueues = positive(value(), '--dp-queues');
    else if (arg.startsWith('--dp-seconds')) {
      const v = Number(value());
      if (!(v >= 0.1 && v <= 60)) throw new Error('--dp-seconds wants 0.1 to 60');
      a.dpSeconds = v;
    }
    else if (arg.startsWith('--entry')) {
      const v = value();
      if (v !== 'launcher' && v !== 'dist' && v !== 'src') throw new Error(`--entry wants launcher, dist or src, not ${v}`);
      a.entry = v;
    }
    else if (arg === '--help' || arg === '-h') {
      process.stdout.write('usage: node bench/run.ts [--quick] [--only setup,dhcp,memory,churn,profile,datapath] [--runs N] [--cycles N] [--out DIR] [--entry launcher|dist|src] [--datapath bridge|redirect] [--dp-trials N] [--dp-seconds S] [--dp-queues N]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${arg}`);
  }
  return a;
}

function positive(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 100_000) throw new Error(`${what} wants a positive integer, not ${v}`);
  return n;
}

const t0 = performance.now();
const log = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  await preflight();
  const swept = await sweepOrphans();
  if (swept.length) log(`removed ${swept.length} namespaces left by dead test/bench processes`);
  const machine = await describeMachine();
  log(`${machine.cpuModel}, ${machine.cores} cores, kernel ${machine.kernel}, ${machine.node}; sections: ${args.only.join(', ')}${args.quick ? ' (quick)' : ''}`);
  setEntryMode(args.entry);
  const le = launcherEntry();
  log(`podtap entry: ${args.entry === 'launcher' ? `init/podtap → ${le.entry} (${le.why})` : args.entry}`);
  const q = args.quick;
  const def = await podtapDefaultDatapath();
  if (!def.stated) throw new Error('bench: `podtap --help` does not state the default data path (--datapath ... default: redirect|bridge)');
  const setupPaths = args.datapath !== undefined ? [args.datapath] : [def.path, ...['redirect', 'bridge'].filter((p) => p !== def.path)];
  const dp = { trials: args.dpTrials ?? (q ? 2 : 7), seconds: args.dpSeconds ?? (q ? 0.4 : 1.5), warmSeconds: q ? 0.15 : 0.5, startWarmSeconds: q ? 0.4 : 1.5, ...(args.dpQueues !== undefined ? { queues: args.dpQueues } : {}) };
  const options = { quick: q, only: args.only, entry: args.entry, launcherEntryAtStart: `${le.entry} (${le.why})`, runs: args.runs ?? (q ? 5 : 25), cycles: args.cycles ?? (q ? 30 : 200), ...(args.datapath !== undefined ? { datapath: args.datapath } : {}), datapathSection: dp };

  const top = new Cleanup();
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: cleaning up`);
    void top.cleanupAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const sections: Section[] = [];
  const failures: string[] = [];
  let setupData: SetupData | undefined;
  try {
    for (const name of args.only) {
      const sc = new Cleanup();
      const unregister = top.defer(`section ${name}`, () => sc.cleanupAll());
      log(`== ${name}`);
      entriesSeen.clear();
      try {
        let s: Section;
        switch (name) {
          case 'setup':
            s = await benchSetup({ iterations: options.runs, warmup: 1, cleanup: sc, log, datapaths: setupPaths, defaultPath: def.path });
            setupData = s.data as SetupData;
            break;
          case 'dhcp':
            s = await benchDhcp({ cleanup: sc, log, probeSeconds: q ? 1 : 4, searches: q ? 1 : 3, delayRuns: q ? 2 : 5, delayRate: 100, delaySeconds: q ? 2 : 5, ...(q ? { tolerance: 1.25, settleMs: 300 } : {}) });
            break;
          case 'memory':
            s = await benchMemory({ cleanup: sc, log, pairs: q ? 2 : 5, settleMs: q ? 2000 : 5000 });
            break;
          case 'churn':
            s = await benchChurn({ cleanup: sc, log, cycles: options.cycles, window: Math.min(20, Math.floor(options.cycles / 4)) });
            break;
          case 'datapath':
            s = await benchDatapath({ cleanup: sc, log, ...dp });
            break;
          case 'profile':
            s = await benchProfile({ cleanup: sc, log, ladderRounds: q ? 4 : 15, importRuns: q ? 2 : 5, tracedRuns: q ? 3 : 7, whatIfRuns: q ? 3 : 7 });
            break;
        }
        const seen = [...entriesSeen].map(([e, n]) => `${e} ×${n}`).join(', ');
        if (seen) s.notes.push(`podtap entry actually run: ${seen}${entriesSeen.size > 1 ? ' — MIXED: sources changed during the run, so these figures mix compiled and type-stripped starts' : ''}.`);
        sections.push(s);
        process.stdout.write(`\n${markdownTable([s])}`);
      } catch (e) {
        const msg = `${name}: ${(e as Error).stack ?? e}`;
        failures.push(msg);
        log(`section ${name} FAILED: ${(e as Error).message}`);
      } finally {
        await sc.cleanupAll().catch((e: unknown) => failures.push(`cleanup of ${name}: ${(e as Error).message}`));
        unregister();
      }
      if (stopping) break;
    }
  } finally {
    await top.cleanupAll().catch((e: unknown) => failures.push(`cleanup: ${(e as Error).message}`));
  }

  const res: Results = { machine, options, sections, durationS: (performance.now() - t0) / 1000, failures };
  const files = writeResults(res, phaseChart(setupData), args.out);
  process.stdout.write(`\n# podtap benchmark\n\n${markdownTable(sections)}\n`);
  log(`wrote ${files.filter((f) => !f.includes('latest')).join(', ')} (and latest.*)`);
  if (failures.length) {
    log(`${failures.length} failure(s):\n${failures.join('\n')}`);
    return 1;
  }
  return 0;
}

process.exitCode = await main().catch((e: unknown) => {
  log(`bench: ${(e as Error).message}`);
  return 2;
});
