// A small QMP client, enough to hot-plug podtap's tap into a running QEMU:
// getfd (one fd per command, SCM_RIGHTS), netdev_add, device_add, and the
// reverse. Spec: QEMU's docs/interop/qmp-spec and the QAPI schema
// (qapi/misc.json getfd/closefd, qapi/net.json netdev_add,
// qapi/qdev.json device_add/device_del and the DEVICE_DELETED event).
//
// Every byte goes out through sendFds on the socket's fd (native.ts), never
// through socket.write, so commands with and without fds can't be reordered
// by Node's write queue. Replies and events come in through Node's normal
// reading; QEMU never sends us fds.

import type { Socket } from 'node:net';
import { connectRetrying } from './unix-connect.ts';
import { sendFds, socketFdOf } from '../sys/native.ts';

export class QmpError extends Error {
  readonly errorClass: string; // QEMU's class: GenericError, DeviceNotFound, ...
  readonly desc: string;
  readonly command: string;

  constructor(errorClass: string, desc: string, command: string, action: string, hint?: string) {
    super(`${action}: QEMU's ${command} failed: ${errorClass}: ${desc}${hint ? ` (${hint})` : ''}`);
    this.name = 'QmpError';
    this.errorClass = errorClass;
    this.desc = desc;
    this.command = command;
  }
}

// Connection problems, time-outs and protocol violations: QEMU said nothing
// usable, as opposed to QmpError where it said no.
export class QmpConnectionError extends Error {
  readonly code: string | undefined;

