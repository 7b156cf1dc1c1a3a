// tcpdump inside a test namespace: started, confirmed listening, stopped by
// pid. Lines are tcpdump's text (-e -nn: link-level header, no name lookups).

import { execa } from 'execa';
import { setTimeout as sleep } from 'node:timers/promises';
import { HELPER_MARK, killPid, processStartTime, type Cleanup } from './netns.ts';

export interface Capture {
  /** Stops tcpdump (SIGINT, so it flushes) and returns its lines. */
  stop(): Promise<string[]>;
}

export async function startCapture(ns: string, ifname: string, cleanup: Cleanup, filter: string[] = []): Promise<Capture> {
  const proc = execa('ip', ['netns', 'exec', ns, 'tcpdump', '-i', ifname, '-e', '-nn', '-l', '-p', ...filter], {
    reject: false,
    stdin: 'ignore',
    env: { [HELPER_MARK]: '1' },
  });
  const pid = proc.pid!;
  const start = processStartTime(pid);
  const unregister = cleanup.pid(pid);
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  let ended = false;
  void proc.then(() => (ended = true));
  const end = Date.now() + 10_000;
  while (!/listening on/.test(err)) {
    if (ended || Date.now() > end) {
      await killPid(pid, start);
      throw new Error(`tcpdump on ${ns}/${ifname} did not start:\n${err}`);
    }
    await sleep(20);
  }
  return {
    async stop() {
      // Let frames in flight reach tcpdump's buffer before it stops.
      await sleep(200);
      try {
        process.kill(pid, 'SIGINT');
      } catch {
        // already gone
      }
      const r = await Promise.race([proc, sleep(5000).then(() => undefined)]);
      if (!r) await killPid(pid, start);
      unregister();
      return out.split('\n').filter(Boolean);
    },
  };
}
