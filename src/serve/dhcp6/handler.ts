// DHCPv6 request handling without sockets (RFC 8415 §16 and §18.3): a
// datagram, where it came from, the config and the lease go in; a reply
// (bytes and destination), a silent event, or a drop reason comes out.
//
// The frames that reach this code were already filtered to the VM's MAC on
// its own TAP, so there is exactly one client. Its DUID is recorded but
// never checked: a guest that reboots with a fresh DUID (or IAID) still gets
// the pod's addresses, which are reserved for it whatever it calls itself.
// All of the addresses go in one IA_NA, the first one the client sends (or
// the one already holding them); every other IA gets an honest status.

import {
  DUID_MAX,
  DUID_MIN,
  MSG6,
  MSG6_NAMES,
  STATUS,
  decodeMessage,
  encodeMessage,
  optionsOf,
} from './codec.ts';
import type { DecodeReason, Dhcp6Message, Dhcp6Option } from './codec.ts';
import type { Dhcp6Config } from './config.ts';
import type { Lease6 } from './lease.ts';
import { ipv6Bytes, isIpv6Multicast, isIpv6Unspecified } from '../frames.ts';
import { network6 } from '../../net/ipv6.ts';

export interface Dhcp6Context {
  now: number; // ms
  /** The client's IPv6 source address (its link-local one); replies go back there, to port 546. */
  src: string;
  /** Sent to All_DHCP_Relay_Agents_and_Servers (ff02::1:2), as RFC 8415 §7.1 asks, rather than unicast. */
  multicast: boolean;
}

export type Request6 =
  | 'solicit'
  | 'request'
  | 'confirm'
  | 'renew'
  | 'rebind'
  | 'release'
  | 'decline'
  | 'information-request';

export type Drop6Reason =
  | `malformed:${Exclude<DecodeReason, 'relay-message'>}`
  | 'relayed'
  | 'not-client-message'
  | 'unsupported-type'
  | 'bad-source'
  | 'no-client-id'
  | 'bad-client-id'
  | 'duplicate-option'
  | 'no-server-id'
  | 'unexpected-server-id'
  | 'unicast'
  | 'ia-in-information-request'
  | 'confirm-without-addresses';

export type StatusName = keyof typeof STATUS;

export type Dhcp6Outcome =
  | {
      kind: 'reply';
      type: 'ADVERTISE' | 'REPLY';
      request: Request6;
      data: Buffer;
      to: string;
      xid: number;
      /** Status codes in the reply, top level and per IA, for the log. */
      statuses: StatusName[];
      /** Something the operator should hear about, answered all the same. */
      event?: 'release' | 'decline';
      detail?: string;
      /** Options left out so the reply fits one IPv6 minimum-MTU packet. */
      trimmed?: number[];
    }
  | { kind: 'event'; event: 'ignored'; request: Request6; xid: number; detail: string }
  | { kind: 'drop'; reason: Drop6Reason; detail?: string };

const REQUESTS: Partial<Record<number, Request6>> = {
  [MSG6.SOLICIT]: 'solicit',
  [MSG6.REQUEST]: 'request',
  [MSG6.CONFIRM]: 'confirm',
  [MSG6.RENEW]: 'renew',
  [MSG6.REBIND]: 'rebind',
  [MSG6.RELEASE]: 'release',
  [MSG6.DECLINE]: 'decline',
  [MSG6.INFORMATION_REQUEST]: 'information-request',
};

/** RFC 8415 §16: which requests name a server, and which must not. */
const SERVER_ID_RULE: Record<Request6, 'required' | 'forbidden' | 'optional'> = {
  solicit: 'forbidden',
  request: 'required',
  confirm: 'forbidden',
  renew: 'required',
  rebind: 'forbidden',
  release: 'required',
  decline: 'required',
  'information-request': 'optional',
};

/**
 * RFC 8415 §16 and §18.4: requests that go to all servers are dropped when
 * unicast; those meant for one server get UseMulticast, since we never send
 * the Server Unicast option (we have no address to be reached at).
 */