  constructor(message: string, code?: string) {
    super(message);
    this.name = 'QmpConnectionError';
    this.code = code;
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface ConnectOptions {
  // How long to keep retrying while the socket is missing or refusing
  // (QEMU still starting), and then to wait for the greeting.
  timeoutMs?: number;
}

export interface ExecuteOptions {
  fds?: readonly number[];
  timeoutMs?: number;
  // What podtap was doing, for the error message.
  action?: string;
}

export interface HotplugNicOptions {
  // Queue fds of one tap (one per queue pair), e.g. from openTap.
  fds: readonly number[];
  mac: string;
  // Id of the device; the netdev gets the same id unless netdevId is given
  // (QEMU keeps device and netdev ids in separate namespaces).
  id: string;
  netdevId?: string;
  mtu?: number; // advertised to the guest via virtio-net's host_mtu
  // Queue pairs; must equal fds.length (kept explicit so a mismatch is
  // caught here rather than by the guest).
  queues?: number;
  // A hot-pluggable bus. On q35 the root bus pcie.0 is not: start QEMU with
  // `-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1` and pass 'rp1'.
  // On i440fx ('pc') the root bus pci.0 accepts hot-plug and bus can be
  // left out.
  bus?: string;
  addr?: string;
  // Extra virtio-net-pci properties (typed JSON values), e.g. { romfile: '' }.
  deviceProps?: Record<string, unknown>;
}

export interface HotpluggedNic {
  id: string;
  netdevId: string;
  fdnames: string[];
}

const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
const ID_RE = /^[A-Za-z][A-Za-z0-9_.-]*$/;


type Waiter = {
  resolve: (msg: Record<string, unknown>) => void;
  reject: (err: Error) => void;
};

type EventListener = (ev: QmpEvent) => void;


function connectHint(code: string | undefined, path: string): string {
  switch (code) {
    case 'ENOENT':
      return `no socket at ${path}: is QEMU running with -qmp unix:${path},server=on,wait=off?`;
    case 'ECONNREFUSED':
      return `nothing listens on ${path}: QEMU exited or has not opened its QMP socket yet`;
    case 'EACCES':
    case 'EPERM':
      return `no permission to connect to ${path}`;
    default:
      return `cannot connect to ${path}`;
  }
}

export class QmpClient {
  readonly path: string;
  greeting: Record<string, unknown> | undefined;

  private sock: Socket;
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, Waiter>();
  private listeners = new Set<EventListener>();
  private closedErr: Error | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private greetingWaiter: Waiter | undefined;
  // fd names handed to QEMU by getfd and not yet consumed by a netdev.
  private heldFdnames = new Map<string, Set<string>>();

  private constructor(path: string, sock: Socket) {
    this.path = path;
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (err) => this.onClose(err));
    sock.on('close', () => this.onClose());
  }

  // Connects (retrying while the socket is absent or refusing, up to
  // timeoutMs, default 10 s), reads the greeting and leaves capability
  // negotiation mode.
  static async connect(path: string, opts: ConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const sock = await connectRetrying(
      path,
      deadline,
      (code, err, retried) => new QmpConnectionError(`QMP: ${connectHint(code, path)} (${code ?? String(err)}${retried ? `, retried for ${timeoutMs} ms` : ''})`, code),
    );
    const client = new QmpClient(path, sock);
    try {
      const left = Math.max(1000, deadline - Date.now());
      client.greeting = await client.waitGreeting(left);
      await client.execute('qmp_capabilities', {}, { action: 'QMP handshake' });
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  private waitGreeting(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(
          new QmpConnectionError(
            `QMP: connected to ${this.path} but no greeting within ${timeoutMs} ms ` +
              '(QEMU serves one client per QMP socket: is another client connected?)',
            'ETIMEDOUT',
          ),
        );
      }, timeoutMs);
      this.greetingWaiter = {
        resolve: (msg) => {
          clearTimeout(timer);
          resolve(msg);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.fatal(new QmpConnectionError(`QMP: unparsable message from ${this.path}: ${line.slice(0, 200)}`));
      return;
    }
    if ('QMP' in msg) {
      const w = this.greetingWaiter;
      this.greetingWaiter = undefined;
      w?.resolve(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      for (const l of [...this.listeners]) l(msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const waiter = id !== undefined ? this.pending.get(id) : undefined;
    if (id !== undefined && waiter) {
      this.pending.delete(id);
      waiter.resolve(msg);
    }
    // A reply without a known id (e.g. to a command that timed out) is dropped.
  }

  private fatal(err: Error): void {
    this.onClose(err);
    this.sock.destroy();
  }

  private onClose(err?: Error): void {
    if (this.closedErr) return;
    this.closedErr = new QmpConnectionError(
      `QMP connection to ${this.path} closed${err ? `: ${err.message}` : ' (QEMU exited or dropped the client)'}`,
      (err as NodeJS.ErrnoException | undefined)?.code,
    );
    for (const w of this.pending.values()) w.reject(this.closedErr);
    this.pending.clear();
    this.greetingWaiter?.reject(this.closedErr);
    this.greetingWaiter = undefined;
  }

  // Subscribes to asynchronous events; returns the unsubscribe function.
  onEvent(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // Resolves with the first matching event after this call, or rejects after
  // timeoutMs. Call it before the command that triggers the event.
  waitForEvent(name: string, match: (ev: QmpEvent) => boolean, timeoutMs: number): { promise: Promise<QmpEvent>; cancel: () => void } {
    let off = (): void => {};
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<QmpEvent>((resolve, reject) => {
      timer = setTimeout(() => {
        off();
        reject(new QmpConnectionError(`QMP: no ${name} event within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      off = this.onEvent((ev) => {
        if (ev.event === name && match(ev)) {
          off();
          clearTimeout(timer);
          resolve(ev);
        }
      });
    });
    // The caller may stop waiting early; don't leave an unhandled rejection.
    promise.catch(() => {});
    return {
      promise,
      cancel: () => {
        off();
        clearTimeout(timer);
      },
    };
  }

  // Runs one command and resolves with its `return` value. Commands are
  // serialized: QMP answers in order, and getfd must have its fd arrive with
  // its own bytes.
  execute(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<unknown> {
    const run = (): Promise<unknown> => this.executeNow(command, args, opts);
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  private executeNow(command: string, args: Record<string, unknown> | undefined, opts: ExecuteOptions): Promise<unknown> {
    const action = opts.action ?? `QMP ${command}`;
    if (this.closedErr) return Promise.reject(this.closedErr);
    const id = `podtap-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpConnectionError(`${action}: QEMU did not answer ${command} within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (msg) => {
          clearTimeout(timer);
          if ('error' in msg) {
            const e = (msg.error ?? {}) as { class?: string; desc?: string };
            const desc = e.desc ?? JSON.stringify(msg.error);
            reject(new QmpError(e.class ?? 'GenericError', desc, command, action, errorHint(command, desc)));
          } else {
            resolve(msg.return);
          }
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      const body: Record<string, unknown> = { execute: command, id };
      if (args && Object.keys(args).length > 0) body.arguments = args;
      try {
        sendFds(socketFdOf(this.sock), Buffer.from(`${JSON.stringify(body)}\n`), opts.fds ?? []);
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  // Hands the tap's queue fds to QEMU and plugs a virtio-net-pci NIC on
  // them. On failure, whatever was set up is taken down again.
  async hotplugNic(opts: HotplugNicOptions): Promise<HotpluggedNic> {
    const { fds, mac, id } = opts;
    const netdevId = opts.netdevId ?? id;
    const n = fds.length;
    if (!ID_RE.test(id) || !ID_RE.test(netdevId)) {
      throw new RangeError(`QMP ids must match ${ID_RE} (got ${JSON.stringify(id)} / ${JSON.stringify(netdevId)})`);
    }
    if (n < 1) throw new RangeError('hotplugNic needs at least one tap fd');
    if (opts.queues !== undefined && opts.queues !== n) {
      throw new RangeError(`hotplugNic: queues=${opts.queues} but ${n} fd(s) given (one fd per queue pair)`);
    }
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new RangeError(`hotplugNic: bad MAC ${JSON.stringify(mac)}`);
    const what = `hot-plugging NIC ${id} (${n} queue${n > 1 ? 's' : ''})`;

    // fd names may not start with a digit (QEMU would read them as fd
    // numbers); include the id so several NICs can be plugged at once.
    const fdnames = fds.map((_, i) => `podtap-${id}-q${i}`);
    const held = new Set<string>();
    this.heldFdnames.set(id, held);
    let netdevAdded = false;
    try {
      for (let i = 0; i < n; i++) {
        const fdname = fdnames[i]!;
        await this.execute('getfd', { fdname }, { fds: [fds[i]!], action: `${what}: passing queue fd ${i}` });
        held.add(fdname);
      }
      const netdev: Record<string, unknown> = { type: 'tap', id: netdevId, vhost: false };
      if (n === 1) netdev.fd = fdnames[0];
      else netdev.fds = fdnames.join(':');
      await this.execute('netdev_add', netdev, { action: `${what}: netdev_add` });
      netdevAdded = true;
      // netdev_add took the fds out of the monitor's table.
      held.clear();

      const device: Record<string, unknown> = { driver: 'virtio-net-pci', id, netdev: netdevId, mac };
      if (n > 1) {
        device.mq = true;
        device.vectors = 2 * n + 2;
      }
      if (opts.mtu !== undefined) device.host_mtu = opts.mtu;
      if (opts.bus !== undefined) device.bus = opts.bus;
      if (opts.addr !== undefined) device.addr = opts.addr;
      Object.assign(device, opts.deviceProps ?? {});
      await this.execute('device_add', device, { action: `${what}: device_add` });
    } catch (err) {
      if (netdevAdded) {
        await this.execute('netdev_del', { id: netdevId }, { action: `${what}: undo` }).catch(() => {});
      }
      await this.releaseFdnames(id);
      throw err;
    }
    this.heldFdnames.delete(id);
    return { id, netdevId, fdnames };
  }

  private async releaseFdnames(id: string): Promise<void> {
    const held = this.heldFdnames.get(id);
    if (!held) return;
    for (const fdname of [...held]) {
      // Not found means QEMU already consumed or dropped it; fine either way.
      await this.execute('closefd', { fdname }, { action: `releasing fd ${fdname}` }).catch(() => {});
      held.delete(fdname);
    }
    this.heldFdnames.delete(id);
  }

  // device_del, then wait (default 15 s) for QEMU's DEVICE_DELETED for that
  // device: PCI unplug completes only once the guest OS acknowledges it.
  // Then netdev_del (which closes QEMU's tap fds) and closefd for fd names
  // still held. A device or netdev that is already gone is not an error.
  async unplugNic(id: string, opts: { netdevId?: string; timeoutMs?: number } = {}): Promise<void> {
    const netdevId = opts.netdevId ?? id;
    const timeoutMs = opts.timeoutMs ?? 15_000;
    const what = `unplugging NIC ${id}`;
    const deleted = this.waitForEvent('DEVICE_DELETED', (ev) => ev.data?.device === id, timeoutMs);
    let present = true;
    try {
      await this.execute('device_del', { id }, { action: `${what}: device_del` });
    } catch (err) {
      // A retry after a time-out finds the unplug still pending: keep waiting.
      const pending = err instanceof QmpError && /already in the process of unplug/i.test(err.desc);
      if (!pending) {
        deleted.cancel();
        if (!(err instanceof QmpError && err.errorClass === 'DeviceNotFound')) throw err;
        present = false;
      }
    }
    if (present) {
      try {
        await deleted.promise;
      } catch {
        throw new QmpConnectionError(
          `${what}: QEMU did not report DEVICE_DELETED within ${timeoutMs} ms. PCI unplug needs the guest OS ` +
            'to acknowledge it (a paused VM, firmware or a guest without PCI hot-plug support never does). ' +
            `The netdev ${netdevId} was left in place; retry, or stop the VM.`,
          'ETIMEDOUT',
        );
      }
    }
    try {
      await this.execute('netdev_del', { id: netdevId }, { action: `${what}: netdev_del` });
    } catch (err) {
      const gone = err instanceof QmpError && (err.errorClass === 'DeviceNotFound' || /not found/i.test(err.desc));
      if (!gone) throw err;
    }
    await this.releaseFdnames(id);
  }

  close(): void {
    this.onClose();
    this.sock.destroy();
  }
}

function errorHint(command: string, desc: string): string | undefined {
  if (command === 'device_add' && /does not support hotplugging/i.test(desc)) {
    return 'on q35, start QEMU with a hot-pluggable port such as -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 and pass bus: "rp1"';
  }
  if (command === 'getfd' && /SCM_RIGHTS/.test(desc)) {
    return 'the fd did not arrive with the command';
  }
  if (command === 'netdev_add' && /Duplicate|already/i.test(desc)) {
    return 'a netdev with that id exists: pick another id or unplug the old NIC first';
  }
  return undefined;
}
