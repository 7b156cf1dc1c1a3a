// podtap's life: preflight (nothing changed yet) → discover → plan → apply
// (journaled) → serve → undo. `up`, `run` and `down` are thin shells over
// these functions.

import { randomLaaMac } from './net/random.ts';
import { lstatSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { applyPlan, kernel, undoSteps, type Effects, type Fault } from './journal/apply.ts';
import { discover } from './pod/discover.ts';
import { takeObservation } from './pod/prefetch.ts';
import { PodtapError } from './errors.ts';
import { Journal, Lock } from './journal/journal.ts';
import { openStateDir, removeStateFile } from './journal/statedir.ts';
import type { Logger } from './log.ts';
import type { Options } from './options.ts';
import { plan } from './plan/plan.ts';
import type { Attachment } from './plan/attachment.ts';
import { adopt, type Settings } from './journal/adopt.ts';
import type { TapSpec } from './journal/actions.ts';
import type { Pod } from './pod/model.ts';
import { probeNft } from './sys/nft.ts';

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
  pod: Pod;
  attachments: Attachment[];
  serverId: string; // CIDR
  forward?: { nic: number; from: string; to: string };
  /** Queue fds per NIC, in NIC order. */
  fds: number[][];
  /** NIC i's queue fds for a (re)connecting VMM; after an adoption, reattaches the tap once free. */
  reattach(nic: number): Promise<number[]>;
  timings: Timings;
  adopted: boolean;
}

const CAP_NET_ADMIN = 12;
// The kernel's fixed inode numbers of the initial namespaces (PROC_*_INIT_INO).
const INIT_PID_NS = 0xeffffffc;
const INIT_NET_NS = 0xeffffff9; // fixed since Linux 6.x; older kernels number it dynamically

