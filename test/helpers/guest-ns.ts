// A "VM" behind the real podtap in milliseconds: a guest network namespace
// whose kernel plays the VM's, wired to podtap's TAP by test/tools/tap-guest,
// which podtap spawns as its VMM:
//
//   node ns            pod ns                           guest ns
//   veth ─── eth0 ─ br0 ─ tap0 ══(queue fds)══ tap-guest ══ eth0 (the pod's MAC, MTU)
//
//   const pod = await makePod('ptp', { cleanup });
//   const g = await startGuestNs(pod, { cleanup });
//   await g.run(['busybox', 'udhcpc', '-i', 'eth0', ...]);
//   const { exitCode, stderr } = await g.stop();
//
// podtap runs exactly as in the other tests (startPodtap: podArgv inside the
// pod, its own state dir): `podtap run [podtapArgs] -- tap-guest --netns G
// --nic fds={fds},ifname=eth0,mac={mac},mtu={mtu}`. Pass `nics` for other
// placeholders or several NICs (one --nic each; one tap-guest process serves
// them all, as one VMM process serves all of a VM's NICs).
//
// Commands in the guest run under `ip netns exec G unshare --uts`, not a bare
// `nsenter --net`: ip netns exec also gives them the guest's own view of
// /sys/class/net (which some DHCP clients read) and bind-mounts
// /etc/netns/G/resolv.conf over /etc/resolv.conf, so a client script that
// writes the resolver configuration writes the guest's copy and never the
// machine's; the private UTS namespace does the same for a script that sets
// the hostname. /etc/netns/G/resolv.conf starts empty.
//
// The guest namespace, podtap's pid and its state dir are registered with
// the caller's Cleanup (and deleting the guest namespace kills tap-guest,
// which lives there once it has entered it), so a failing test leaves
// nothing behind. tap-guest inherits podtap's stdout and stderr, so
// `g.podtap.proc` settles only when both have exited: after a kill -9 of
// podtap, tap-guest (like any VMM) keeps the guest's network until its tap
// goes (`podtap down`) or the guest namespace is deleted.
//
// For attack tests: pktSend() builds a `pkt send` argv for g.run(), and
// startRecv() runs `pkt recv` in any namespace (the node's, the pod's) and
// hands back the frames it saw, as hex.

import type { ResultPromise } from 'execa';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  NETNS_ETC_DIR,
  createNetns,
  deleteNetns,
  killPid,
  nsExec,
  processStartTime,
  setNetnsEtcFile,
  spawnInNs,
  type Cleanup,
  type RunOptions,
  type RunResult,
} from './netns.ts';
import type { Pod } from './pods.ts';
import { startPodtap, type ReadyLine, type Running } from './podtap.ts';
import { PKT, TAP_GUEST, buildTools } from '../tools/build.ts';

export { PKT, TAP_GUEST, buildTools };

/** One NIC of the guest: values may be podtap placeholders ({fds}, {mac}, {mtu}, ...). */
export interface GuestNic {
  /** Colon-separated queue fds, e.g. '{fds}'. */
  fds: string;
  /** Link name in the guest; tap-guest's default is eth<position>. */
  ifname?: string;
  mac?: string;
  mtu?: string | number;
}

/** What a one-NIC VM gets: all of podtap's queues, the pod's MAC and MTU. */
export const DEFAULT_NICS: readonly GuestNic[] = [{ fds: '{fds}', ifname: 'eth0', mac: '{mac}', mtu: '{mtu}' }];

/** The `--nic` value tap-guest takes for one NIC. */
export function nicSpec(nic: GuestNic): string {
  const parts = [`fds=${nic.fds}`];
  if (nic.ifname !== undefined) parts.push(`ifname=${nic.ifname}`);
  if (nic.mac !== undefined) parts.push(`mac=${nic.mac}`);
  if (nic.mtu !== undefined) parts.push(`mtu=${nic.mtu}`);
  return parts.join(',');
}

export interface GuestNsOptions {
  cleanup: Cleanup;
  /** podtap run's options (before `--`), e.g. ['--queues', '2'] or ['--no-antispoof']. */
  podtapArgs?: string[];
  /** Default DEFAULT_NICS. */
  nics?: readonly GuestNic[];
  /** Extra environment for podtap (and so for tap-guest). */
  env?: Record<string, string>;
  /** For podtap's ready line and then tap-guest's; default 30 s. */
  timeoutMs?: number;
}

