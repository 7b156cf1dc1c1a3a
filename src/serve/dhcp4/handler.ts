// Request handling without sockets: a datagram, the plan made from the
// config, and the lease go in; a reply (bytes and destination), a silent
// event, or a drop reason comes out. Everything RFC 2131 asks of a server
// that owns exactly one address for exactly one client lives here, so the
// socket layer has nothing left to decide.

import { BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, HEADER_SIZE, ParseError, encodePacket, hardwareAddress, parseMac, parsePacket } from './codec.ts';
import type { DhcpPacket, ParseReason } from './codec.ts';
import type { DhcpConfig } from './config.ts';
import { formatIpv4, ipv4, maskOf } from '../../net/ipv4.ts';
import type { BindKind, Lease } from './lease.ts';
import {
  MSG,
  OPT,
  checkDomainName,
  encodeClasslessRoutes,
  encodeIps,
  encodeSearchList,
  encodeText,
  encodeU16,
  encodeU32,
  encodeU8,
  optionWireLength,
} from './options.ts';

export const LIMITED_BROADCAST = '255.255.255.255';
export const CLIENT_PORT = 68;
export const SERVER_PORT = 67;
/** RFC 2131 §2: every host accepts a 576-byte datagram; bigger needs option 57. */
const MIN_MAX_MESSAGE = 576;
const IP_UDP_HEADERS = 28;

export interface ReplyPlan {
  mac: Buffer; // the VM's, 6 bytes
  macText: string;
  ip: number;
  serverId: number;
  leaseSeconds: number;
  mtu: number;
  payload: Map<number, Buffer>; // configured options, encoded once
  serverIdBytes: Buffer;
  leaseBytes: Buffer;
  renewalBytes: Buffer;
  rebindingBytes: Buffer;
}

export type RequestKind = 'discover' | BindKind | 'inform';

export type DropReason =
  | `malformed:${ParseReason}`
  | 'not-request'
  | 'not-ethernet'
  | 'foreign-mac'
  | 'relayed'
  | 'no-message-type'
  | 'bad-option'
  | 'unsupported-type'
  | 'no-requested-address'
  | 'inform-foreign-ciaddr'
  | 'release-mismatch'
  | 'decline-mismatch';

export type Outcome =
  | {
      kind: 'reply';
      type: 'OFFER' | 'ACK' | 'NAK';
      request: RequestKind;
      data: Buffer;
      to: string;
      mac: string;
      xid: number;
      why?: string; // for a NAK
      trimmed?: number[]; // options left out to fit the client's size limit
    }
  | { kind: 'event'; event: 'release' | 'decline' | 'ignored'; mac: string; xid: number; detail: string }
  | { kind: 'drop'; reason: DropReason; mac?: string; detail?: string };

/**
 * Default order after option 53. Timers and the server identifier come first
 * because every client needs them; 249 sits near the end so it is the first
 * thing trimmed for a client that did not ask for it.
 */
const DEFAULT_ORDER: readonly number[] = [
  OPT.SERVER_ID,
  OPT.CLIENT_ID,
  OPT.LEASE_TIME,
  OPT.RENEWAL_TIME,
  OPT.REBINDING_TIME,
  OPT.SUBNET_MASK,
  OPT.BROADCAST,
  OPT.ROUTER,
  OPT.CLASSLESS_ROUTES,
  OPT.DNS,
  OPT.DOMAIN_NAME,
  OPT.DOMAIN_SEARCH,
  OPT.HOSTNAME,
  OPT.MTU,
  OPT.MS_CLASSLESS_ROUTES,
  OPT.MESSAGE,
];

/** Never trimmed, whatever the client's size limit or request list says. */
const REQUIRED = new Set<number>([
  OPT.MESSAGE_TYPE,
  OPT.SERVER_ID,
  OPT.CLIENT_ID,
  OPT.LEASE_TIME,
  OPT.RENEWAL_TIME,
  OPT.REBINDING_TIME,
  OPT.SUBNET_MASK,
  OPT.ROUTER,
  OPT.CLASSLESS_ROUTES,
  OPT.MESSAGE,
]);

const TYPE_BYTES: Record<number, Buffer> = {
  [MSG.OFFER]: encodeU8(MSG.OFFER),
  [MSG.ACK]: encodeU8(MSG.ACK),
  [MSG.NAK]: encodeU8(MSG.NAK),
};