function nsInode(path: string): number | undefined {
  try {
    const m = /\[(\d+)\]$/.exec(readlinkSync(path));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * True when podtap runs in the machine's own network namespace rather than a
 * pod's: there it would take the host's network apart. Where podtap sees the
 * host's pid 1 (its pid namespace is the initial one), the check is exact;
 * newer kernels also give the initial network namespace a fixed number.
 */
export function inInitialNetns(): boolean {
  const net = nsInode('/proc/self/ns/net');
  if (net === INIT_NET_NS) return true;
  if (nsInode('/proc/self/ns/pid') !== INIT_PID_NS) return false;
  return net !== undefined && net === nsInode('/proc/1/ns/net');
}

/** Refusals that must happen before anything is changed. */
export function preflight(opts: Pick<Options, 'stateDir' | 'force'>): void {
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
  if (!opts.force && inInitialNetns())
    throw new PodtapError('environment', "podtap is running in the machine's own network namespace, not a pod's: it would take the host's network apart", 'run podtap inside the pod (the container\'s network namespace); if this namespace really is meant for the VM, add --force');
  openStateDir(opts.stateDir, true);
}

/** Sockets podtap creates or connects to: a typo or a bad path is refused before any change. */
export function checkSocketPaths(opts: Pick<Options, 'fdSocket' | 'qmp' | 'chApi'>): void {
  const paths: [string, string | undefined][] = [['--fd-socket', opts.fdSocket], ['--qmp', opts.qmp], ['--ch-api', opts.chApi]];
  for (const [flag, path] of paths) {
    if (!path) continue;
    // sun_path holds 107 bytes and a NUL.
    if (Buffer.byteLength(path) > 107) throw new PodtapError('usage', `${flag} ${path} is ${Buffer.byteLength(path)} bytes long; a Unix socket path holds at most 107`, 'use a shorter path');
    const dir = dirname(path);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) throw new PodtapError('usage', `${flag} ${path}: the directory ${dir} does not exist`, `create it first (in Kubernetes, mount a shared emptyDir there), or fix the path`);
    if (flag !== '--fd-socket') continue;
    // podtap creates the fd socket: whatever is at the path must be an old socket of its own to replace.
    try {
      const st = lstatSync(path);
      if (st.isSymbolicLink()) throw new PodtapError('usage', `--fd-socket ${path} is a symbolic link`, 'remove it; podtap creates the socket itself');
      if (!st.isSocket()) throw new PodtapError('usage', `--fd-socket ${path} exists and is not a socket`, 'remove it or choose another path; podtap creates the socket itself');
    } catch (e) {
      if (e instanceof PodtapError) throw e;
      // ENOENT: the usual case
    }
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
  /** Refusals that need the plan (placeholders naming NICs, one --qmp-bus per NIC): called before anything changes. */
  checkPlan?(attachments: Attachment[]): void;
}

/** The options that shape the plan; a restarted podtap adopts only a journal written with the same ones. */
export function planSettings(opts: Options): Settings {
  return {
    interfaces: opts.interfaces ?? null,
    bridge: opts.bridge,
    tap: opts.tap,
    queues: opts.queues,
    persistTap: opts.persistTap,
    antispoof: opts.antispoof,
    datapath: opts.datapath ?? null,
    forwardPorts: opts.forwardPorts,
  };
}

/** Splits NIC-ordered queue fds into one array per NIC. */
function perNic(fds: number[], nics: number, queues: number): number[][] {
  return Array.from({ length: nics }, (_, i) => fds.slice(i * queues, (i + 1) * queues));
}

export async function setUp(opts: Options, log: Logger, fault: Fault | undefined, hooks: SetupHooks): Promise<Session> {
  const t0 = performance.now();
  preflight(opts);
  checkSocketPaths(opts);
  const lock = await Lock.acquire(opts.stateDir, 'set up');
  try {
    // A dead podtap's ready file must not pass a readiness probe while this
    // one decides whether it can adopt.
    removeStateFile(join(opts.stateDir, 'ready'));
    const existing = Journal.load(opts.stateDir);
    if (existing && existing.state.phase !== 'ready')
      throw new PodtapError('conflict', `a journal from an earlier podtap run (pid ${existing.state.pid}, ${existing.state.createdAt}) that died during ${existing.state.phase} is in ${existing.path}`, 'run `podtap down` to restore the namespace first');
    if (existing) {
      const native = await loadNative();
      const adopted = await adopt(existing, planSettings(opts), { openTap: tapOpener(native, () => {}), log });
      const s = existing.state;
      return {
        journal: existing,
        lock,
        pod: s.pod,
        attachments: s.attachments,
        serverId: s.serverId,
        ...(s.forward ? { forward: s.forward } : {}),
        fds: adopted.fds,
        reattach: adopted.reattach,
        adopted: true,
        timings: { discovery: 0, plan: 0, apply: performance.now() - t0, tapOpen: 0, dhcpReady: 0, handoff: 0, total: performance.now() - t0 },
      };
    }

    const t1 = performance.now();
    // The native addon (for the TAP) loads and nft proves it can load what
    // podtap needs while `ip` reads the namespace. The probe starts only
    // now, once the options, the lock and the state dir have passed: its
    // check-mode tables are briefly visible to `nft list ruleset`, and a
    // refused command must leave no trace at all.
    const nativeP = loadNative();
    nativeP.catch(() => {});
    const probeP = probeNft();
    probeP.catch(() => {});
    const { pod, observed } = await discover(
      { ...(opts.interfaces ? { interfaces: opts.interfaces } : {}), ...(opts.force ? { force: true } : {}), resolvConf: opts.resolvConf, resolvConfRequired: opts.resolvConf !== '/etc/resolv.conf' },
      await takeObservation(),
    );
    const support = await probeP;
    const t2 = performance.now();
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
        ...(opts.datapath ? { datapath: opts.datapath } : {}),
        support,
        forwardPorts: opts.forwardPorts,
      },
      () => ({ serverMac: randomLaaMac(), portMac: randomLaaMac(), bridgeMac: randomLaaMac() }),
    );
    const t3 = performance.now();
    hooks.checkPlan?.(p.attachments);
    if (hooks.stopRequested()) throw new StoppedBeforeSetup();

    const native = await nativeP;
    let tapMs = 0;
    const journal = Journal.create(opts.stateDir, { settings: planSettings(opts), pod, attachments: p.attachments, serverId: p.serverId, ...(p.forward ? { forward: p.forward } : {}) });
    const openTap = tapOpener(native, (ms) => (tapMs += ms));
    const fds: number[] = [];
    try {
      await applyPlan(p.steps, journal, { openTap, log }, fds, fault);
      journal.setPhase('ready');
    } catch (e) {
      log('error', 'setup failed, restoring the namespace', { error: (e as Error).message });
      native.closeAllQuietly(fds);
      const report = await undoSteps(journal.state.steps, { log, effects: undoEffects });
      if (report.failures.length) {
        log('error', 'restore after the failed setup was incomplete; the journal is kept for `podtap down`', { failures: report.failures });
        throw e;
      }
      try {
        journal.remove();
      } catch (r) {
        log('warn', `could not remove the journal ${journal.path}: ${(r as Error).message}`);
      }
      throw e;
    }
    const t4 = performance.now();
    const byNic = perNic(fds, p.attachments.length, opts.persistTap ? 1 : opts.queues);
    return {
      journal,
      lock,
      pod,
      attachments: p.attachments,
      serverId: p.serverId,
      ...(p.forward ? { forward: p.forward } : {}),
      fds: byNic,
      reattach: async (nic) => byNic[nic] ?? [],
      adopted: false,
      timings: { discovery: t2 - t1, plan: t3 - t2, apply: t4 - t3 - tapMs, tapOpen: tapMs, dhcpReady: 0, handoff: 0, total: t4 - t0 },
    };
  } catch (e) {
    lock.release();
    throw e;
  }
}