export interface StopResult {
  /** podtap's exit status (128+N if a signal ended it). */
  exitCode: number;
  stdout: string;
  /** podtap's log, with tap-guest's lines (its stderr is podtap's) in between. */
  stderr: string;
}

export interface GuestNs {
  /** podtap's ready line. */
  ready: ReadyLine;
  /** The guest namespace's name (/run/netns/<ns>). */
  ns: string;
  /** The podtap process (startPodtap's handle: pid, state dir, output so far). */
  podtap: Running;
  /** Runs a command in the guest namespace to completion (throws on failure unless reject: false). */
  run(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** argv that runs `argv` in the guest namespace, for callers that spawn it themselves. */
  argv(argv: readonly string[]): string[];
  /** SIGTERM to podtap, which forwards it to tap-guest and then restores the pod; waits for podtap to exit. */
  stop(): Promise<StopResult>;
}

/** argv that runs `argv` in namespace `ns` the way the guest's commands run. */
export function guestArgv(ns: string, argv: readonly string[]): string[] {
  return ['ip', 'netns', 'exec', ns, 'unshare', '--uts', '--', ...argv];
}

/** Resolves when `test` holds for the subprocess's stdout so far; rejects on exit or timeout. */
function waitForStdout(proc: ResultPromise, test: (out: string) => boolean, ms: number, what: string, log: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const done = (err?: Error): void => {
      clearTimeout(timer);
      proc.stdout?.off('data', onData);
      if (err) reject(err);
      else resolve();
    };
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (test(out)) done();
    };
    const timer = setTimeout(() => done(new Error(`no ${what} within ${ms} ms; stdout:\n${out}\nstderr:\n${log()}`)), ms);
    proc.stdout?.on('data', onData);
    if (test(out)) done();
    void proc.then((r) => done(new Error(`exited (${r.exitCode ?? r.signal}) before ${what}; stdout:\n${out}\nstderr:\n${log()}`)));
  });
}

/** Starts podtap in the pod with tap-guest as its VMM, and waits until both are ready. */
export async function startGuestNs(pod: Pod, opts: GuestNsOptions): Promise<GuestNs> {
  const { cleanup } = opts;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  await buildTools();
  const ns = await createNetns({ prefix: 'ptg-', cleanup });
  await setNetnsEtcFile(ns, 'resolv.conf', '');
  const nics = opts.nics ?? DEFAULT_NICS;
  const vmm = [TAP_GUEST, '--netns', ns, ...nics.flatMap((n) => ['--nic', nicSpec(n)])];
  const podtap = startPodtap(pod, ['run', ...(opts.podtapArgs ?? []), '--', ...vmm], cleanup, opts.env ?? {});
  const start = processStartTime(podtap.pid);

  let stopping: Promise<StopResult> | undefined;
  const stop = (): Promise<StopResult> =>
    (stopping ??= (async () => {
      try {
        process.kill(podtap.pid, 'SIGTERM');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      }
      // podtap waits for tap-guest, then tears down (IPv6 DAD can take a
      // couple of seconds); the promise also needs tap-guest's end of the
      // stdout pipe closed.
      const r = await Promise.race([podtap.proc, sleep(30_000, undefined, { ref: false })]);
      if (!r) {
        await killPid(podtap.pid, start);
        throw new Error(`podtap did not exit within 30 s of SIGTERM:\n${podtap.stderr()}`);
      }
      return { exitCode: r.exitCode ?? -1, stdout: podtap.stdout(), stderr: podtap.stderr() };
    })());

  try {
    const deadline = Date.now() + timeoutMs;
    const ready = await Promise.race([
      podtap.ready,
      sleep(timeoutMs, undefined, { ref: false }).then(() => {
        throw new Error(`podtap was not ready within ${timeoutMs} ms:\n${podtap.stderr()}`);
      }),
    ]);
    // The VMM's stdout is podtap's: its "ready" follows podtap's JSON line.
    await waitForStdout(podtap.proc, () => /^ready$/m.test(podtap.stdout()), Math.max(1, deadline - Date.now()), "tap-guest's ready", podtap.stderr);
    return {
      ready,
      ns,
      podtap,
      run: (argv, runOpts) => nsExec(ns, ['unshare', '--uts', '--', ...argv], runOpts),
      argv: (argv) => guestArgv(ns, argv),
      stop,
    };
  } catch (e) {
    // Don't keep a half-started pair around until the end of the file.
    await killPid(podtap.pid, start, 10_000).catch(() => {});
    await deleteNetns(ns).catch(() => {});
    throw e;
  }
}

