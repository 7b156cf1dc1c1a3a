// The VMM of a sidecar pod, run on the machine instead of in a container:
// `podtap exec` (this checkout's) fetches the TAP fds from the socket podtap
// serves in the pod's shared volume and becomes test/tools/tap-guest, whose
// "VM" is a network namespace of the test's own (test/helpers/guest-ns.ts
// tells the story of that stand-in). The guest is then a real kernel network
// stack where any tool runs (udhcpc, a server, pkt for forged frames) in
// milliseconds, while podtap itself runs in its container exactly as the
// manifest says.
//
//   podtap container (pod netns)                 the machine
//   eth0 ─ tap0 ══ fds over volume/fds.sock ══ podtap exec → tap-guest ══ eth0 (guest netns)
//
// tap-guest runs in the machine's namespace and only creates a TAP in the
// guest namespace; it exits when the pod's TAP goes (podtap's teardown).
// Its pid and the guest namespace are registered with the test's Cleanup.

import { execa, type ResultPromise } from 'execa';
import { join } from 'node:path';
import { createNetns, nsExec, processStartTime, setNetnsEtcFile, type Cleanup, type RunOptions, type RunResult } from '../helpers/netns.ts';
import { udhcpcOnce, writeUdhcpcScript } from '../helpers/guest-ns.ts';
import { PODTAP } from '../helpers/podtap.ts';
import { TAP_GUEST, buildTools } from '../tools/build.ts';

export interface HostGuest {
  ns: string;
  pid: number;
  proc: ResultPromise;
  stderr(): string;
  /** A command in the guest namespace, to completion. */
  run(argv: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** udhcpc in the guest, once: the address it configured, with the pod's routes. */
  dhcp(): Promise<string>;
}

/** Fetches the fds from `socket` (a path on the machine) and starts the guest namespace behind them. */
export async function startHostGuest(socket: string, dir: string, cleanup: Cleanup): Promise<HostGuest> {
  await buildTools();
  const ns = await createNetns({ prefix: 'ptg-', cleanup });
  await setNetnsEtcFile(ns, 'resolv.conf', '');
  const script = await writeUdhcpcScript(join(dir, `udhcpc-${ns}.sh`));
  const proc = execa(PODTAP, ['exec', '--fd-socket', socket, '--', TAP_GUEST, '--netns', ns, '--nic', 'fds={fds},ifname=eth0,mac={mac},mtu={mtu}'], { reject: false, stdin: 'ignore' });
  const pid = proc.pid!;
  const start = processStartTime(pid);
  cleanup.pid(pid);
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tap-guest not ready within 30 s:\n${err}`)), 30_000);
    const check = () => {
      if (/^ready$/m.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on('data', check);
    void proc.then((r) => {
      clearTimeout(timer);
      reject(new Error(`podtap exec / tap-guest exited (${r.exitCode ?? r.signal}) before it was ready:\n${err}`));
    });
  });
  // Still the process execa started: podtap exec became tap-guest.
  if (processStartTime(pid) !== start) throw new Error('tap-guest is not the process podtap exec was');
  const run = (argv: readonly string[], opts?: RunOptions) => nsExec(ns, ['unshare', '--uts', '--', ...argv], opts);
  return {
    ns,
    pid,
    proc,
    stderr: () => err,
    run,
    async dhcp() {
      const r = await run(udhcpcOnce(script), { timeoutMs: 30_000 });
      const m = /^bound (\S+)$/m.exec(r.stdout);
      if (!m) throw new Error(`udhcpc in the guest got no lease:\n${r.stdout}\n${r.stderr}`);
      return m[1]!;
    },
  };
}