/**
 * IPv6 addresses still running duplicate address detection, counted from
 * /proc/self/net/if_inet6 (IFA_F_TENTATIVE in the flags column) rather than
 * an `ip` process: teardown asks once at its end, just to report it, and a
 * process cost it 10-20 ms there. Undefined when /proc cannot tell; a
 * kernel without IPv6 has no such file, and no IPv6 address either.
 */
export function tentativeFromProc(text?: string): number | undefined {
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/net/if_inet6', 'utf8');
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 0 : undefined;
    }
  }
  let n = 0;
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 6 || !/^[0-9a-f]{32}$/.test(f[0]!)) continue;
    if ((parseInt(f[4]!, 16) & 0x40) !== 0) n++;
  }
  return n;
}

/** The kernel's effects, with duplicate address detection watched through /proc (`ip` where /proc cannot tell). */
const undoEffects: Effects = {
  ...kernel,
  async settle(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const n = tentativeFromProc();
      if (n === undefined) return kernel.settle(Math.max(0, deadline - Date.now()));
      if (n === 0 || Date.now() >= deadline) return n;
      await new Promise((r) => setTimeout(r, 50));
    }
  },
};

/** Restores the namespace from the journal; keeps the journal if anything could not be restored. */
export async function tearDown(journal: Journal, log: Logger, fault?: Fault): Promise<{ tentative: number }> {
  if (journal.state.phase !== 'teardown') {
    try {
      journal.setPhase('teardown');
    } catch (e) {
      // A read-only or full state dir must not stop the restore itself.
      log('warn', `could not record the teardown in ${journal.path}: ${(e as Error).message}`);
    }
  }
  const report = await undoSteps(journal.state.steps, { log, effects: undoEffects }, fault);
  if (report.failures.length)
    throw new PodtapError('teardown', `restoring the namespace was incomplete:\n  ${report.failures.join('\n  ')}`, `the journal ${journal.path} is kept: fix the cause and run \`podtap down\` again`);
  try {
    journal.remove();
  } catch (e) {
    // The namespace is restored; a journal left behind is replayed harmlessly.
    log('warn', `could not remove the journal ${journal.path}: ${(e as Error).message}`);
  }
  return { tentative: report.tentative };
}

/** Says the namespace is restored, and whether IPv6 duplicate address detection is still finishing. */
export function restoredMessage(r: { tentative: number }): string {
  return r.tentative ? `namespace restored; ${r.tentative} IPv6 address${r.tentative > 1 ? 'es are' : ' is'} finishing duplicate address detection (about a second)` : 'namespace restored';
}

/** `podtap down`: restore after a crash. Nothing to do is not an error. */
export async function down(opts: Pick<Options, 'stateDir'>, log: Logger, fault?: Fault): Promise<{ tentative: number } | 'nothing'> {
  openStateDir(opts.stateDir, false);
  try {
    lstatSync(opts.stateDir);
  } catch {
    return 'nothing';
  }
  const lock = await Lock.acquire(opts.stateDir, 'restore the namespace');
  try {
    const journal = Journal.load(opts.stateDir);
    if (!journal) return 'nothing';
    journal.own();
    const restored = await tearDown(journal, log, fault);
    // A podtap killed while up leaves its readiness file (a probe must not
    // see the VM's network as up once it has been taken down) and its status
    // socket.
    removeStateFile(join(opts.stateDir, 'ready'));
    removeStateFile(join(opts.stateDir, 'status.sock'));
    return restored;
  } finally {
    lock.release();
  }
}
