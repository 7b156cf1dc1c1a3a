// Serving: what runs while the VM lives. The DHCP server, and the hand-over
// of the TAP fds to the VMM: inherited by a VMM podtap spawns, or pushed into
// a running one, or served on a socket to another container.

import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { PodtapError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Options } from '../options.ts';
import type { Session } from '../lifecycle.ts';
import { PlaceholderError, substituteArgv } from '../handoff/placeholders.ts';

export interface Serving {
  readyFields: Record<string, unknown>;
  spawnVmm(argv: string[]): ChildProcess;
  close(): Promise<void>;
}

function substitute(argv: string[], input: Parameters<typeof substituteArgv>[1]): string[] {
  try {
    return substituteArgv(argv, input);
  } catch (e) {
    if (e instanceof PlaceholderError) throw new PodtapError('usage', e.message, 'fix the placeholder in the VMM arguments (see `podtap --help`)');
    throw e;
  }
}

/** The VMM sees the queue fds at 3, 4, ... in queue order. */
export function renderVmmArgv(argv: string[], session: Session, opts: Pick<Options, 'tap' | 'bridge'>): string[] {
  return substitute(argv, { fds: session.fds.map((_, i) => 3 + i), mac: session.vm.mac, mtu: session.vm.mtu, tap: opts.tap, bridge: opts.bridge });
}

/** Refuses unknown placeholders before setup, with stand-in values of the right shape. */
export function checkVmmArgv(argv: string[], opts: Pick<Options, 'tap' | 'bridge' | 'queues'>): void {
  substitute(argv, { fds: Array.from({ length: opts.queues }, (_, i) => 3 + i), mac: '02:00:00:00:00:00', mtu: 1500, tap: opts.tap, bridge: opts.bridge });
}

/** The device id podtap gives its NIC in the VMM. */
export const NIC_ID = 'podtap0';

/** VMM-side failures become handoff errors that say what podtap was doing. */
async function handoff<T>(doing: string, hint: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof PodtapError) throw e;
    throw new PodtapError('handoff', `${doing} failed: ${(e as Error).message}`, hint, e);
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
      const { dhcpConfigFrom } = await import('./dhcp4/config.ts');
      const { startDhcpServer } = await import('./dhcp4/server.ts');
      const { config, warnings } = dhcpConfigFrom(session.pod, { serverId: session.linkLocal.split('/')[0]!, leaseSeconds: opts.leaseTime });
      for (const w of warnings) log('warn', w);
      const server = await startDhcpServer(config, { log });
      closers.push(() => server.close());
      readyFields.dhcp = { serverId: config.serverId, leaseTime: config.leaseSeconds };
    }
    const t1 = performance.now();
    session.timings.dhcpReady = t1 - t0;

    const description = {
      mac: session.vm.mac,
      mtu: session.vm.mtu,
      queues: opts.queues,
      tap: opts.tap,
      bridge: opts.bridge,
      ip: session.vm.ip,
      ...(session.vm.gateway ? { gateway: session.vm.gateway } : {}),
    };
    if (opts.fdSocket) {
      const { serveFds } = await import('../handoff/fd-socket.ts');
      const server = await handoff('serving the TAP fds on ' + opts.fdSocket, 'check that the socket directory is writable and no other server uses the path', () =>
        serveFds({
          path: opts.fdSocket!,
          mode: opts.fdSocketMode,
          fds: async () => {
            if (!session.fds.length) session.fds = await session.reattach();
            return session.fds;
          },
          description, onError: (e) => log('warn', `fd socket client: ${e.message}`) }),
      );
      closers.push(() => server.close());
      readyFields.fdSocket = opts.fdSocket;
    }
    if (opts.qmp) {
      const { QmpClient } = await import('../handoff/qmp.ts');
      const hint = 'check that QEMU runs with -qmp unix:PATH,server=on,wait=off in this container and that PATH is right';
      const qmp = await handoff(`connecting to QEMU's QMP socket ${opts.qmp}`, hint, () => QmpClient.connect(opts.qmp!, { timeoutMs: 10_000 }));
      closers.push(() => qmp.close());
      // An adopted setup's NIC is already in QEMU.
      if (!session.adopted) await handoff('hot-plugging the NIC into QEMU', 'see QEMU\'s error above; on q35 give a hot-pluggable bus with --qmp-bus', () =>
        qmp.hotplugNic({ fds: session.fds, mac: session.vm.mac, id: NIC_ID, mtu: session.vm.mtu, queues: opts.queues, ...(opts.qmpBus ? { bus: opts.qmpBus } : {}) }),
      );
      // On teardown the guest lets go of the NIC before the network goes away.
      closers.push(async () => {
        try {
          await qmp.unplugNic(NIC_ID, { timeoutMs: 15_000 });
          log('info', 'NIC unplugged from QEMU');
        } catch (e) {
          log('warn', `unplugging the NIC from QEMU failed (is QEMU gone?): ${(e as Error).message}`);
        }
      });
      readyFields.qmp = { device: NIC_ID };
    }
    if (opts.chApi) {
      const ch = await import('../handoff/cloud-hypervisor.ts');
      const info = session.adopted ? undefined : await handoff('adding the NIC to Cloud Hypervisor (vm.add-net)', 'check that cloud-hypervisor runs with --api-socket PATH and the VM is booted', () =>
        ch.addNet({ apiSocket: opts.chApi!, fds: session.fds, mac: session.vm.mac, id: NIC_ID, mtu: session.vm.mtu }),
      );
      closers.push(async () => {
        try {
          await ch.removeDevice({ apiSocket: opts.chApi!, id: NIC_ID });
          log('info', 'NIC removed from Cloud Hypervisor');
        } catch (e) {
          log('warn', `vm.remove-device failed (is Cloud Hypervisor gone?): ${(e as Error).message}`);
        }
      });
      readyFields.chApi = { device: NIC_ID, ...(info ? { bdf: info.bdf } : {}) };
    }

    if (opts.persistTap) {
      // Firecracker opens the tap by name; podtap must not hold a queue.
      const { closeAllQuietly } = await import('../sys/native.ts');
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
