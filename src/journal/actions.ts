// What a journal step does, as data podtap interprets. Each kind of action
// has typed arguments; before podtap acts on a journal written by anyone
// (itself, an earlier run, or whoever could write the state dir), every
// argument is checked against what that kind allows, and command lines are
// built from the checked values only. Nothing in a journal is ever passed
// through to a shell, to `ip`, to `nft` or to a file path.

import type { Address, Neighbour, Route } from '../pod/model.ts';
import { parseIpv4 } from '../net/ipv4.ts';
import { parseIpv6 } from '../net/ipv6.ts';
import { validIfname, validMac } from '../net/names.ts';
import { validateNftTable, type NftTable } from '../plan/guard.ts';

export type AddrGenMode = 'eui64' | 'none' | 'stable_secret' | 'random';

export interface TapSpec {
  name: string;
  queues: number;
  persist: boolean;
  owner?: { uid: number; gid?: number };
  reattach?: boolean; // attach to an existing tap instead of insisting on creating it
}

export type Action =
  | { op: 'tap-open'; tap: TapSpec } // open the TAP's queues in podtap itself
  | { op: 'bridge-add'; name: string; mac: string; mtu: number }
  | { op: 'link-del'; name: string }
  | { op: 'link-set'; name: string; mac?: string; mtu?: number; master?: string | null; addrGenMode?: AddrGenMode; up?: boolean }
  | { op: 'port-set'; name: string; learning: boolean } // bridge port options
  | { op: 'addr-add'; dev: string; addr: Address } // `replace`: idempotent
  | { op: 'addr-del'; dev: string; addr: Address }
  | { op: 'route-add'; route: Route } // `replace`: idempotent
  | { op: 'route-del'; route: Route }
  | { op: 'neigh-add'; neigh: Neighbour } // `replace ... nud permanent`
  | { op: 'neigh-del'; neigh: Neighbour }
  | { op: 'nft-load'; table: NftTable } // podtap's own table, rendered from typed rules
  | { op: 'nft-delete'; family: NftTable['family']; name: string };

export interface Step {
  id: string; // stable, human-readable: "nic0/route-del/2", "nic1/bridge-add", ...
  do: Action[];
  undo: Action[];
  /**
   * Independent of the steps after it (the guard refers to devices that
   * exist by then): started when reached, and run alongside the rest.
   * Write-ahead is unaffected, the journal holds it before anything runs.
   */
  background?: boolean;
}

// ---------------------------------------------------------------- checking

const ADDR_GEN_MODES: AddrGenMode[] = ['eui64', 'none', 'stable_secret', 'random'];
const SCOPES = ['global', 'universe', 'link', 'host', 'site', 'nowhere'];
const ROUTE_TYPES = ['unicast', 'local', 'broadcast', 'multicast', 'anycast', 'unreachable', 'prohibit', 'blackhole', 'throw'];
const TABLES = ['main', 'local', 'default'];
const PREFS = ['low', 'medium', 'high'];
export const ADDR_FLAG_WORDS = ['secondary', 'nodad', 'noprefixroute', 'home', 'mngtmpaddr', 'optimistic', 'autojoin', 'dadfailed', 'deprecated', 'tentative', 'dynamic', 'stable-privacy', 'permanent'];
const WORD = /^[a-z][a-z0-9_-]{0,31}$/;
const NUMBER = /^\d{1,10}$/;
const LABEL = /^[A-Za-z0-9_.:-]{1,15}$/;
const LLADDR = /^[0-9a-f]{2}(:[0-9a-f]{2}){0,31}$/;

class Bad extends Error {}

function fail(what: string, value: unknown): never {
  throw new Bad(`${what} ${JSON.stringify(value)}`);
}

function ifname(v: unknown, what = 'interface name'): string {
  if (typeof v !== 'string' || !validIfname(v)) fail(`bad ${what}`, v);
  return v;
}

function int(v: unknown, min: number, max: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(`bad ${what}`, v);
  return v;
}

function oneOf<T extends string>(v: unknown, allowed: readonly T[], what: string): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) fail(`bad ${what}`, v);
  return v as T;
}

function ip(v: unknown, family: 'inet' | 'inet6' | undefined, what: string): string {
  if (typeof v !== 'string') fail(`bad ${what}`, v);
  const ok = family === 'inet' ? parseIpv4(v) !== undefined : family === 'inet6' ? parseIpv6(v) !== undefined : parseIpv4(v) !== undefined || parseIpv6(v) !== undefined;
  if (!ok) fail(`bad ${what}`, v);
  return v;
}

function family(v: unknown): 'inet' | 'inet6' {
  return oneOf(v, ['inet', 'inet6'] as const, 'address family');
}

