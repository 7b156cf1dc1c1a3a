// The DHCPv4 server of one NIC around the pure handler: frames in from the
// NIC's TAP (a packet socket, see serve/packet.ts), frames out to it. The
// guest's broadcasts and its unicast renewals to the server identifier both
// arrive here, whatever their destination MAC, because the socket sees the
// TAP's traffic before anything else does; replies go to the guest's queues
// only. No address, route or socket of the pod namespace is involved, so
// each NIC's server sees exactly its own guest.
//
// Nothing here may throw into the event loop: the handler is wrapped, every
// failure is counted and logged under a rate limit, and the only state that
// grows with input (foreign MACs seen) is capped. Lines the guest can cause
// once per packet (binds, NAKs, releases, declines) are rate-limited too;
// only debug lines are not.

import type { DhcpConfig } from './config.ts';
import { CLIENT_PORT, LIMITED_BROADCAST, SERVER_PORT, buildPlan, handleDatagram } from './handler.ts';
import type { Outcome, RequestKind } from './handler.ts';
import { Lease } from './lease.ts';
import type { LeaseSnapshot } from './lease.ts';
import { parseFrame, udp4Frame } from '../frames.ts';
import { answerArp } from '../arp.ts';
import { ipv4 } from '../../net/ipv4.ts';
import type { FramePort } from '../packet.ts';
import { RateLimit } from '../../log.ts';

export { RateLimit };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFn = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

export interface DhcpServerOptions {
  log: LogFn;
  port: FramePort; // the NIC's TAP
  serverMac: string; // source MAC of replies
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
  errors: { handler: number; send: number };
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
    errors: { handler: 0, send: 0 },
  };
  const limit = new RateLimit(OTHER_LOGS_PER_MINUTE);
  const foreignLimit = new RateLimit(FOREIGN_LOGS_PER_MINUTE);
  const foreignSeen = new BoundedSet(FOREIGN_MAC_MEMORY);
  let closed = false;
  const port = opts.port;

  const limited = (key: string, level: LogLevel, msg: string, fields: Record<string, unknown>) => {
    const s = limit.take(key, now());
    if (s < 0) return;
    log(level, msg, s > 0 ? { ...fields, suppressed: s } : fields);
  };
  const drop = (reason: string) => {
    stats.dropped[reason] = (stats.dropped[reason] ?? 0) + 1;
  };

  const send = (out: Extract<Outcome, { kind: 'reply' }>) => {
    try {
      port.send(
        udp4Frame({
          srcMac: opts.serverMac,
          dstMac: out.to === LIMITED_BROADCAST ? 'ff:ff:ff:ff:ff:ff' : config.vmMac,
          src: config.serverId,
          dst: out.to,
          srcPort: SERVER_PORT,
          dstPort: CLIENT_PORT,
          payload: out.data,
        }),
      );
    } catch (err) {
      stats.errors.send++;
      limited('send-error', 'error', `dhcp: sending ${out.type} to ${out.to} failed: ${(err as Error).message}`, { mac: out.mac });
      return;
    }
    stats.replied[out.type]++;
    if (out.type === 'NAK') stats.naks++;
    else if (out.type === 'ACK' && out.request !== 'discover') stats.acks[out.request]++;
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
  const arp = { serverId: ipv4(config.serverId), serverMac: opts.serverMac, vmMac: config.vmMac };
  const onFrame = (frame: Buffer) => {
    const answer = answerArp(frame, arp);
    if (answer) {
      try {
        port.send(answer);
      } catch (err) {
        stats.errors.send++;
        limited('send-error', 'error', `dhcp: answering ARP for ${config.serverId} failed: ${(err as Error).message}`, {});
      }
      return;
    }
    const f = parseFrame(frame);
    // The packet filter lets only IPv4 UDP to port 67 through; anything
    // else is a frame the guest mangled. The UDP checksum is not checked:
    // a guest with checksum offload hands over a partial one.
    if (f.kind !== 'ipv4' || !f.udp || f.udp.dstPort !== SERVER_PORT) {
      drop(f.kind === 'invalid' ? `frame:${f.reason}` : 'not-dhcp');
      return;
    }
    if (f.eth.src !== config.vmMac) {
      report({ kind: 'drop', reason: 'foreign-mac', mac: f.eth.src });
      return;
    }
    onMessage(f.udp.payload, f.dst !== LIMITED_BROADCAST);
  };
  port.onFrame(onFrame);
  log('info', 'dhcp: serving', {
    device: port.name,
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
        port.close();
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