const UNICAST_RULE: Record<Request6, 'drop' | 'use-multicast'> = {
  solicit: 'drop',
  request: 'use-multicast',
  confirm: 'drop',
  renew: 'use-multicast',
  rebind: 'drop',
  release: 'use-multicast',
  decline: 'use-multicast',
  'information-request': 'drop',
};

/** The largest UDP payload that fits an IPv6 minimum-MTU packet: 1280 - 40 - 8. */
export const MAX_REPLY = 1232;
/** IAs answered per message; a client has one or two, and each costs reply space. */
const MAX_IAS = 8;

type Ia = Extract<Dhcp6Option, { kind: 'ia-na' | 'ia-ta' | 'ia-pd' }>;

const STATUS_NAMES = Object.fromEntries(Object.entries(STATUS).map(([k, v]) => [v, k])) as Record<number, StatusName>;

// Status messages are for the guest's log: short, and they say which server.
const MESSAGES: Record<StatusName, string> = {
  Success: 'podtap: ok',
  UnspecFail: 'podtap: failed',
  NoAddrsAvail: 'podtap: the pod has no more addresses for this IA',
  NoBinding: 'podtap: no binding for this IA',
  NotOnLink: 'podtap: not an address of this pod',
  UseMulticast: 'podtap: send to ff02::1:2',
  NoPrefixAvail: 'podtap: no prefix delegation',
};

function status(name: StatusName): Dhcp6Option {
  return { kind: 'status', status: STATUS[name], message: MESSAGES[name] };
}

function addressesIn(ia: Ia): string[] {
  return ia.options.flatMap((o) => (o.kind === 'iaaddr' ? [o.address] : []));
}

function prefixesIn(ia: Ia): { prefix: string; prefixlen: number }[] {
  return ia.options.flatMap((o) => (o.kind === 'iaprefix' ? [{ prefix: o.prefix, prefixlen: o.prefixlen }] : []));
}

class Server {
  readonly ours: Set<string>;
  readonly config: Dhcp6Config;
  readonly clientId: Dhcp6Option | undefined;
  constructor(config: Dhcp6Config, clientId: Dhcp6Option | undefined) {
    this.config = config;
    this.clientId = clientId;
    this.ours = new Set(config.addresses);
  }

  isOurs(a: string): boolean {
    return this.ours.has(a);
  }

  onLink(a: string): boolean {
    return this.config.linkPrefixes.some((p) => network6(a, p.prefixlen) === p.prefix);
  }

  /** The first IA_NA that holds one of our addresses, else the first IA_NA. */
  servingIa(ias: Ia[]): Ia | undefined {
    const na = ias.filter((i) => i.kind === 'ia-na');
    return na.find((i) => addressesIn(i).some((a) => this.isOurs(a))) ?? na[0];
  }

  /** Our addresses in an IA_NA, with T1/T2; NoAddrsAvail if the pod has none. */
  assigned(iaid: number, extra: Dhcp6Option[] = []): Dhcp6Option {
    const c = this.config;
    if (c.addresses.length === 0) return { kind: 'ia-na', iaid, t1: 0, t2: 0, options: [...extra, status('NoAddrsAvail')] };
    return {
      kind: 'ia-na',
      iaid,
      t1: c.t1,
      t2: c.t2,
      options: [...c.addresses.map((address): Dhcp6Option => ({ kind: 'iaaddr', address, preferred: c.leaseSeconds, valid: c.leaseSeconds, options: [] })), ...extra],
    };
  }

  /** An IA we give nothing in: RFC 8415 §21.4-21.21 shapes with a status. */
  refused(ia: Ia, name: StatusName, withdrawn: Dhcp6Option[] = []): Dhcp6Option {
    const options = [...withdrawn, status(name)];
    if (ia.kind === 'ia-ta') return { kind: 'ia-ta', iaid: ia.iaid, options };
    return { kind: ia.kind, iaid: ia.iaid, t1: 0, t2: 0, options };
  }