function scope(v: unknown): string {
  if (typeof v === 'string' && (SCOPES.includes(v) || /^\d{1,3}$/.test(v))) return v;
  fail('bad scope', v);
}

function prefix(v: unknown, f: 'inet' | 'inet6', what: string): string {
  if (v === 'default') return v;
  if (typeof v !== 'string') fail(`bad ${what}`, v);
  const slash = v.indexOf('/');
  ip(slash < 0 ? v : v.slice(0, slash), f, what);
  if (slash >= 0) int(/^\d{1,3}$/.test(v.slice(slash + 1)) ? Number(v.slice(slash + 1)) : NaN, 0, f === 'inet' ? 32 : 128, `${what} prefix length`);
  return v;
}

function checkAddress(a: Address): void {
  if (!a || typeof a !== 'object') fail('bad address', a);
  const f = family(a.family);
  ip(a.local, f, 'address');
  int(a.prefixlen, 0, f === 'inet' ? 32 : 128, 'prefix length');
  if (a.broadcast !== undefined) ip(a.broadcast, 'inet', 'broadcast address');
  if (a.peer !== undefined) ip(a.peer, f, 'peer address');
  scope(a.scope);
  if (a.label !== undefined && (typeof a.label !== 'string' || !LABEL.test(a.label))) fail('bad address label', a.label);
  if (!Array.isArray(a.flags)) fail('bad address flags', a.flags);
  for (const x of a.flags) oneOf(x, ADDR_FLAG_WORDS, 'address flag');
  if (a.metric !== undefined) int(a.metric, 0, 2 ** 32 - 1, 'address metric');
  if (a.validLft !== undefined) int(a.validLft, 0, 2 ** 32 - 1, 'valid lifetime');
  if (a.preferredLft !== undefined) int(a.preferredLft, 0, 2 ** 32 - 1, 'preferred lifetime');
}

function checkRoute(r: Route): void {
  if (!r || typeof r !== 'object') fail('bad route', r);
  const f = family(r.family);
  if (!TABLES.includes(r.table) && !NUMBER.test(String(r.table))) fail('bad route table', r.table);
  oneOf(r.type, ROUTE_TYPES, 'route type');
  prefix(r.dst, f, 'route destination');
  if (r.gateway !== undefined) ip(r.gateway, undefined, 'gateway');
  // A multipath route's devices are its next hops'.
  if (r.dev !== undefined || !r.nexthops?.length) ifname(r.dev);
  if (r.protocol !== undefined && !(WORD.test(r.protocol) || NUMBER.test(r.protocol))) fail('bad route protocol', r.protocol);
  if (r.scope !== undefined) scope(r.scope);
  if (r.metric !== undefined) int(r.metric, 0, 2 ** 32 - 1, 'route metric');
  if (r.prefsrc !== undefined) ip(r.prefsrc, f, 'route source');
  if (!Array.isArray(r.flags) || r.flags.some((x) => typeof x !== 'string' || !WORD.test(x))) fail('bad route flags', r.flags);
  if (r.pref !== undefined) oneOf(r.pref, PREFS, 'route preference');
  if (r.tos !== undefined && !/^(0x)?[0-9a-f]{1,2}$/i.test(r.tos)) fail('bad route tos', r.tos);
  if (r.mtu !== undefined) int(r.mtu, 68, 65535, 'route mtu');
  if (r.nexthops !== undefined) {
    if (!Array.isArray(r.nexthops) || r.nexthops.length > 64) fail('bad next hops', r.nexthops);
    for (const h of r.nexthops) {
      if (h.gateway !== undefined) ip(h.gateway, undefined, 'next hop gateway');
      ifname(h.dev, 'next hop device');
      if (h.weight !== undefined) int(h.weight, 1, 256, 'next hop weight');
      if (h.flags !== undefined && (!Array.isArray(h.flags) || h.flags.some((x) => typeof x !== 'string' || !WORD.test(x)))) fail('bad next hop flags', h.flags);
    }
  }
}

function checkNeighbour(n: Neighbour): void {
  if (!n || typeof n !== 'object') fail('bad neighbour', n);
  ip(n.dst, family(n.family), 'neighbour address');
  if (n.lladdr !== undefined && (typeof n.lladdr !== 'string' || !LLADDR.test(n.lladdr))) fail('bad link-layer address', n.lladdr);
  ifname(n.dev);
  if (typeof n.router !== 'boolean' || typeof n.proxy !== 'boolean') fail('bad neighbour flags', n);
}