interface ReplySpec {
  type: number;
  yiaddr: number;
  ciaddr: number;
  withLease: boolean;
  message?: Buffer;
}

// Option 56 tells the operator reading the guest's log why it was refused.
const NAK_NOT_OURS: ReplySpec = { type: MSG.NAK, yiaddr: 0, ciaddr: 0, withLease: false, message: encodeText('requested address is not this client\'s') };
const NAK_OTHER_SERVER: ReplySpec = { type: MSG.NAK, yiaddr: 0, ciaddr: 0, withLease: false, message: encodeText('lease belongs to another server') };

/**
 * Encodes every option once. Problems a pod can legitimately have (a search
 * domain no DNS encoder accepts) are warnings, and the option is left out;
 * a malformed address in the config is a bug and throws.
 */
export function buildPlan(config: DhcpConfig): { plan: ReplyPlan; warnings: string[] } {
  const warnings: string[] = [];
  const mac = parseMac(config.vmMac);
  if (!mac) throw new Error(`bad VM MAC ${JSON.stringify(config.vmMac)}`);
  if (!Number.isInteger(config.prefixlen) || config.prefixlen < 0 || config.prefixlen > 32) {
    throw new Error(`bad prefix length ${config.prefixlen}`);
  }
  if (!Number.isInteger(config.leaseSeconds) || config.leaseSeconds < 1 || config.leaseSeconds > 0xfffffffe) {
    throw new Error(`bad lease time ${config.leaseSeconds}`);
  }
  const payload = new Map<number, Buffer>();
  payload.set(OPT.SUBNET_MASK, encodeU32(maskOf(config.prefixlen)));
  if (config.router) payload.set(OPT.ROUTER, encodeIps([ipv4(config.router)]));
  if (config.routes.length > 0) {
    const routes = encodeClasslessRoutes(config.routes);
    payload.set(OPT.CLASSLESS_ROUTES, routes);
    payload.set(OPT.MS_CLASSLESS_ROUTES, routes);
  }
  if (config.dns.length > 0) payload.set(OPT.DNS, encodeIps(config.dns.map(ipv4)));
  const search: string[] = [];
  for (const s of config.search) {
    const why = checkDomainName(s);
    if (why) warnings.push(`search domain ${JSON.stringify(s)} cannot be encoded (${why}); skipped`);
    else search.push(s);
  }
  if (search.length > 0) payload.set(OPT.DOMAIN_SEARCH, encodeSearchList(search));
  if (config.domain) {
    const why = checkDomainName(config.domain);
    if (why) warnings.push(`domain name ${JSON.stringify(config.domain)} cannot be sent (${why}); skipped`);
    else payload.set(OPT.DOMAIN_NAME, encodeText(config.domain.replace(/\.$/, '')));
  }
  if (config.hostname) {
    const why = checkDomainName(config.hostname);
    if (why) warnings.push(`hostname ${JSON.stringify(config.hostname)} cannot be sent (${why}); skipped`);
    else payload.set(OPT.HOSTNAME, encodeText(config.hostname.replace(/\.$/, '')));
  }
  // RFC 2132 §5.1: 68 is the smallest MTU a client may be given.
  if (config.mtu >= 68 && config.mtu <= 0xffff) payload.set(OPT.MTU, encodeU16(config.mtu));
  else warnings.push(`MTU ${config.mtu} cannot be sent; skipped`);
  if (config.broadcast) payload.set(OPT.BROADCAST, encodeIps([ipv4(config.broadcast)]));

  const lease = config.leaseSeconds;
  const plan: ReplyPlan = {
    mac,
    macText: config.vmMac.toLowerCase().replace(/-/g, ':'),
    ip: ipv4(config.ip),
    serverId: ipv4(config.serverId),
    leaseSeconds: lease,
    mtu: config.mtu,
    payload,
    serverIdBytes: encodeIps([ipv4(config.serverId)]),
    leaseBytes: encodeU32(lease),
    // RFC 2131 §4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
    renewalBytes: encodeU32(Math.floor(lease * 0.5)),
    rebindingBytes: encodeU32(Math.floor(lease * 0.875)),
  };
  const budget = MIN_MAX_MESSAGE - IP_UDP_HEADERS - HEADER_SIZE - 1;
  let total = optionWireLength(1) + optionWireLength(4) * 4;
  for (const v of payload.values()) total += optionWireLength(v.length);
  if (total > budget) {
    warnings.push(
      `the full reply needs ${total} bytes of options but a client that sends no option 57 accepts 576-byte messages (${budget} bytes of options); the options it wants least will be left out for such clients`,
    );
  }
  return { plan, warnings };
}