  /** Addresses and prefixes returned with lifetimes 0, so the client stops using them. */
  withdrawnIn(ia: Ia, keep: (a: string) => boolean = () => false): Dhcp6Option[] {
    if (ia.kind === 'ia-pd') {
      return prefixesIn(ia).map((p): Dhcp6Option => ({ kind: 'iaprefix', prefix: p.prefix, prefixlen: p.prefixlen, preferred: 0, valid: 0, options: [] }));
    }
    return addressesIn(ia)
      .filter((a) => !keep(a))
      .map((address): Dhcp6Option => ({ kind: 'iaaddr', address, preferred: 0, valid: 0, options: [] }));
  }

  configOptions(): Dhcp6Option[] {
    const out: Dhcp6Option[] = [];
    if (this.config.dnsServers.length > 0) out.push({ kind: 'dns-servers', servers: this.config.dnsServers });
    if (this.config.search.length > 0) out.push({ kind: 'domain-list', domains: this.config.search });
    return out;
  }

  /** Client ID (when sent) and our Server ID start every answer (RFC 8415 §18.3). */
  ids(): Dhcp6Option[] {
    const out: Dhcp6Option[] = [];
    if (this.clientId) out.push(this.clientId);
    out.push({ kind: 'server-id', duid: this.config.serverDuid });
    return out;
  }
}

function statusesOf(options: readonly Dhcp6Option[]): StatusName[] {
  const out: StatusName[] = [];
  for (const o of options) {
    if (o.kind === 'status') out.push(STATUS_NAMES[o.status] ?? 'UnspecFail');
    else if (o.kind === 'ia-na' || o.kind === 'ia-ta' || o.kind === 'ia-pd') out.push(...statusesOf(o.options));
  }
  return out;
}

function drop(reason: Drop6Reason, detail?: string): Dhcp6Outcome {
  return detail === undefined ? { kind: 'drop', reason } : { kind: 'drop', reason, detail };
}

/**
 * Encodes a reply. Configuration options that would push it past one
 * minimum-MTU packet are left out, search list first: addresses matter more
 * than DNS, and AF_PACKET can't fragment.
 */
function reply(
  type: 'ADVERTISE' | 'REPLY',
  request: Request6,
  msg: Dhcp6Message,
  ctx: Dhcp6Context,
  options: Dhcp6Option[],
  extra: { event?: 'release' | 'decline'; detail?: string } = {},
): Dhcp6Outcome {
  let opts = options;
  const trimmed: number[] = [];
  let data = encodeMessage({ type: type === 'ADVERTISE' ? MSG6.ADVERTISE : MSG6.REPLY, xid: msg.xid, options: opts });
  for (const kind of ['domain-list', 'dns-servers'] as const) {
    if (data.length <= MAX_REPLY) break;
    if (!opts.some((o) => o.kind === kind)) continue;
    opts = opts.filter((o) => o.kind !== kind);
    trimmed.push(kind === 'domain-list' ? 24 : 23);
    data = encodeMessage({ type: type === 'ADVERTISE' ? MSG6.ADVERTISE : MSG6.REPLY, xid: msg.xid, options: opts });
  }
  const out: Dhcp6Outcome = { kind: 'reply', type, request, data, to: ctx.src, xid: msg.xid, statuses: statusesOf(opts) };
  if (extra.event) out.event = extra.event;
  if (extra.detail !== undefined) out.detail = extra.detail;
  if (trimmed.length > 0) out.trimmed = trimmed;
  return out;
}