function checkTap(t: TapSpec): void {
  if (!t || typeof t !== 'object') fail('bad tap', t);
  ifname(t.name, 'tap name');
  int(t.queues, 1, 256, 'queue count');
  if (typeof t.persist !== 'boolean') fail('bad tap persistence', t.persist);
  if (t.owner !== undefined) {
    int(t.owner.uid, 0, 4294967294, 'tap owner');
    if (t.owner.gid !== undefined) int(t.owner.gid, 0, 4294967294, 'tap group');
  }
}

/** Throws a plain Error naming the first bad argument. */
export function checkAction(a: Action): void {
  try {
    if (!a || typeof a !== 'object') fail('not an action:', a);
    switch (a.op) {
      case 'tap-open':
        return checkTap(a.tap);
      case 'bridge-add':
        ifname(a.name, 'bridge name');
        if (typeof a.mac !== 'string' || !validMac(a.mac)) fail('bad MAC', a.mac);
        int(a.mtu, 68, 65535, 'MTU');
        return;
      case 'link-del':
        ifname(a.name);
        return;
      case 'link-set':
        ifname(a.name);
        if (a.mac !== undefined && (typeof a.mac !== 'string' || !validMac(a.mac))) fail('bad MAC', a.mac);
        if (a.mtu !== undefined) int(a.mtu, 68, 65535, 'MTU');
        if (a.master !== undefined && a.master !== null) ifname(a.master, 'master');
        if (a.addrGenMode !== undefined) oneOf(a.addrGenMode, ADDR_GEN_MODES, 'addrgenmode');
        if (a.up !== undefined && typeof a.up !== 'boolean') fail('bad up flag', a.up);
        return;
      case 'port-set':
        ifname(a.name);
        if (typeof a.learning !== 'boolean') fail('bad learning flag', a.learning);
        return;
      case 'addr-add':
      case 'addr-del':
        ifname(a.dev);
        return checkAddress(a.addr);
      case 'route-add':
      case 'route-del':
        return checkRoute(a.route);
      case 'neigh-add':
      case 'neigh-del':
        return checkNeighbour(a.neigh);
      case 'nft-load':
        return validateNftTable(a.table);
      case 'nft-delete':
        oneOf(a.family, ['bridge', 'netdev'] as const, 'nftables family');
        oneOf(a.name, ['podtap'] as const, 'nftables table (podtap deletes only its own)');
        return;
      default:
        fail('unknown action', (a as { op?: unknown }).op);
    }
  } catch (e) {
    if (e instanceof Bad) throw new Error(`${(a as { op?: string })?.op ?? 'action'}: ${e.message}`);
    throw e;
  }
}

export function checkStep(s: Step): void {
  if (!s || typeof s !== 'object' || typeof s.id !== 'string' || !/^[A-Za-z0-9_./-]{1,64}$/.test(s.id)) throw new Error(`bad step id ${JSON.stringify(s?.id)}`);
  if (!Array.isArray(s.do) || !Array.isArray(s.undo)) throw new Error(`step ${s.id}: no action lists`);
  if (s.background !== undefined && typeof s.background !== 'boolean') throw new Error(`step ${s.id}: bad background flag`);
  for (const a of [...s.do, ...s.undo]) {
    try {
      checkAction(a);
    } catch (e) {
      throw new Error(`step ${s.id}: ${(e as Error).message}`);
    }
  }
  // Nothing is ever deleted on the way forward (adoption re-runs do-actions).
  for (const a of s.do) if (a.op === 'link-del') throw new Error(`step ${s.id}: deletes the link ${a.name} while setting up`);
  // podtap deletes only links it created: a tap it opened or a bridge it added.
  const created = new Set(s.do.flatMap((a) => (a.op === 'tap-open' ? [a.tap.name] : a.op === 'bridge-add' ? [a.name] : [])));
  for (const a of s.undo) {
    if (a.op === 'link-del' && !created.has(a.name)) throw new Error(`step ${s.id}: deletes ${a.name}, which the step did not create`);
  }
}

// -------------------------------------------------------------- rendering

const FAMILY_DEFAULT = { inet: 'default', inet6: '::/0' } as const;

function dstOf(r: Route): string {
  return r.dst === 'default' ? FAMILY_DEFAULT[r.family] : r.dst;
}

