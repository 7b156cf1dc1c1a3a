// podtap's life: preflight (nothing changed yet) → discover → plan → apply
// (journaled) → serve → undo. `up`, `run` and `down` are thin shells over
// these functions.

import { randomLaaMac } from './net/random.ts';
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { applyPlan, undoSteps, type Fault } from './journal/apply.ts';
import { discover } from './pod/discover.ts';
import { takeObservation } from './pod/prefetch.ts';
import { PodtapError } from './errors.ts';
import { Journal, Lock, prepareStateDir } from './journal/journal.ts';
import type { Logger } from './log.ts';
import type { Options } from './options.ts';
import { plan, type VmIdentity } from './plan/plan.ts';
import { adopt } from './journal/adopt.ts';
import type { TapSpec } from './plan/steps.ts';
import type { PodNetwork } from './pod/model.ts';

export interface Timings {
  discovery: number;
  plan: number;
  apply: number;
  tapOpen: number;
  dhcpReady: number;
  handoff: number;
  total: number;
}

export interface Session {
  journal: Journal;
  lock: Lock;
  pod: PodNetwork;
  vm: VmIdentity;
  linkLocal: string;
  fds: number[];
  /** Queue fds for a (re)connecting VMM; after an adoption, reattaches the tap once free. */
  reattach(): Promise<number[]>;
  timings: Timings;
  adopted: boolean;
}

const CAP_NET_ADMIN = 12;

/** Refusals that must happen before anything is changed. */
export function preflight(opts: Pick<Options, 'stateDir'>): void {
  let capEff = 0n;
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    capEff = m ? BigInt('0x' + m[1]) : 0n;
  } catch {
    // not Linux /proc: the kernel will refuse anyway
  }
  if (((capEff >> BigInt(CAP_NET_ADMIN)) & 1n) === 0n)
    throw new PodtapError('environment', 'podtap lacks CAP_NET_ADMIN, which it needs to change the pod network', 'add the NET_ADMIN capability to the container (securityContext.capabilities.add: [NET_ADMIN])');
  let tun = false;
  try {
    tun = statSync('/dev/net/tun').isCharacterDevice();
  } catch {
    tun = false;
  }
  if (!tun)
    throw new PodtapError('environment', '/dev/net/tun does not exist in this container', 'give the container the tun device (a device plugin, or a /dev/net/tun hostPath with the device allowed; `mknod /dev/net/tun c 10 200` where permitted)');
  prepareStateDir(opts.stateDir);
}

/** Sockets podtap creates or connects to must be in directories that exist: a typo is refused before any change. */
export function checkSocketPaths(opts: Pick<Options, 'fdSocket' | 'qmp' | 'chApi'>): void {
  const paths: [string, string | undefined][] = [['--fd-socket', opts.fdSocket], ['--qmp', opts.qmp], ['--ch-api', opts.chApi]];
  for (const [flag, path] of paths) {
    if (!path) continue;
    const dir = dirname(path);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) throw new PodtapError('usage', `${flag} ${path}: the directory ${dir} does not exist`, `create it first (in Kubernetes, mount a shared emptyDir there), or fix the path`);
  }
}


async function loadNative() {
  return import('./sys/native.ts');
}

type Native = Awaited<ReturnType<typeof loadNative>>;

/** Opens a TAP as a step asks: queues, owner, persistence; reports the time it took. */
function tapOpener(native: Native, took: (ms: number) => void): (spec: TapSpec) => number[] {
  return (spec) => {
    const s = performance.now();
    let fds: number[];
    try {
      fds = native.openTap(spec.name, { queues: spec.queues, vnetHdr: true, multiQueue: spec.queues > 1, exclusive: !spec.reattach });
    } catch (e) {
      if (!(e instanceof native.SyscallError)) throw e;
      // The message already names the device, the errno and the fix.
      const m = /^(.*?): (.*) \[(.*)\]$/.exec(e.message);
      const message = m ? `cannot open ${m[1]} (${m[3]})` : e.message;
      throw new PodtapError(e.code === 'EBUSY' ? 'conflict' : 'environment', message, m?.[2] ?? 'see the reason above', e);
    }
    try {
      if (spec.owner) {
        native.setTapOwner(fds[0]!, spec.owner.uid);
        if (spec.owner.gid !== undefined) native.setTapGroup(fds[0]!, spec.owner.gid);
      }
      if (spec.persist) native.setTapPersist(fds[0]!, true);
    } catch (e) {
      native.closeAllQuietly(fds);
      throw e;
    }
    took(performance.now() - s);
    return fds;
  };
}

/** A signal asked podtap to stop before setup changed anything: a clean stop, not an error. */
export class StoppedBeforeSetup extends Error {
  constructor() {
    super('stopped before setup began');
    this.name = 'StoppedBeforeSetup';
  }
}

export interface SetupHooks {
  /** Polled between phases: a SIGTERM during setup stops it and tears down. */
  stopRequested(): boolean;
}