// Scratch space for ordering options, reused by every call; the handler is
// synchronous so nothing else can observe it between calls.
const placed = new Uint8Array(256);

function u32At(b: Buffer | undefined): number | undefined {
  return b && b.length === 4 ? b.readUInt32BE(0) : undefined;
}

function optionData(code: number, req: DhcpPacket, plan: ReplyPlan, spec: ReplySpec): Buffer | undefined {
  switch (code) {
    case OPT.SERVER_ID:
      return plan.serverIdBytes;
    case OPT.CLIENT_ID: {
      // RFC 6842: the client identifier goes back as it came, unless it is
      // longer than any real one, which would only inflate our replies.
      const id = req.options.get(OPT.CLIENT_ID);
      return id && id.length <= 255 ? id : undefined;
    }
    case OPT.LEASE_TIME:
      return spec.withLease ? plan.leaseBytes : undefined;
    case OPT.RENEWAL_TIME:
      return spec.withLease ? plan.renewalBytes : undefined;
    case OPT.REBINDING_TIME:
      return spec.withLease ? plan.rebindingBytes : undefined;
    case OPT.MESSAGE:
      return spec.message;
    default:
      // A NAK carries no configuration (RFC 2131 table 3).
      return spec.type === MSG.NAK ? undefined : plan.payload.get(code);
  }
}

/**
 * Option 53 first, then what the client asked for in the order it asked,
 * then everything else in our order. If that exceeds what the client accepts
 * (option 57, else 576 bytes), optional options are dropped from the end,
 * which removes unrequested ones before the client's least wanted ones.
 */
function buildOptions(req: DhcpPacket, plan: ReplyPlan, spec: ReplySpec): { list: [number, Buffer][]; trimmed: number[] } {
  const list: [number, Buffer][] = [[OPT.MESSAGE_TYPE, TYPE_BYTES[spec.type]!]];
  placed[OPT.MESSAGE_TYPE] = 1;
  const prl = req.options.get(OPT.PARAM_REQUEST_LIST);
  if (prl) {
    for (let i = 0; i < prl.length; i++) {
      const code = prl[i]!;
      if (placed[code]) continue;
      const data = optionData(code, req, plan, spec);
      if (data === undefined) continue;
      placed[code] = 1;
      list.push([code, data]);
    }
  }
  for (const code of DEFAULT_ORDER) {
    if (placed[code]) continue;
    const data = optionData(code, req, plan, spec);
    if (data === undefined) continue;
    placed[code] = 1;
    list.push([code, data]);
  }
  for (const [code] of list) placed[code] = 0;

  const trimmed: number[] = [];
  const wanted = req.options.get(OPT.MAX_MESSAGE_SIZE);
  const asked = wanted && wanted.length === 2 ? wanted.readUInt16BE(0) : MIN_MAX_MESSAGE;
  const limit = Math.max(MIN_MAX_MESSAGE, Math.min(asked, Math.max(plan.mtu, MIN_MAX_MESSAGE)));
  const budget = limit - IP_UDP_HEADERS - HEADER_SIZE - 1;
  let total = 0;
  for (const [, data] of list) total += optionWireLength(data.length);
  for (let i = list.length - 1; i >= 0 && total > budget; i--) {
    const [code, data] = list[i]!;
    if (REQUIRED.has(code)) continue;
    total -= optionWireLength(data.length);
    trimmed.push(code);
    list.splice(i, 1);
  }
  return { list, trimmed };
}

/**
 * RFC 2131 §4.1 with giaddr always zero (relayed requests are dropped):
 * NAKs are broadcast; a client with an address (ciaddr) gets unicast there;
 * one that asked for broadcast gets broadcast; otherwise unicast to yiaddr
 * at chaddr, which works without ARP through the permanent neighbour entry
 * the core installs on br0. We only ever unicast to the VM's own address,
 * the one address with a route on br0.
 */
