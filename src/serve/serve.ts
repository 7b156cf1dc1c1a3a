// Serving: what runs while the VM lives. Per NIC, the servers that hand the
// guest its identity, on that NIC's TAP; and the hand-over of every NIC's
// TAP fds to the VMM: inherited by a VMM podtap spawns, pushed into a
// running one, or served on a socket to another container.

import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { PodtapError } from '../errors.ts';
import { RateLimit, type Logger } from '../log.ts';
import type { Options } from '../options.ts';
import type { Session } from '../lifecycle.ts';
import type { Attachment } from '../plan/attachment.ts';
import { PlaceholderError, substituteArgv, usedPlaceholders, vmmFdNumbers, type PlaceholderInput } from '../handoff/placeholders.ts';
import type { FramePort } from './packet.ts';
import type { BpfInsn } from '../sys/native.ts';
import { ipv4 } from '../net/ipv4.ts';
import type { DhcpServer } from './dhcp4/server.ts';
import type { Ipv6Server } from './ipv6.ts';
import type { Forwarder } from './forward.ts';
import { join } from 'node:path';
import { VERSION } from '../version.ts';

export interface Serving {
  readyFields: Record<string, unknown>;
  spawnVmm(argv: string[]): ChildProcess;
  /** The `podtap status` document. */
  status(): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

function placeholderError(e: unknown): never {
  if (e instanceof PlaceholderError) throw new PodtapError('usage', e.message, 'fix the placeholder in the VMM arguments (see `podtap --help`)');
  throw e;
}

/** What each NIC's placeholders stand for, its fds numbered as the VMM sees them. */
export function placeholderInputFor(attachments: readonly Attachment[], fdNumbers: readonly (readonly number[])[]): PlaceholderInput {
  return {
    nics: attachments.map((a, i) => ({
      fds: fdNumbers[i] ?? [],
      mac: a.mac,
      mtu: a.mtu,
      tap: a.tap,
      interface: a.interface,
      ...(a.bridge ? { bridge: a.bridge } : {}),
    })),
  };
}

/** Unknown placeholder words are refused as soon as the command line is read. */
export function checkVmmWords(argv: string[]): void {
  try {
    usedPlaceholders(argv);
  } catch (e) {
    placeholderError(e);
  }
}

/** Every placeholder must have a value for the planned NICs: checked after planning, before anything changes. */
export function checkVmmArgv(argv: string[], attachments: readonly Attachment[], queues: number): void {
  try {
    substituteArgv(argv, placeholderInputFor(attachments, vmmFdNumbers(attachments.map(() => Array.from({ length: queues })))));
  } catch (e) {
    placeholderError(e);
  }
}

/** The device id podtap gives NIC i in the VMM (QEMU device and netdev, Cloud Hypervisor device). */
export function nicId(nic: number): string {
  return `podtap${nic}`;
}

/** VMM-side failures become handoff errors that say what podtap was doing. */
async function handoff<T>(doing: string, hint: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof PodtapError) throw e;
    throw new PodtapError('handoff', `${doing} failed: ${(e as Error).message}`, hint, e);
  }
}

/** Warnings about what a NIC's guest can't be given: a handful each, then a count. */
function warnAll(log: Logger, warnings: string[]): void {
  const shown = 10;
  for (const w of warnings.slice(0, shown)) log('warn', w);
  if (warnings.length > shown) log('warn', `${warnings.length - shown} more warnings like these`);
}

interface SharedPort {
  sub(): FramePort;
  /** The TAP was made again (a VMM left and took it with it): serve on the new one. */
  replace(port: FramePort): void;
  readonly ifindex: number | undefined;
  close(): void;
}

/** Lets several servers share one NIC's packet socket, which can be swapped under them. */
function share(first: FramePort): SharedPort {
  const handlers: ((f: Buffer) => void)[] = [];
  let port = first;
  const dispatch = (f: Buffer) => {
    for (const x of handlers) x(f);
  };
  let watching = false;
  return {
    sub() {
      return {
        name: port.name,
        send: (f) => port.send(f),
        onFrame: (h) => {
          handlers.push(h);
          if (!watching) {
            watching = true;
            port.onFrame(dispatch);
          }
        },
        close: () => {},
      };
    },
    replace(next) {
      port.close();
      port = next;
      if (watching) port.onFrame(dispatch);
    },
    get ifindex() {
      return port.ifindex;
    },
    close: () => port.close(),
  };
}

