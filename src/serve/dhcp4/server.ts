// The sockets around the pure handler. Node's dgram has neither
// SO_BINDTODEVICE nor IP_PKTINFO, so the interface is chosen by addresses:
//
// - 0.0.0.0:67 receives the guest's broadcasts. The kernel delivers a
//   limited broadcast only to sockets bound to the wildcard, so this one
//   sees every broadcast and the other sees none.
// - serverId:67 receives unicast (RENEWING clients; UDP lookup prefers the
//   more specific bind) and sends every reply. Bound to br0's address, its
//   broadcasts leave through br0 (the kernel picks the device that owns the
//   source of a limited broadcast) even in a namespace without a default
//   route, where a wildcard socket gets ENETUNREACH.
//
// Nothing here may throw into the event loop: the handler is wrapped, every
// failure is counted and logged under a rate limit, and the only state that
// grows with input (foreign MACs seen) is capped. Lines the guest can cause
// once per packet (binds, NAKs, releases, declines) are rate-limited too;
// only debug lines are not.

import dgram from 'node:dgram';
import type { DhcpConfig } from './config.ts';
import { CLIENT_PORT, SERVER_PORT, buildPlan, handleDatagram } from './handler.ts';
import type { Outcome, RequestKind } from './handler.ts';
import { Lease } from './lease.ts';
import type { LeaseSnapshot } from './lease.ts';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFn = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

export interface DhcpServerOptions {
  log: LogFn;
  now?: () => number; // ms; tests move time
}

export interface DhcpStats {
  received: number;
  receivedUnicast: number;
  replied: { OFFER: number; ACK: number; NAK: number };
  acks: Record<Exclude<RequestKind, 'discover'>, number>;
  naks: number;
  dropped: Record<string, number>;
  events: { release: number; decline: number; ignored: number };
  errors: { handler: number; send: number; socket: number };
  lease: LeaseSnapshot;
}

export interface DhcpServer {
  close(): Promise<void>;
  stats(): DhcpStats;
}

/** Foreign MACs remembered so each is logged once; beyond this the oldest is forgotten. */
export const FOREIGN_MAC_MEMORY = 1024;
const FOREIGN_LOGS_PER_MINUTE = 10;
const OTHER_LOGS_PER_MINUTE = 6; // per drop reason / error kind
/** Replies handed to the kernel and not yet confirmed sent. */
const MAX_INFLIGHT = 64;

/** A token bucket per key, keys from a small fixed set (reasons). */
export class RateLimit {
  private readonly perMinute: number;
  private readonly buckets = new Map<string, { tokens: number; at: number; suppressed: number }>();
  constructor(perMinute: number) {
    this.perMinute = perMinute;
  }
  /** Returns -1 if suppressed, else how many were suppressed since the last allowed one. */
  take(key: string, now: number): number {
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= 256) this.buckets.clear();
      b = { tokens: this.perMinute, at: now, suppressed: 0 };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.perMinute, b.tokens + ((now - b.at) * this.perMinute) / 60_000);
    b.at = now;
    if (b.tokens < 1) {
      b.suppressed++;
      return -1;
    }
    b.tokens -= 1;
    const s = b.suppressed;
    b.suppressed = 0;
    return s;
  }
}

/** Insertion-ordered set with a cap: the oldest entry goes first. */
export class BoundedSet {
  private readonly cap: number;
  private readonly items = new Set<string>();
  constructor(cap: number) {
    this.cap = cap;
  }
  /** True if newly added. */
  add(key: string): boolean {
    if (this.items.has(key)) return false;
    if (this.items.size >= this.cap) {
      const oldest = this.items.values().next();
      if (!oldest.done) this.items.delete(oldest.value);
    }
    this.items.add(key);
    return true;
  }
  get size(): number {
    return this.items.size;
  }
}

function bindSocket(sock: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    sock.once('error', onError);
    sock.bind({ port, address }, () => {
      sock.off('error', onError);
      resolve();
    });
  });
}

