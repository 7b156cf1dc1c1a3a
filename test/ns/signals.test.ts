// Signals at any moment: podtap either dies before it has changed anything
// (a signal that arrives before its handlers are installed) or finishes what
// it is doing, restores the namespace and exits 0. A second signal never cuts
// a teardown short, and `podtap run` hands SIGTERM/SIGINT to the VMM and
// restores once the VMM is gone, exiting with the VMM's status.

import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots, type Snapshot } from '../helpers/snapshot.ts';
import { startPodtap, stateDirFor, type Running } from '../helpers/podtap.ts';
import { SIGNAL_EXIT, waitForPath } from '../helpers/signals.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const STACK = /internal error|\n\s+at .*\(.*:\d+:\d+\)/;

/** Waits until `text()` matches re, or the process ends; true on a match. */
async function waitOutput(run: Running, re: RegExp, text = () => run.stdout(), timeoutMs = 30_000): Promise<boolean> {
  let ended = false;
  void run.proc.then(() => (ended = true));
  const end = Date.now() + timeoutMs;
  while (Date.now() < end && !ended) {
    if (re.test(text())) return true;
    await sleep(10);
  }
  return re.test(text());
}

// ---------------------------------------------------------------------------
// (a) a signal at many moments of setup

type Anchor = 'spawn' | 'lock' | 'journal';
interface Moment {
  anchor: Anchor;
  ms: number;
}

// Fixed delays after spawn (on this machine all of them land before podtap
// runs its own code), then delays after podtap took its lock (handlers are
// installed, discovery and planning under way, nothing changed yet), then
// after the journal appeared (changes under way).
const MOMENTS: Moment[] = [
  ...Array.from({ length: 21 }, (_, i): Moment => ({ anchor: 'spawn', ms: i * 20 })),
  ...[0, 2, 5, 10, 20, 35, 50, 75, 100].map((ms): Moment => ({ anchor: 'lock', ms })),
  ...[0, 2, 5, 10, 20, 40, 80, 150].map((ms): Moment => ({ anchor: 'journal', ms })),
];

type Outcome = 'died before its handlers' | 'stopped before changing anything' | 'set up, then restored' | 'ready, then restored';

async function signalDuringSetup(pod: Pod, before: Snapshot, sig: 'SIGTERM' | 'SIGINT', m: Moment, args: string[]): Promise<{ outcome?: Outcome; problems: string[] }> {
  const problems: string[] = [];
  const stateDir = stateDirFor(cleanup);
  const up = startPodtap(pod, ['up', ...args], cleanup, {}, stateDir);
  let ended = false;
  void up.proc.then(() => (ended = true));
  if (m.anchor !== 'spawn') {
    const file = join(stateDir, m.anchor === 'lock' ? 'lock' : 'journal.json');
    if (!(await waitForPath(file, () => ended))) {
      await up.proc;
      return { problems: [`podtap ended before ${file} appeared:\n${up.stderr()}`] };
    }
  }
  if (m.ms) await sleep(m.ms);
  const handlersInstalled = m.anchor !== 'spawn';
  up.proc.kill(sig);
  const r = await up.proc;
  const err = up.stderr();
  let outcome: Outcome | undefined;
  if (r.signal === sig || r.exitCode === SIGNAL_EXIT[sig]) {
    outcome = 'died before its handlers';
    // After the handlers are gone again (the last moment of a finished
    // teardown) dying by the signal is harmless too.
    if (handlersInstalled && !/namespace restored/.test(err)) problems.push(`killed by ${sig} although its handlers were installed:\n${err}`);
  } else if (r.exitCode !== 0) {
    problems.push(`exit ${r.exitCode ?? r.signal}, expected 0:\n${err}`);
  } else if (up.stdout().includes('"event":"ready"')) outcome = 'ready, then restored';
  else if (/namespace restored/.test(err)) outcome = 'set up, then restored';
  else outcome = 'stopped before changing anything';
  if (STACK.test(err)) problems.push(`a stack trace or internal error:\n${err}`);
  if (existsSync(join(stateDir, 'journal.json'))) problems.push(`journal left behind: ${readdirSync(stateDir).join(' ')}`);
  const diff = diffSnapshots(before, await snapshot(pod.pod));
  if (diff.length) problems.push(`namespace differs:\n    ${diff.join('\n    ')}`);
  return { ...(outcome ? { outcome } : {}), problems };
}

// SIGTERM on a one-NIC pod (bridge data path), SIGINT on the four-NIC pod
// (redirect, the default).
const WALKS = [
  { sig: 'SIGTERM', shape: 'ptp', datapath: 'bridge' },
  { sig: 'SIGINT', shape: 'multi', datapath: 'redirect' },
] as const;

describe('a signal at any moment of setup', () => {
  for (const { sig, shape, datapath } of WALKS) {
    it.concurrent(`${sig} (${shape} pod, ${datapath}): exit 0 with the namespace restored, or death before anything changed`, async () => {
      const pod = await makePod(shape, { cleanup });
      const before = await snapshot(pod.pod);
      const args = ['--datapath', datapath, ...pod.nicArgs(datapath)];
      const failures: string[] = [];
      const tally: Record<string, number> = {};
      for (const m of MOMENTS) {
        const { outcome, problems } = await signalDuringSetup(pod, before, sig, m, args);
        const label = `${sig} ${m.ms} ms after ${m.anchor}`;
        if (outcome) tally[outcome] = (tally[outcome] ?? 0) + 1;
        if (problems.length) failures.push(`${label} (${outcome ?? 'bad exit'}): ${problems.join('\n  ')}`);
      }
      console.log(`${sig} outcomes: ${JSON.stringify(tally)}`);
      expect(failures).toEqual([]);
      // The walk has to have hit setup itself, not only the edges.
      expect(tally['set up, then restored'] ?? 0).toBeGreaterThan(0);
    }, 600_000);
  }
});

