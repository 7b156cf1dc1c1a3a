// A step is one mutation of the namespace with the actions that undo it.
// Steps are plain JSON so the journal can hold them and `podtap down` can
// replay the undo actions in another process after a crash.

import type { Address, Route, Neighbour } from '../pod/model.ts';

export type Action =
  | { ip: string } // one `ip -batch` line
  | { sysctl: string; value: string } // a key under /proc/sys
  | { nft: string } // an `nft -f` script
  | { tap: TapSpec }; // open the TAP's queues in podtap itself

export interface TapSpec {
  name: string;
  queues: number;
  persist: boolean;
  owner?: { uid: number; gid?: number };
  reattach?: boolean; // attach to an existing tap instead of insisting on creating it
}

export interface Step {
  id: string; // stable, human-readable: "route-del/2", "bridge-add", ...
  do: Action[];
  undo: Action[];
  /**
   * Independent of every other step (the guard matches interface names as
   * text, so it can load before the links exist): run alongside the others.
   * Write-ahead is unaffected, the journal holds it before anything runs.
   */
  background?: boolean;
}

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
  if (r.nexthops && r.nexthops.length) {
    for (const h of r.nexthops) {
      w.push('nexthop');
      if (h.gateway) w.push('via', h.gateway);
      w.push('dev', h.dev);
      if (h.weight !== undefined) w.push('weight', String(h.weight));
      if (h.flags?.includes('onlink')) w.push('onlink');
    }
  } else {
    if (r.gateway) w.push('via', r.gateway);
    w.push('dev', r.dev);
  }
  w.push('table', r.table);
  if (r.protocol) w.push('proto', r.protocol);
  if (r.family === 'inet' && r.scope) w.push('scope', r.scope);
  if (r.metric !== undefined) w.push('metric', String(r.metric));
  if (r.prefsrc) w.push('src', r.prefsrc);
  if (r.flags.includes('onlink') && !r.nexthops) w.push('onlink');
  if (r.pref) w.push('pref', r.pref);
  return w.join(' ');
}

function addrId(a: Address): string {
  return a.peer ? `${a.local} peer ${a.peer}/${a.prefixlen}` : `${a.local}/${a.prefixlen}`;
}

export function addrDel(a: Address, dev: string): string {
  return `addr del ${addrId(a)} dev ${dev}`;
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

export function neighSpec(n: Neighbour): string {
  const w = [n.dst];
  if (n.lladdr) w.push('lladdr', n.lladdr);
  w.push('dev', n.dev);
  return w.join(' ');
}

export function neighRestore(n: Neighbour): string {
  return `neigh replace ${neighSpec(n)} nud permanent${n.router ? ' router' : ''}`;
}
