// tcpdump inside a test namespace: started, confirmed listening, stopped by
// pid. Lines are tcpdump's text (-e -nn: link-level header, no name lookups).

import { setTimeout as sleep } from 'node:timers/promises';
import { killPid, spawnInNs, type Cleanup } from './netns.ts';

export interface Capture {
  /** Stops tcpdump (SIGINT, so it flushes) and returns its lines. */
  stop(): Promise<string[]>;
}

export async function startCapture(ns: string, ifname: string, cleanup: Cleanup, filter: string[] = []): Promise<Capture> {
  const { proc, pid, start, unregister, stdout, stderr } = spawnInNs(ns, ['tcpdump', '-i', ifname, '-e', '-nn', '-l', '-p', ...filter], cleanup);
  let ended = false;
  void proc.then(() => (ended = true));
  const end = Date.now() + 10_000;
  while (!/listening on/.test(stderr())) {
    if (ended || Date.now() > end) {
      await killPid(pid, start);
      throw new Error(`tcpdump on ${ns}/${ifname} did not start:\n${stderr()}`);
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
      return stdout().split('\n').filter(Boolean);
    },
  };
}
