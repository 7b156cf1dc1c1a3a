// Serving: what runs while the VM lives. The DHCP server, and the hand-over
// of the TAP fds to the VMM: inherited by a VMM podtap spawns, or pushed into
// a running one, or served on a socket to another container.

import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { PodtapError } from './errors.ts';
import type { Logger } from './log.ts';
import type { Options } from './options.ts';
import type { Session } from './lifecycle.ts';
import { PlaceholderError, substituteArgv } from './handoff/placeholders.ts';

export interface Serving {
  readyFields: Record<string, unknown>;
  spawnVmm(argv: string[]): ChildProcess;
  close(): Promise<void>;
}

/** The VMM sees the queue fds at 3, 4, ... in queue order. */
export function renderVmmArgv(argv: string[], session: Session, opts: Pick<Options, 'tap' | 'bridge'>): string[] {
  try {
    return substituteArgv(argv, {
      fds: session.fds.map((_, i) => 3 + i),
      mac: session.vm.mac,
      mtu: session.vm.mtu,
      tap: opts.tap,
      bridge: opts.bridge,
    });
  } catch (e) {
    if (e instanceof PlaceholderError) throw new PodtapError('usage', e.message, 'fix the placeholder in the VMM arguments (see `podtap --help`)');
    throw e;
  }
}

export async function serve(session: Session, opts: Options, log: Logger): Promise<Serving> {
  const closers: (() => Promise<void> | void)[] = [];
  const readyFields: Record<string, unknown> = {};
  const close = async () => {
    for (const c of closers.reverse()) {
      try {
        await c();
      } catch (e) {
        log('warn', `stopping a service failed: ${(e as Error).message}`);
      }
    }
  };
  try {
    const t0 = performance.now();
    if (opts.dhcp) {
      const { dhcpConfigFrom } = await import('./dhcp/config.ts');
      const { startDhcpServer } = await import('./dhcp/server.ts');
      const { config, warnings } = dhcpConfigFrom(session.pod, { serverId: session.linkLocal.split('/')[0]!, leaseSeconds: opts.leaseTime });
      for (const w of warnings) log('warn', w);
      const server = await startDhcpServer(config, { log });
      closers.push(() => server.close());
      readyFields.dhcp = { serverId: config.serverId, leaseTime: config.leaseSeconds };
    }
    const t1 = performance.now();
    session.timings.dhcpReady = t1 - t0;

    if (opts.persistTap) {
      // Firecracker opens the tap by name; podtap must not hold a queue.
      const { closeAllQuietly } = await import('./sys/native.ts');
      closeAllQuietly(session.fds);
      session.fds = [];
      readyFields.persistent = true;
    }
    const t2 = performance.now();
    session.timings.handoff = t2 - t1;
    session.timings.total += t2 - t0;
    return {
      readyFields,
      spawnVmm(argv) {
        const rendered = renderVmmArgv(argv, session, opts);
        log('info', 'starting the VMM', { argv: rendered.join(' ') });
        // stdio entries 3.. are dup2'd by libuv into the child, clearing
        // close-on-exec there only: no other child inherits the TAP.
        return spawn(rendered[0]!, rendered.slice(1), { stdio: ['inherit', 'inherit', 'inherit', ...session.fds] });
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