export interface Recv {
  /** Frames so far, as lowercase hex, one per frame. */
  frames(): string[];
  /** Resolves with every frame once pkt recv has ended (count reached, timeout, or stop()). */
  done: Promise<string[]>;
  /** Ends pkt recv (SIGTERM) and resolves with every frame it printed. */
  stop(): Promise<string[]>;
}

export interface RecvOptions {
  ifname: string;
  /** HEX or HEX@OFFSET; a frame must contain all of them. */
  match?: string[];
  /** Stop after this many frames. */
  count?: number;
  /** Stop after this long; default 30 s so a forgotten receiver ends by itself. */
  timeoutMs?: number;
}

/**
 * Starts `pkt recv` in namespace `ns` (the node's, a guest's...) and resolves
 * once it is listening. Its pid is registered with `cleanup`.
 */
export async function startRecv(ns: string, cleanup: Cleanup, opts: RecvOptions): Promise<Recv> {
  await buildTools();
  const args = ['recv', '--ifname', opts.ifname, '--timeout-ms', String(opts.timeoutMs ?? 30_000)];
  for (const m of opts.match ?? []) args.push('--match', m);
  if (opts.count !== undefined) args.push('--count', String(opts.count));
  const { proc, pid, start, unregister, stdout, stderr } = spawnInNs(ns, [PKT, ...args], cleanup);
  const frames = (): string[] => stdout().split('\n').filter((l) => /^[0-9a-f]+$/.test(l));
  const done = proc.then((r) => {
    unregister();
    if (r.exitCode !== 0 || !/^done \d+$/m.test(stdout())) throw new Error(`pkt recv on ${ns}/${opts.ifname} failed (${r.exitCode ?? r.signal}):\n${stderr()}${stdout()}`);
    return frames();
  });
  done.catch(() => {});
  try {
    await waitForStdout(proc, () => /^listening$/m.test(stdout()), 10_000, 'listening', stderr);
  } catch (e) {
    await killPid(pid, start);
    throw e;
  }
  return {
    frames,
    done,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
      return done;
    },
  };
}

/** `pkt send` in namespace `ns` (argv for run-style helpers: `g.run(pktSend(...))`). */
export function pktSend(ifname: string, hex: string, opts: { count?: number; intervalUs?: number } = {}): string[] {
  return [
    PKT, 'send', '--ifname', ifname, '--hex', hex,
    ...(opts.count !== undefined ? ['--count', String(opts.count)] : []),
    ...(opts.intervalUs !== undefined ? ['--interval-us', String(opts.intervalUs)] : []),
  ];
}

/** Where the guest's /etc/resolv.conf lives on the machine. */
export function guestResolvConf(ns: string): string {
  return join(NETNS_ETC_DIR, ns, 'resolv.conf');
}

/**
 * What a udhcpc script does with a lease's routes (udhcpc leaves all
 * configuring to its script): the classless routes in the order given
 * (on-link ones come first), or, when the server sent no option 121, a
 * default route via each router.
 */
export const UDHCPC_ROUTES = `if [ -n "$staticroutes" ]; then
  set -- $staticroutes
  while [ $# -ge 2 ]; do
    if [ "$2" = 0.0.0.0 ]; then ip route replace "$1" dev "$interface" scope link
    else ip route replace "$1" via "$2" dev "$interface"; fi
    shift 2
  done
else
  for gw in $router; do ip route replace default via "$gw" dev "$interface"; done
fi`;

/** A udhcpc script that configures the address, then the routes, and prints "bound ADDRESS/MASK". */
const UDHCPC_SCRIPT = `#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr replace "$ip/$mask" dev "$interface"
${UDHCPC_ROUTES}
echo "bound $ip/$mask"
`;

/** Writes the udhcpc script (executable) to `path`, for udhcpcOnce(). */
export async function writeUdhcpcScript(path: string): Promise<string> {
  await writeFile(path, UDHCPC_SCRIPT, { mode: 0o755 });
  return path;
}

/** argv of one udhcpc run on the guest's eth0 with `script` (writeUdhcpcScript()): a lease, or failure after five tries a second apart. */
export function udhcpcOnce(script: string): string[] {
  return ['busybox', 'udhcpc', '-f', '-q', '-n', '-t', '5', '-T', '1', '-i', 'eth0', '-s', script, '-O', 'staticroutes'];
}