/** One NIC's description for the ready line, status and the fd socket. */
export function describeNic(a: Attachment, queues: number): Record<string, unknown> {
  return {
    nic: a.nic,
    interface: a.interface,
    kind: a.kind,
    datapath: a.datapath,
    mac: a.mac,
    ...(a.ipv4 ? { ip: `${a.ipv4.address}/${a.ipv4.prefixlen}` } : {}),
    ...(a.ipv4?.gateway ? { gateway: a.ipv4.gateway } : {}),
    ...(a.ipv6 ? { ipv6: a.ipv6.addresses, ...(a.ipv6.gateway ? { gateway6: a.ipv6.gateway } : {}), router6: a.ipv6.router } : {}),
    mtu: a.mtu,
    bridge: a.bridge ?? null,
    tap: a.tap,
    queues,
    defaultRoute: a.primary,
  };
}

export async function serve(session: Session, opts: Options, log: Logger): Promise<Serving> {
  const closers: (() => Promise<void> | void)[] = [];
  const readyFields: Record<string, unknown> = {};
  const close = async () => {
    // Before anything is unplugged or stopped: the guests' last router
    // advertisements, while the NICs still reach them.
    for (const s of ipv6.values()) s.withdraw();
    for (const c of closers.reverse()) {
      try {
        await c();
      } catch (e) {
        log('warn', `stopping a service failed: ${(e as Error).message}`);
      }
    }
  };
  const nics = session.attachments;
  const dhcp4 = new Map<number, DhcpServer>();
  const ports = new Map<number, { port: SharedPort; filter: BpfInsn[] }>();
  const ipv6 = new Map<number, Ipv6Server>();
  let forwarder: Forwarder | undefined;
  let child: ChildProcess | undefined;
  let fdServer: { served: number } | undefined;
  const handoffMode = opts.fdSocket ? 'fd-socket' : opts.qmp ? 'qmp' : opts.chApi ? 'cloud-hypervisor' : opts.persistTap ? 'persistent-tap' : 'run';
  try {
    const t0 = performance.now();
    if (opts.dhcp) {
      const { dhcpConfigFrom } = await import('./dhcp4/config.ts');
      const { startDhcpServer } = await import('./dhcp4/server.ts');
      const { startIpv6Server } = await import('./ipv6.ts');
      const { openDevicePort, serverFilter, ADVERT_FILTER } = await import('./packet.ts');
      const { linkLocalBinder } = await import('./savi.ts');
      const binder = linkLocalBinder(session.journal, log);
      const served: Record<string, unknown>[] = [];
      for (const a of nics) {
        const iface = session.pod.interfaces[a.nic]!;
        const nicLog: Logger = (level, msg, fields) => log(level, msg, { nic: a.nic, ...fields });
        const { config, warnings } = dhcpConfigFrom(iface, {
          serverId: session.serverId.split('/')[0]!,
          leaseSeconds: opts.leaseTime,
          primary: a.primary,
          dns: session.pod.dns,
          hostname: session.pod.hostname,
        });
        warnAll(nicLog, warnings);
        // An L2-only interface: nothing to hand out.
        if (!config && !a.ipv6) continue;
        const filter = serverFilter(config ? ipv4(config.serverId) : undefined);
        const port = share(await openDevicePort(a.tap, filter));
        ports.set(a.nic, { port, filter });
        closers.push(() => port.close());
        if (config) {
          const server = await startDhcpServer(config, { log: nicLog, port: port.sub(), serverMac: a.serverMac });
          closers.push(() => server.close());
          dhcp4.set(a.nic, server);
        }
        if (a.ipv6) {
          const server = await startIpv6Server(iface, a, session.pod.dns, {
            log: nicLog,
            port: port.sub(),
            podPort: () => openDevicePort(a.interface, ADVERT_FILTER),
            leaseSeconds: opts.leaseTime,
            onLinkLocalClaim: (address) => void binder.claim(a.nic, address),
          });
          closers.push(() => server.close());
          ipv6.set(a.nic, server);
        }
        served.push({ nic: a.nic, ...(config ? { serverId: config.serverId } : {}), ...(a.ipv6 ? { router6: a.ipv6.router } : {}), leaseTime: opts.leaseTime });
      }
      readyFields.dhcp = served;
    }
    const t1 = performance.now();
    session.timings.dhcpReady = t1 - t0;

    const queues = opts.persistTap ? 1 : opts.queues;
    const descriptions = nics.map((a) => describeNic(a, queues));
    if (opts.fdSocket) {
      const { serveFds } = await import('../handoff/fd-socket.ts');
      const limit = new RateLimit(6);
      const server = await handoff('serving the TAP fds on ' + opts.fdSocket, 'check that the socket directory is writable and no other server uses the path', () =>
        serveFds({
          path: opts.fdSocket!,
          mode: opts.fdSocketMode,
          fds: async () => {
            for (const a of nics) {
              if (session.fds[a.nic]?.length) continue;
              session.fds[a.nic] = await session.reattach(a.nic);
              // A TAP made again is another device: the NIC's servers move to it.
              const p = ports.get(a.nic);
              if (p && session.fds[a.nic]!.length && p.port.ifindex !== (await import('../sys/native.ts')).ifNameToIndex(a.tap)) {
                const { openDevicePort } = await import('./packet.ts');
                p.port.replace(await openDevicePort(a.tap, p.filter));
                log('info', 'serving the NIC\'s new TAP', { nic: a.nic, tap: a.tap });
              }
            }
            return session.fds;
          },
          nics: descriptions,
          // A client that connects and hangs up at once costs a line at most
          // a few times a minute, however often it does it.
          onError: (e) => {
            const s = limit.take((e as NodeJS.ErrnoException).code ?? e.message, Date.now());
            if (s >= 0) log('warn', `fd socket client: ${e.message}`, s > 0 ? { suppressed: s } : undefined);
          },
        }),
      );
      closers.push(() => server.close());
      fdServer = server;
      readyFields.fdSocket = opts.fdSocket;
    }
    if (opts.qmp) {
      const { QmpClient } = await import('../handoff/qmp.ts');
      const hint = 'check that QEMU runs with -qmp unix:PATH,server=on,wait=off in this container and that PATH is right';
      const qmp = await handoff(`connecting to QEMU's QMP socket ${opts.qmp}`, hint, () => QmpClient.connect(opts.qmp!, { timeoutMs: 10_000 }));
      closers.push(() => qmp.close());
      for (const a of nics) {
        const id = nicId(a.nic);
        const bus = opts.qmpBus?.[a.nic];
        // An adopted setup's NICs are already in QEMU.
        if (!session.adopted)
          await handoff(`hot-plugging NIC ${a.nic} (${a.interface}) into QEMU`, "see QEMU's error above; on q35 give each NIC a hot-pluggable bus with --qmp-bus", () =>
            qmp.hotplugNic({ fds: session.fds[a.nic]!, mac: a.mac, id, mtu: a.mtu, queues: session.fds[a.nic]!.length, ...(bus ? { bus } : {}) }),
          );
        // On teardown the guest lets go of each NIC before the network goes away.
        closers.push(async () => {
          try {
            await qmp.unplugNic(id, { timeoutMs: 15_000 });
            log('info', 'NIC unplugged from QEMU', { nic: a.nic, device: id });
          } catch (e) {
            log('warn', `unplugging NIC ${id} from QEMU failed (is QEMU gone?): ${(e as Error).message}`);
          }
        });
      }
      readyFields.qmp = { devices: nics.map((a) => nicId(a.nic)) };
    }
    if (opts.chApi) {
      const ch = await import('../handoff/cloud-hypervisor.ts');
      const devices: Record<string, unknown>[] = [];
      for (const a of nics) {
        const id = nicId(a.nic);
        const info = session.adopted
          ? undefined
          : await handoff(`adding NIC ${a.nic} (${a.interface}) to Cloud Hypervisor (vm.add-net)`, 'check that cloud-hypervisor runs with --api-socket PATH and the VM is booted', () =>
              ch.addNet({ apiSocket: opts.chApi!, fds: session.fds[a.nic]!, mac: a.mac, id, mtu: a.mtu }),
            );
        closers.push(async () => {
          try {
            await ch.removeDevice({ apiSocket: opts.chApi!, id });
            log('info', 'NIC removed from Cloud Hypervisor', { nic: a.nic, device: id });
          } catch (e) {
            log('warn', `vm.remove-device ${id} failed (is Cloud Hypervisor gone?): ${(e as Error).message}`);
          }
        });
        devices.push({ device: id, ...(info ? { bdf: info.bdf } : {}) });
      }
      readyFields.chApi = devices;
    }

    if (opts.persistTap) {
      // Firecracker opens the taps by name; podtap must not hold a queue.
      const { closeAllQuietly } = await import('../sys/native.ts');
      closeAllQuietly(session.fds.flat());
      session.fds = session.fds.map(() => []);
      readyFields.persistent = true;
    }
    if (session.forward && opts.forwardPorts.length) {
      const { startForwarding } = await import('./forward.ts');
      const f = await handoff('forwarding ports from the pod namespace', 'another process in the pod listens on that port on 127.0.0.1: stop it or leave the port out', () =>
        startForwarding({ ports: opts.forwardPorts, from: session.forward!.from, to: session.forward!.to }, log),
      );
      forwarder = f;
      closers.push(() => f.close());
      readyFields.forwardPorts = opts.forwardPorts.map((p) => `${p.port}/${p.proto}`);
    }

    const status = async (): Promise<Record<string, unknown>> => {
      const { guardCounters } = await import('./status.ts');
      const drops = await guardCounters([...new Set(nics.map((a) => (a.datapath === 'bridge' ? ('bridge' as const) : ('netdev' as const))))]);
      const held = session.fds.map((f) => f.length);
      const vmm = child ? { pid: child.pid, running: child.exitCode === null && child.signalCode === null } : undefined;
      return {
        time: Date.now(),
        podtap: { version: VERSION, pid: process.pid, adopted: session.adopted, readyAt, stateDir: opts.stateDir },
        handoff: {
          mode: handoffMode,
          fdsHeld: held,
          ...(vmm ? { vmm } : {}),
          ...(opts.fdSocket ? { fdSocket: opts.fdSocket, fetches: fdServer?.served ?? 0 } : {}),
          ...(opts.qmp ? { qmp: opts.qmp } : {}),
          ...(opts.chApi ? { chApi: opts.chApi } : {}),
          ...(opts.qmp || opts.chApi ? { devices: nics.map((a) => nicId(a.nic)) } : {}),
          ...(opts.persistTap ? { taps: nics.map((a) => a.tap) } : {}),
        },
        nics: nics.map((a) => {
          const d = dhcp4.get(a.nic)?.stats();
          const v6 = ipv6.get(a.nic)?.stats();
          return {
            ...describeNic(a, queues),
            ...(d ? { dhcp4: { ...d.lease, naks: d.naks, foreign: d.dropped['foreign-mac'] ?? 0, received: d.received } } : {}),
            ...(v6 ? { dhcp6: v6.dhcp6, ra: v6.ra } : {}),
            guardDrops: drops[a.nic] ?? {},
          };
        }),
        ...(forwarder ? { forward: forwarder.stats() } : {}),
      };
    };
    const readyAt = Date.now();
    const statusPath = opts.statusSocket ?? join(opts.stateDir, 'status.sock');
    try {
      const { serveStatus } = await import('./status.ts');
      const st = await serveStatus(statusPath, opts.statusSocket ? opts.fdSocketMode : 0o600, status, (e) => log('debug', `status socket: ${e.message}`));
      closers.push(() => st.close());
    } catch (e) {
      // Status is for people: podtap serves the VM without it.
      log('warn', `cannot answer \`podtap status\` on ${statusPath}: ${(e as Error).message}`);
    }

    const t2 = performance.now();
    session.timings.handoff = t2 - t1;
    session.timings.total += t2 - t0;
    return {
      readyFields,
      spawnVmm(argv) {
        let rendered: string[];
        try {
          rendered = substituteArgv(argv, placeholderInputFor(nics, vmmFdNumbers(session.fds)));
        } catch (e) {
          placeholderError(e);
        }
        log('info', 'starting the VMM', { argv: rendered.join(' ') });
        // stdio entries 3.. are dup2'd by libuv into the child, clearing
        // close-on-exec there only: no other child inherits the TAPs.
        child = spawn(rendered[0]!, rendered.slice(1), { stdio: ['inherit', 'inherit', 'inherit', ...session.fds.flat()] });
        return child;
      },
      status,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