export function handle(payload: Buffer, ctx: Dhcp6Context, config: Dhcp6Config, lease: Lease6): Dhcp6Outcome {
  // Replies go back to the source; one we can't send to is not a client.
  const src = ipv6Bytes(ctx.src);
  if (!src || isIpv6Unspecified(src) || isIpv6Multicast(src)) return drop('bad-source', ctx.src);

  const decoded = decodeMessage(payload);
  if (!decoded.ok) {
    const e = decoded.error;
    return e.reason === 'relay-message' ? drop('relayed', e.detail) : drop(`malformed:${e.reason}`, e.detail);
  }
  const msg = decoded.message;
  const request = REQUESTS[msg.type];
  if (!request) {
    if (msg.type === MSG6.ADVERTISE || msg.type === MSG6.REPLY || msg.type === MSG6.RECONFIGURE) {
      return drop('not-client-message', MSG6_NAMES[msg.type]);
    }
    return drop('unsupported-type', `message type ${msg.type}`);
  }

  const clientIds = optionsOf(msg.options, 'client-id');
  const serverIds = optionsOf(msg.options, 'server-id');
  if (clientIds.length > 1) return drop('duplicate-option', 'client identifier');
  if (serverIds.length > 1) return drop('duplicate-option', 'server identifier');
  const clientId = clientIds[0];
  const serverId = serverIds[0];
  if (clientId && (clientId.duid.length < DUID_MIN || clientId.duid.length > DUID_MAX)) {
    return drop('bad-client-id', `DUID of ${clientId.duid.length} bytes`);
  }
  if (!clientId && request !== 'information-request') return drop('no-client-id', request);

  const rule = SERVER_ID_RULE[request];
  if (rule === 'forbidden' && serverId) return drop('unexpected-server-id', request);
  if (rule === 'required' && !serverId) return drop('no-server-id', request);
  if (serverId && !serverId.duid.equals(config.serverDuid)) {
    // The guest is talking to another server (another DHCPv6 server on
    // the link would be a misconfiguration worth seeing in the log).
    return { kind: 'event', event: 'ignored', request, xid: msg.xid, detail: `server ${serverId.duid.toString('hex')}` };
  }

  const ias = msg.options.filter((o): o is Ia => o.kind === 'ia-na' || o.kind === 'ia-ta' || o.kind === 'ia-pd');
  if (request === 'information-request' && ias.length > 0) return drop('ia-in-information-request');

  const s = new Server(config, clientId);
  if (!ctx.multicast) {
    if (UNICAST_RULE[request] === 'drop') return drop('unicast', request);
    return reply('REPLY', request, msg, ctx, [...s.ids(), status('UseMulticast')]);
  }
  if (clientId) lease.seen(clientId.duid);
  const answered = ias.slice(0, MAX_IAS);

  switch (request) {
    case 'solicit': {
      const serving = s.servingIa(answered);
      const out: Dhcp6Option[] = [];
      for (const ia of answered) {
        // A Solicit's addresses are only hints (RFC 8415 §18.3.1); ours go out regardless.
        if (ia === serving) out.push(s.assigned(ia.iaid));
        else out.push(s.refused(ia, ia.kind === 'ia-pd' ? 'NoPrefixAvail' : 'NoAddrsAvail'));
      }
      if (answered.length === 0) out.push(status('NoAddrsAvail'));
      const rapid = config.rapidCommit && msg.options.some((o) => o.kind === 'rapid-commit');
      if (rapid) {
        if (serving && config.addresses.length > 0) lease.bound(ctx.now, config.leaseSeconds, 'rapid-commit', serving.iaid, config.addresses);
        return reply('REPLY', request, msg, ctx, [...s.ids(), { kind: 'rapid-commit' }, ...out, ...s.configOptions()]);
      }
      lease.advertised(ctx.now);
      return reply('ADVERTISE', request, msg, ctx, [...s.ids(), { kind: 'preference', value: config.preference }, ...out, ...s.configOptions()]);
    }

    case 'request': {
      const serving = s.servingIa(answered);
      const out: Dhcp6Option[] = [];
      for (const ia of answered) {
        if (ia !== serving) {
          out.push(s.refused(ia, ia.kind === 'ia-pd' ? 'NoPrefixAvail' : 'NoAddrsAvail'));
          continue;
        }
        // RFC 8415 §18.3.2: an address whose prefix is not on this link
        // gets NotOnLink, and the client asks again without it. One that is
        // on-link but not ours is just a hint we don't take.
        const offLink = addressesIn(ia).filter((a) => !s.isOurs(a) && !s.onLink(a));
        if (offLink.length > 0) {
          out.push(s.refused(ia, 'NotOnLink'));
          continue;
        }
        out.push(s.assigned(ia.iaid));
        if (config.addresses.length > 0) lease.bound(ctx.now, config.leaseSeconds, 'request', ia.iaid, config.addresses);
      }
      if (answered.length === 0) out.push(status('NoAddrsAvail'));
      return reply('REPLY', request, msg, ctx, [...s.ids(), ...out, ...s.configOptions()]);
    }

    case 'renew':
    case 'rebind': {
      // The binding is the MAC's, so whatever IA_NA the client renews first
      // gets the pod's addresses (RFC 8415 §18.3.4 lets a server create the
      // binding here); what is not ours goes back with lifetimes 0.
      const serving = s.servingIa(answered);
      const out: Dhcp6Option[] = [];
      for (const ia of answered) {
        if (ia === serving) {
          out.push(s.assigned(ia.iaid, s.withdrawnIn(ia, (a) => s.isOurs(a))));
          if (config.addresses.length > 0) lease.bound(ctx.now, config.leaseSeconds, request, ia.iaid, config.addresses);
          continue;
        }
        const withdrawn = s.withdrawnIn(ia);
        // §18.3.4: no binding, no addresses. §18.3.5: a Rebind's addresses
        // that are not appropriate come back with lifetimes 0.
        if (request === 'rebind' && withdrawn.length > 0) {
          out.push(ia.kind === 'ia-ta' ? { kind: 'ia-ta', iaid: ia.iaid, options: withdrawn } : { kind: ia.kind, iaid: ia.iaid, t1: 0, t2: 0, options: withdrawn });
        } else {
          out.push(s.refused(ia, 'NoBinding'));
        }
      }
      return reply('REPLY', request, msg, ctx, [...s.ids(), ...out, ...s.configOptions()]);
    }

    case 'confirm': {
      // §18.3.3. "Appropriate for the link" is strict here: the pod's own
      // addresses and nothing else, since any other address (even one in
      // the pod's subnet, after the VM moved to a new pod) is one the
      // antispoofing guard drops. The client then starts over with Solicit.
      const addrs = answered.filter((i) => i.kind !== 'ia-pd').flatMap(addressesIn);
      if (addrs.length === 0) return drop('confirm-without-addresses');
      const ok = addrs.every((a) => s.isOurs(a));
      return reply('REPLY', request, msg, ctx, [...s.ids(), status(ok ? 'Success' : 'NotOnLink')]);
    }

    case 'release':
    case 'decline': {
      // §18.3.7-18.3.8: Success overall, NoBinding for each IA that holds
      // nothing of ours. The addresses stay the VM's: there is no one else
      // to give them to, and a decline means something on the wire claims
      // the pod's address, which the operator has to hear about.
      const out: Dhcp6Option[] = [];
      const mine: string[] = [];
      for (const ia of answered) {
        const held = ia.kind === 'ia-na' ? addressesIn(ia).filter((a) => s.isOurs(a)) : [];
        if (held.length === 0) out.push(s.refused(ia, 'NoBinding'));
        else mine.push(...held);
      }
      if (mine.length > 0) {
        if (request === 'release') lease.released(ctx.now, mine);
        else lease.declined(ctx.now, mine);
      }
      const detail = mine.length > 0 ? mine.join(' ') : 'no address of ours';
      return reply('REPLY', request, msg, ctx, [...s.ids(), ...out, status('Success')], { event: request, detail });
    }

    case 'information-request': {
      const out = [...s.ids(), ...s.configOptions()];
      out.push({ kind: 'information-refresh-time', seconds: config.informationRefreshSeconds });
      return reply('REPLY', request, msg, ctx, out);
    }
  }
}