/** The words that identify and recreate a route, in `ip route` syntax. */
export function routeSpec(r: Route): string {
  const w: string[] = [];
  if (r.type && r.type !== 'unicast') w.push(r.type);
  w.push(dstOf(r));
  if (r.tos) w.push('tos', r.tos);
  const multipath = !!r.nexthops?.length;
  if (!multipath) {
    if (r.gateway) w.push('via', r.gateway);
    w.push('dev', r.dev!);
  }
  w.push('table', r.table);
  if (r.protocol) w.push('proto', r.protocol);
  if (r.family === 'inet' && r.scope) w.push('scope', r.scope);
  if (r.metric !== undefined) w.push('metric', String(r.metric));
  if (r.prefsrc) w.push('src', r.prefsrc);
  if (r.mtu !== undefined) w.push('mtu', String(r.mtu));
  if (r.flags.includes('onlink') && !multipath) w.push('onlink');
  if (r.pref) w.push('pref', r.pref);
  // ip wants the next hops last: nothing may follow them on the line.
  for (const h of multipath ? r.nexthops! : []) {
    w.push('nexthop');
    if (h.gateway) w.push('via', h.gateway);
    w.push('dev', h.dev);
    if (h.weight !== undefined) w.push('weight', String(h.weight));
    if (h.flags?.includes('onlink')) w.push('onlink');
  }
  return w.join(' ');
}

function addrId(a: Address): string {
  return a.peer ? `${a.local} peer ${a.peer}/${a.prefixlen}` : `${a.local}/${a.prefixlen}`;
}

const SETTABLE_ADDR_FLAGS = ['nodad', 'noprefixroute', 'home', 'mngtmpaddr', 'autojoin'];

/** `addr replace` so restoring is idempotent: replaying it twice changes nothing. */
export function addrRestore(a: Address, dev: string): string {
  const w = ['addr replace', addrId(a)];
  if (a.broadcast) w.push('broadcast', a.broadcast);
  w.push('scope', a.scope);
  if (a.label && a.family === 'inet') w.push('label', a.label);
  if (a.metric !== undefined) w.push('metric', String(a.metric));
  for (const f of SETTABLE_ADDR_FLAGS) if (a.flags.includes(f)) w.push(f);
  if (a.validLft !== undefined) w.push('valid_lft', String(a.validLft), 'preferred_lft', String(a.preferredLft ?? a.validLft));
  w.push('dev', dev);
  return w.join(' ');
}

function neighSpec(n: Neighbour): string {
  const w = [n.dst];
  if (n.lladdr) w.push('lladdr', n.lladdr);
  w.push('dev', n.dev);
  return w.join(' ');
}

/**
 * The `ip -batch` lines of an action that is carried out by iproute2, or
 * undefined for the other kinds. Only for checked actions.
 */
export function ipLines(a: Action): string[] | undefined {
  switch (a.op) {
    case 'bridge-add':
      // Forwarding at once (no STP, no forward delay), multicast flooded so
      // the guest's IPv6 neighbour discovery works without snooping, and no
      // IPv6 address of its own, so it never speaks (RS, MLD, DAD).
      return [`link add name ${a.name} address ${a.mac} mtu ${a.mtu} type bridge stp_state 0 forward_delay 0 mcast_snooping 0`, `link set dev ${a.name} addrgenmode none`];
    case 'link-del':
      return [`link del dev ${a.name}`];
    case 'link-set': {
      const w = ['link set dev', a.name];
      if (a.mac) w.push('address', a.mac);
      if (a.mtu !== undefined) w.push('mtu', String(a.mtu));
      if (a.master === null) w.push('nomaster');
      else if (a.master !== undefined) w.push('master', a.master);
      if (a.addrGenMode) w.push('addrgenmode', a.addrGenMode);
      if (a.up !== undefined) w.push(a.up ? 'up' : 'down');
      return [w.join(' ')];
    }
    case 'port-set':
      return [`link set dev ${a.name} type bridge_slave learning ${a.learning ? 'on' : 'off'}`];
    case 'addr-add':
      return [addrRestore(a.addr, a.dev)];
    case 'addr-del':
      return [`addr del ${addrId(a.addr)} dev ${a.dev}`];
    case 'route-add':
      return [`route replace ${routeSpec(a.route)}`];
    case 'route-del':
      return [`route del ${routeSpec(a.route)}`];
    case 'neigh-add':
      return [`neigh replace ${neighSpec(a.neigh)} nud permanent${a.neigh.router ? ' router' : ''}`];
    case 'neigh-del':
      return [`neigh del ${neighSpec(a.neigh)}`];
    default:
      return undefined;
  }
}

/** A short text for logs and failure reports. */
export function describeAction(a: Action): string {
  const lines = ipLines(a);
  if (lines) return `ip ${lines.join('; ')}`;
  switch (a.op) {
    case 'tap-open':
      return `open tap ${a.tap.name} (${a.tap.queues} queue${a.tap.queues > 1 ? 's' : ''})`;
    case 'nft-load':
      return `nft load table ${a.table.family} ${a.table.name}`;
    case 'nft-delete':
      return `nft delete table ${a.family} ${a.name}`;
    default:
      return a.op;
  }
}