function destination(req: DhcpPacket, plan: ReplyPlan, spec: ReplySpec): string {
  if (spec.type === MSG.NAK) return LIMITED_BROADCAST;
  if (req.ciaddr !== 0) return req.ciaddr === plan.ip ? formatIpv4(req.ciaddr) : LIMITED_BROADCAST;
  if (req.flags & BROADCAST_FLAG) return LIMITED_BROADCAST;
  if (spec.yiaddr === plan.ip) return formatIpv4(spec.yiaddr);
  return LIMITED_BROADCAST;
}

function reply(
  req: DhcpPacket,
  plan: ReplyPlan,
  spec: ReplySpec,
  request: RequestKind,
  mac: string,
  why?: string,
): Outcome {
  const { list, trimmed } = buildOptions(req, plan, spec);
  const data = encodePacket(
    {
      op: BOOTREPLY,
      htype: req.htype,
      hlen: req.hlen,
      hops: 0,
      xid: req.xid,
      secs: 0,
      flags: req.flags,
      ciaddr: spec.ciaddr,
      yiaddr: spec.yiaddr,
      siaddr: 0,
      giaddr: req.giaddr,
      chaddr: req.chaddr,
    },
    list,
  );
  const type = spec.type === MSG.OFFER ? 'OFFER' : spec.type === MSG.ACK ? 'ACK' : 'NAK';
  const out: Outcome = { kind: 'reply', type, request, data, to: destination(req, plan, spec), mac, xid: req.xid };
  if (why !== undefined) out.why = why;
  if (trimmed.length > 0) out.trimmed = trimmed;
  return out;
}

export interface HandleInput {
  now: number; // ms
  unicast: boolean; // arrived addressed to the server identifier, not broadcast
}

export function handleDatagram(buf: Buffer, plan: ReplyPlan, lease: Lease, input: HandleInput): Outcome {
  let pkt: DhcpPacket;
  try {
    pkt = parsePacket(buf);
  } catch (e) {
    if (e instanceof ParseError) return { kind: 'drop', reason: `malformed:${e.reason}`, detail: e.message };
    throw e;
  }
  return handlePacket(pkt, plan, lease, input);
}

function isVmMac(pkt: DhcpPacket, plan: ReplyPlan): boolean {
  for (let i = 0; i < 6; i++) if (pkt.chaddr[i] !== plan.mac[i]) return false;
  return true;
}