function closeSocket(sock: dgram.Socket): Promise<void> {
  return new Promise((resolve) => {
    try {
      sock.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
}

export async function startDhcpServer(config: DhcpConfig, opts: DhcpServerOptions): Promise<DhcpServer> {
  const log = opts.log;
  const now = opts.now ?? Date.now;
  const { plan, warnings } = buildPlan(config);
  for (const w of warnings) log('warn', `dhcp: ${w}`);

  const lease = new Lease();
  const stats: Omit<DhcpStats, 'lease'> = {
    received: 0,
    receivedUnicast: 0,
    replied: { OFFER: 0, ACK: 0, NAK: 0 },
    acks: { selecting: 0, 'init-reboot': 0, renewing: 0, rebinding: 0, inform: 0 },
    naks: 0,
    dropped: {},
    events: { release: 0, decline: 0, ignored: 0 },
    errors: { handler: 0, send: 0, socket: 0 },
  };
  const limit = new RateLimit(OTHER_LOGS_PER_MINUTE);
  const foreignLimit = new RateLimit(FOREIGN_LOGS_PER_MINUTE);
  const foreignSeen = new BoundedSet(FOREIGN_MAC_MEMORY);
  let inflight = 0;
  let closed = false;

  const limited = (key: string, level: LogLevel, msg: string, fields: Record<string, unknown>) => {
    const s = limit.take(key, now());
    if (s < 0) return;
    log(level, msg, s > 0 ? { ...fields, suppressed: s } : fields);
  };
  const drop = (reason: string) => {
    stats.dropped[reason] = (stats.dropped[reason] ?? 0) + 1;
  };

  const broadcastSock = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  const serverSock = dgram.createSocket({ type: 'udp4', reuseAddr: true });

  const send = (out: Extract<Outcome, { kind: 'reply' }>) => {
    if (inflight >= MAX_INFLIGHT) {
      drop('send-backlog');
      limited('send-backlog', 'warn', 'dhcp: reply dropped, too many replies in flight', { mac: out.mac });
      return;
    }
    inflight++;
    serverSock.send(out.data, CLIENT_PORT, out.to, (err) => {
      inflight--;
      if (err) {
        stats.errors.send++;
        limited('send-error', 'error', `dhcp: sending ${out.type} to ${out.to} failed: ${err.message}`, { mac: out.mac });
        return;
      }
      stats.replied[out.type]++;
      if (out.type === 'NAK') stats.naks++;
      else if (out.type === 'ACK' && out.request !== 'discover') stats.acks[out.request]++;
    });
  };

  const report = (out: Outcome) => {
    switch (out.kind) {
      case 'reply': {
        const fields: Record<string, unknown> = { mac: out.mac, xid: out.xid.toString(16), to: out.to, state: out.request };
        if (out.trimmed) {
          fields.trimmed = out.trimmed;
          limited('trimmed', 'warn', 'dhcp: options left out to fit the client\'s maximum message size', fields);
        }
        // The guest decides how often these happen: rate-limited like the
        // drops, so a guest looping on REQUEST cannot flood the pod's log.
        if (out.type === 'NAK') limited('nak', 'warn', `dhcp: NAK: ${out.why ?? ''}`, fields);
        else if (out.type === 'ACK' && (out.request === 'selecting' || out.request === 'init-reboot')) limited('bound', 'info', `dhcp: lease bound (${out.request})`, fields);
        else log('debug', `dhcp: ${out.type} (${out.request})`, fields);
        send(out);
        return;
      }
      case 'event':
        stats.events[out.event]++;
        if (out.event === 'release') limited('release', 'info', 'dhcp: guest released its lease', { mac: out.mac, address: out.detail });
        else if (out.event === 'decline') {
          limited('decline', 'error', 'dhcp: guest declined the address: it saw it in use by another host on the pod network', { mac: out.mac, address: out.detail });
        } else log('debug', `dhcp: ignored: ${out.detail}`, { mac: out.mac });
        return;
      case 'drop':
        drop(out.reason);
        if (out.reason === 'foreign-mac') {
          if (out.mac !== undefined && foreignSeen.add(out.mac)) {
            const s = foreignLimit.take('foreign', now());
            if (s >= 0) {
              log('info', 'dhcp: not answering a MAC that is not the VM\'s', s > 0 ? { mac: out.mac, suppressed: s } : { mac: out.mac });
            }
          }
          return;
        }
        limited(out.reason, 'warn', `dhcp: dropped: ${out.reason}`, { ...(out.mac ? { mac: out.mac } : {}), ...(out.detail ? { detail: out.detail } : {}) });
        return;
    }
  };

  const onMessage = (msg: Buffer, unicast: boolean) => {
    if (closed) return;
    stats.received++;
    if (unicast) stats.receivedUnicast++;
    try {
      report(handleDatagram(msg, plan, lease, { now: now(), unicast }));
    } catch (e) {
      stats.errors.handler++;
      limited('handler-error', 'error', `dhcp: handling a packet failed: ${(e as Error).message}`, { bytes: msg.length });
    }
  };
  const onSocketError = (which: string) => (e: Error) => {
    stats.errors.socket++;
    limited(`socket-${which}`, 'error', `dhcp: ${which} socket error: ${e.message}`, {});
  };

  try {
    await bindSocket(broadcastSock, SERVER_PORT, '0.0.0.0');
    await bindSocket(serverSock, SERVER_PORT, config.serverId);
  } catch (e) {
    await Promise.all([closeSocket(broadcastSock), closeSocket(serverSock)]);
    const err = e as NodeJS.ErrnoException;
    throw new Error(
      `dhcp: cannot bind port ${SERVER_PORT} on 0.0.0.0 and ${config.serverId}: ${err.message}` +
        (err.code === 'EADDRNOTAVAIL' ? ` (is ${config.serverId} assigned to the bridge?)` : ''),
      { cause: e },
    );
  }
  serverSock.setBroadcast(true);
  broadcastSock.on('message', (m) => onMessage(m, false));
  serverSock.on('message', (m) => onMessage(m, true));
  broadcastSock.on('error', onSocketError('broadcast'));
  serverSock.on('error', onSocketError('server'));
  log('info', 'dhcp: serving', {
    serverId: config.serverId,
    vmMac: plan.macText,
    address: `${config.ip}/${config.prefixlen}`,
    leaseSeconds: config.leaseSeconds,
  });

  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= (async () => {
        closed = true;
        await Promise.all([closeSocket(broadcastSock), closeSocket(serverSock)]);
      })();
      return closing;
    },
    stats() {
      return {
        ...structuredClone(stats),
        lease: lease.snapshot(now()),
      };
    },
  };
}