export async function setUp(opts: Options, log: Logger, fault: Fault | undefined, hooks: SetupHooks): Promise<Session> {
  const t0 = performance.now();
  preflight(opts);
  checkSocketPaths(opts);
  const lock = Lock.acquire(opts.stateDir, 'set up');
  try {
    const existing = Journal.load(opts.stateDir);
    if (existing && existing.state.phase !== 'ready')
      throw new PodtapError('conflict', `a journal from an earlier podtap run (pid ${existing.state.pid}, ${existing.state.createdAt}) that died during ${existing.state.phase} is in ${existing.path}`, 'run `podtap down` to restore the namespace first');
    if (existing) {
      const native = await loadNative();
      const rt = { openTap: tapOpener(native, () => {}), log };
      const adopted = await adopt(existing, opts, rt);
      const s = existing.state;
      return {
        journal: existing,
        lock,
        pod: s.pod,
        vm: s.vm,
        linkLocal: s.linkLocal,
        fds: adopted.fds,
        reattach: adopted.reattach,
        adopted: true,
        timings: { discovery: 0, plan: 0, apply: performance.now() - t0, tapOpen: 0, dhcpReady: 0, handoff: 0, total: performance.now() - t0 },
      };
    }

    const t1 = performance.now();
    // The native addon (for the TAP) loads while `ip` reads the namespace.
    const nativeP = loadNative();
    nativeP.catch(() => {});
    const { pod, observed } = await discover({ ...(opts.interface ? { interface: opts.interface } : {}), resolvConf: opts.resolvConf, resolvConfRequired: opts.resolvConf !== '/etc/resolv.conf' }, await takeObservation());
    const t2 = performance.now();
    const bridgeMac = randomLaaMac();
    const vethMac = randomLaaMac();
    const p = plan(
      pod,
      observed.links,
      {
        bridge: opts.bridge,
        tap: opts.tap,
        queues: opts.queues,
        linkLocal: opts.linkLocal,
        linkLocalExplicit: opts.linkLocal !== '169.254.75.1/32',
        antispoof: opts.antispoof,
        persistTap: opts.persistTap,
        ...(opts.tapOwner ? { tapOwner: opts.tapOwner } : {}),
      },
      { vethMac, bridgeMac },
    );
    const t3 = performance.now();
    if (hooks.stopRequested()) throw new StoppedBeforeSetup();

    const native = await nativeP;
    let tapMs = 0;
    const journal = Journal.create(opts.stateDir, {
      settings: { bridge: opts.bridge, tap: opts.tap, queues: opts.queues, persistTap: opts.persistTap, antispoof: opts.antispoof },
      pod,
      vm: p.vm,
      linkLocal: p.linkLocal,
      bridgeMac,
      vethMac,
    });
    const openTap = tapOpener(native, (ms) => (tapMs += ms));
    let fds: number[] = [];
    try {
      fds = await applyPlan(p.steps, journal, { openTap, log }, fault);
    } catch (e) {
      log('error', 'setup failed, restoring the namespace', { error: (e as Error).message });
      native.closeAllQuietly(fds);
      const report = await undoSteps(journal.state.steps, { log });
      if (report.failures.length) {
        log('error', 'restore after the failed setup was incomplete; the journal is kept for `podtap down`', { failures: report.failures });
      } else journal.remove();
      throw e;
    }
    const t4 = performance.now();
    journal.setPhase('ready');
    return {
      journal,
      lock,
      pod,
      vm: p.vm,
      linkLocal: p.linkLocal,
      fds,
      reattach: async () => fds,
      adopted: false,
      timings: { discovery: t2 - t1, plan: t3 - t2, apply: t4 - t3 - tapMs, tapOpen: tapMs, dhcpReady: 0, handoff: 0, total: t4 - t0 },
    };
  } catch (e) {
    lock.release();
    throw e;
  }
}

/** Restores the namespace from the journal; keeps the journal if anything could not be restored. */
export async function tearDown(journal: Journal, log: Logger, fault?: Fault): Promise<void> {
  if (journal.state.phase !== 'teardown') journal.setPhase('teardown');
  const report = await undoSteps(journal.state.steps, { log }, fault);
  if (report.failures.length)
    throw new PodtapError('teardown', `restoring the namespace was incomplete:\n  ${report.failures.join('\n  ')}`, `the journal ${journal.path} is kept: fix the cause and run \`podtap down\` again`);
  journal.remove();
}

/** `podtap down`: restore after a crash. Nothing to do is not an error. */
export async function down(opts: Pick<Options, 'stateDir'>, log: Logger, fault?: Fault): Promise<'restored' | 'nothing'> {
  prepareStateDir(opts.stateDir);
  const lock = Lock.acquire(opts.stateDir, 'restore the namespace');
  try {
    const journal = Journal.load(opts.stateDir);
    if (!journal) return 'nothing';
    journal.own();
    await tearDown(journal, log, fault);
    return 'restored';
  } finally {
    lock.release();
  }
}