export function handlePacket(pkt: DhcpPacket, plan: ReplyPlan, lease: Lease, input: HandleInput): Outcome {
  if (pkt.op !== BOOTREQUEST) return { kind: 'drop', reason: 'not-request' };
  if (pkt.htype !== 1 || pkt.hlen !== 6) {
    return { kind: 'drop', reason: 'not-ethernet', detail: `htype ${pkt.htype} hlen ${pkt.hlen}` };
  }
  const mac = hardwareAddress(pkt);
  if (!isVmMac(pkt, plan)) return { kind: 'drop', reason: 'foreign-mac', mac };
  // Nothing relays on br0; a giaddr here is forged or misrouted, and the
  // reply would have to go to an agent we can't reach.
  if (pkt.giaddr !== 0) return { kind: 'drop', reason: 'relayed', mac, detail: formatIpv4(pkt.giaddr) };
  const typeOpt = pkt.options.get(OPT.MESSAGE_TYPE);
  if (!typeOpt) return { kind: 'drop', reason: 'no-message-type', mac };
  if (typeOpt.length !== 1) return { kind: 'drop', reason: 'bad-option', mac, detail: `option 53 of ${typeOpt.length} bytes` };

  const sidOpt = pkt.options.get(OPT.SERVER_ID);
  const reqOpt = pkt.options.get(OPT.REQUESTED_IP);
  if (sidOpt && sidOpt.length !== 4) return { kind: 'drop', reason: 'bad-option', mac, detail: `option 54 of ${sidOpt.length} bytes` };
  if (reqOpt && reqOpt.length !== 4) return { kind: 'drop', reason: 'bad-option', mac, detail: `option 50 of ${reqOpt.length} bytes` };
  const sid = u32At(sidOpt);
  const requested = u32At(reqOpt);
  const xid = pkt.xid;

  switch (typeOpt[0]) {
    case MSG.DISCOVER:
      lease.offered();
      return reply(pkt, plan, { type: MSG.OFFER, yiaddr: plan.ip, ciaddr: 0, withLease: true }, 'discover', mac);

    case MSG.REQUEST: {
      // RFC 2131 §4.3.2 tells the client's state from which fields are set.
      let kind: BindKind;
      if (sid !== undefined && pkt.ciaddr === 0) {
        kind = 'selecting';
        if (sid !== plan.serverId) {
          // The guest took another server's offer: not ours to answer.
          lease.abandoned();
          return { kind: 'event', event: 'ignored', mac, xid, detail: `SELECTING server ${formatIpv4(sid)}` };
        }
        if (requested === undefined) return { kind: 'drop', reason: 'no-requested-address', mac, detail: kind };
        if (requested !== plan.ip) {
          return reply(pkt, plan, NAK_NOT_OURS, kind, mac, `requested ${formatIpv4(requested)}`);
        }
      } else if (pkt.ciaddr === 0) {
        if (requested === undefined) return { kind: 'drop', reason: 'no-requested-address', mac, detail: 'no ciaddr, no option 50' };
        kind = 'init-reboot';
        if (requested !== plan.ip) {
          return reply(pkt, plan, NAK_NOT_OURS, kind, mac, `requested ${formatIpv4(requested)}`);
        }
      } else {
        // Unicast to us is RENEWING; broadcast is REBINDING. A server
        // identifier does not belong here, but some clients send one; if it
        // names another server the guest holds a lease that is not ours.
        kind = input.unicast ? 'renewing' : 'rebinding';
        if (sid !== undefined && sid !== plan.serverId) {
          return reply(pkt, plan, NAK_OTHER_SERVER, kind, mac, `server identifier ${formatIpv4(sid)}`);
        }
        if (pkt.ciaddr !== plan.ip) {
          return reply(pkt, plan, NAK_NOT_OURS, kind, mac, `ciaddr ${formatIpv4(pkt.ciaddr)}`);
        }
        if (requested !== undefined && requested !== plan.ip) {
          return reply(pkt, plan, NAK_NOT_OURS, kind, mac, `requested ${formatIpv4(requested)}`);
        }
      }
      lease.bound(input.now, plan.leaseSeconds, kind);
      return reply(pkt, plan, { type: MSG.ACK, yiaddr: plan.ip, ciaddr: pkt.ciaddr, withLease: true }, kind, mac);
    }

    case MSG.INFORM:
      // RFC 2131 §4.3.5: configuration only. No lease times, yiaddr zero,
      // answered at ciaddr, which must be the VM's (the one we can reach).
      if (pkt.ciaddr !== 0 && pkt.ciaddr !== plan.ip) {
        return { kind: 'drop', reason: 'inform-foreign-ciaddr', mac, detail: formatIpv4(pkt.ciaddr) };
      }
      return reply(pkt, plan, { type: MSG.ACK, yiaddr: 0, ciaddr: pkt.ciaddr, withLease: false }, 'inform', mac);

    case MSG.RELEASE:
      if (sid !== undefined && sid !== plan.serverId) {
        return { kind: 'event', event: 'ignored', mac, xid, detail: `RELEASE for server ${formatIpv4(sid)}` };
      }
      if (pkt.ciaddr !== plan.ip) return { kind: 'drop', reason: 'release-mismatch', mac, detail: `ciaddr ${formatIpv4(pkt.ciaddr)}` };
      lease.released();
      return { kind: 'event', event: 'release', mac, xid, detail: formatIpv4(pkt.ciaddr) };

    case MSG.DECLINE:
      if (sid !== undefined && sid !== plan.serverId) {
        return { kind: 'event', event: 'ignored', mac, xid, detail: `DECLINE for server ${formatIpv4(sid)}` };
      }
      if (requested !== plan.ip) {
        return { kind: 'drop', reason: 'decline-mismatch', mac, detail: requested === undefined ? 'no option 50' : formatIpv4(requested) };
      }
      // The guest saw our address in use on the wire. There is no other
      // address to offer, so this is for the operator to see.
      lease.declined();
      return { kind: 'event', event: 'decline', mac, xid, detail: formatIpv4(requested) };

    default:
      return { kind: 'drop', reason: 'unsupported-type', mac, detail: `message type ${typeOpt[0]}` };
  }
}