// ---------------------------------------------------------------------------
// (b) `podtap run`: the VMM's end is podtap's end

describe('podtap run exits with the VMM and restores the namespace', () => {
  let pod: Pod;
  let before: Snapshot;
  beforeAll(async () => {
    pod = await makePod('ptp', { cleanup });
    before = await snapshot(pod.pod);
  });

  async function run(vmm: string[]) {
    const p = startPodtap(pod, ['run', '--', ...vmm], cleanup);
    const r = await p.proc;
    expect(p.stderr()).not.toMatch(STACK);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    expect(readdirSync(p.stateDir)).toEqual([]);
    return { r, p };
  }

  it('SIGHUP after ready tears down like SIGTERM', async () => {
    const up = startPodtap(pod, ['up'], cleanup);
    await up.ready;
    up.proc.kill('SIGHUP');
    const r = await up.proc;
    expect(r.exitCode, up.stderr()).toBe(0);
    expect(up.stderr()).toMatch(/SIGHUP: tearing down/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });

  it('a VMM that exits 3: podtap exits 3', async () => {
    const { r, p } = await run(['sh', '-c', 'exit 3']);
    expect(r.exitCode, p.stderr()).toBe(3);
    expect(p.stderr()).toMatch(/the VMM exited status=3/);
    expect(p.stderr()).toMatch(/namespace restored/);
  });

  it('a VMM killed by SIGKILL: podtap exits 137', async () => {
    const { r, p } = await run(['sh', '-c', 'kill -KILL $$']);
    expect(r.exitCode, p.stderr()).toBe(137);
    expect(p.stderr()).toMatch(/namespace restored/);
  });

  it('a VMM that cannot be found: non-zero exit naming it', async () => {
    const { r, p } = await run(['/nonexistent/qemu-system-x86_64', '{fds}']);
    expect(r.exitCode, p.stderr()).not.toBe(0);
    expect(r.signal).toBeUndefined();
    expect(p.stderr()).toMatch(/\/nonexistent\/qemu-system-x86_64/);
    expect(p.stderr()).toMatch(/namespace restored/);
  });
});

// ---------------------------------------------------------------------------
// (c) a second signal during teardown

describe('a second signal does not cut teardown short', () => {
  it('dualstack (teardown waits for IPv6 DAD): SIGTERM, SIGTERM 50 ms later, then SIGINT', async () => {
    const pod = await makePod('dualstack', { cleanup });
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up'], cleanup);
    await up.ready;
    const t0 = Date.now();
    up.proc.kill('SIGTERM');
    await sleep(50);
    up.proc.kill('SIGTERM');
    await sleep(50);
    up.proc.kill('SIGINT');
    const r = await up.proc;
    const took = Date.now() - t0;
    expect(r.exitCode, up.stderr()).toBe(0);
    // The later signals really arrived during the teardown.
    expect(took).toBeGreaterThan(150);
    expect(up.stderr()).toMatch(/SIGTERM again: teardown is already under way/);
    expect(up.stderr()).toMatch(/SIGINT again: teardown is already under way/);
    expect(up.stderr()).toMatch(/namespace restored/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    expect(readdirSync(up.stateDir)).toEqual([]);
  });

  it('a burst of signals while setup is applying its steps (three NICs on the bridge data path)', async () => {
    const pod = await makePod('multi', { cleanup });
    const before = await snapshot(pod.pod);
    const up = startPodtap(pod, ['up', '--datapath', 'bridge', ...pod.nicArgs('bridge')], cleanup);
    let ended = false;
    void up.proc.then(() => (ended = true));
    expect(await waitForPath(join(up.stateDir, 'journal.json'), () => ended)).toBe(true);
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGTERM', 'SIGTERM'] as const) {
      up.proc.kill(sig);
      await sleep(5);
    }
    const r = await up.proc;
    expect(r.exitCode, up.stderr()).toBe(0);
    expect(up.stdout()).toBe('');
    expect(up.stderr()).toMatch(/namespace restored/);
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------
// (d) signals to `podtap run` go to the VMM

describe('podtap run forwards signals to the VMM', () => {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    const name = sig.slice(3);
    it(`${sig} reaches the VMM, which exits 0; then podtap restores and exits 0`, async () => {
      const pod = await makePod('ptp', { cleanup });
      const before = await snapshot(pod.pod);
      const vmm = `trap "echo got-${name.toLowerCase()}; exit 0" ${name}; echo vmm-started; while :; do sleep 0.1; done`;
      const run = startPodtap(pod, ['run', '--', 'sh', '-c', vmm], cleanup);
      expect(await waitOutput(run, /vmm-started/), run.stderr()).toBe(true);
      run.proc.kill(sig);
      const r = await run.proc;
      expect(r.exitCode, run.stderr()).toBe(0);
      expect(run.stdout()).toMatch(new RegExp(`got-${name.toLowerCase()}`));
      expect(run.stderr()).toMatch(new RegExp(`forwarding ${sig} to the VMM`));
      expect(run.stderr()).toMatch(/namespace restored/);
      expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
      expect(readdirSync(run.stateDir)).toEqual([]);
    });
  }
});
