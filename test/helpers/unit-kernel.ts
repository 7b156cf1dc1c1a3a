// A small model of the kernel state podtap changes (links, addresses, routes,
// permanent neighbours, nftables tables), for unit tests of plans without
// root. It keeps the rules that make order matter on a real kernel:
//
//   - adding an address adds its prefix route (unless /32, /128, peer or
//     noprefixroute) and makes an IPv4 address secondary when a primary of
//     its subnet is already there;
//   - deleting a primary IPv4 address deletes its secondaries (the default
//     promote_secondaries=0), its prefix route and every route that uses it
//     as a source; deleting a link's last IPv4 address flushes every IPv4
//     route through the link;
//   - a route through a gateway needs an on-link route to it (or `onlink`),
//     and a route's source must be an address that exists;
//   - deleting what is not there fails with the messages iproute2 prints.
//
// `effects()` plugs the model into the real execute/undoSteps as their
// Effects, by mapping each rendered `ip -batch` line and nft script back to
// the action it came from.

import { ipLines, type Action, type Step } from '../../src/journal/actions.ts';
import type { Effects, Runtime } from '../../src/journal/apply.ts';
import { removalScript, renderTable, type NftTable } from '../../src/plan/guard.ts';
import type { BatchFailure } from '../../src/sys/ip.ts';
import { contains, networkOf, formatIpv4, parseIpv4 } from '../../src/net/ipv4.ts';
import { network6, parseIpv6 } from '../../src/net/ipv6.ts';
import type { Address, Family, Neighbour, Pod, Route } from '../../src/pod/model.ts';

export class KernelError extends Error {}

export interface LinkState {
  name: string;
  kind: string;
  mac: string;
  mtu: number;
  up: boolean;
  master?: string;
  addrGenMode?: string;
  learning?: boolean;
}

interface AddrState {
  dev: string;
  addr: Address;
  secondary: boolean;
}

const NO_DEVICE = (name: string) => new KernelError(`Cannot find device "${name}"`);

function prefixOf(family: Family, dst: string): { net: bigint; len: number } | undefined {
  if (dst === 'default') return { net: 0n, len: 0 };
  const [a, l] = dst.split('/');
  if (family === 'inet') {
    const v = parseIpv4(a!);
    return v === undefined ? undefined : { net: BigInt(v), len: l === undefined ? 32 : Number(l) };
  }
  const v = parseIpv6(a!);
  return v === undefined ? undefined : { net: v, len: l === undefined ? 128 : Number(l) };
}

function covers(r: Route, addr: string): boolean {
  const p = prefixOf(r.family, r.dst);
  const bits = r.family === 'inet' ? 32 : 128;
  const v = r.family === 'inet' ? (parseIpv4(addr) !== undefined ? BigInt(parseIpv4(addr)!) : undefined) : parseIpv6(addr);
  if (!p || v === undefined) return false;
  const shift = BigInt(bits - p.len);
  return v >> shift === p.net >> shift;
}

/** The network of an address as a route destination, or undefined when the kernel adds no prefix route for it. */
function prefixRouteDst(a: Address): string | undefined {
  if (a.flags.includes('noprefixroute') || a.peer) return undefined;
  if (a.family === 'inet') return a.prefixlen >= 32 ? undefined : `${formatIpv4(networkOf(parseIpv4(a.local)!, a.prefixlen))}/${a.prefixlen}`;
  return a.prefixlen >= 128 ? undefined : `${network6(a.local, a.prefixlen)}/${a.prefixlen}`;
}

const metricOf = (r: Route) => r.metric ?? (r.family === 'inet6' ? 1024 : 0);
const scopeOf = (r: Route) => r.scope ?? (r.gateway || r.nexthops ? 'global' : 'link');
const isLinkLocal6 = (a: string) => /^fe[89ab]/i.test(a);

function sameAddress(x: Address, y: Address): boolean {
  return x.family === y.family && x.local === y.local && (x.family === 'inet6' || (x.prefixlen === y.prefixlen && (x.peer ?? '') === (y.peer ?? '')));
}

/** A route's identity for `replace`: the kernel's key (table, destination, tos, metric). */
function routeKey(r: Route): string {
  return `${r.family} ${r.table} ${r.dst} ${r.tos ?? ''} ${metricOf(r)}`;
}

export function routeText(r: Route): string {
  const hops = r.nexthops ? ' ' + r.nexthops.map((h) => `nexthop ${h.gateway ?? ''} ${h.dev}`).join(' ') : '';
  return `${r.family} ${r.table} ${r.type} ${r.dst}${r.gateway ? ` via ${r.gateway}` : ''} dev ${r.dev} proto ${r.protocol ?? 'boot'} scope ${scopeOf(r)} metric ${metricOf(r)}${r.prefsrc ? ` src ${r.prefsrc}` : ''}${r.pref ? ` pref ${r.pref}` : ''}${r.flags.includes('onlink') ? ' onlink' : ''}${hops}`;
}

export interface Snapshot {
  links: LinkState[];
  addresses: string[];
  routes: string[];
  neighbours: string[];
  nft: string[];
}

export class ModelKernel {
  links = new Map<string, LinkState>();
  addresses: AddrState[] = [];
  routes: Route[] = [];
  neighbours: Neighbour[] = [];
  nft = new Map<string, NftTable>();
  /** Every action applied, in order (ip lines and nft as they came). */
  applied: Action[] = [];

  /** The kernel as discovery found the pod: its links, addresses, routes (local table aside) and permanent neighbours. */
  static of(pod: Pod): ModelKernel {
    const k = new ModelKernel();
    k.links.set('lo', { name: 'lo', kind: 'loopback', mac: '00:00:00:00:00:00', mtu: 65536, up: true });
    for (const i of pod.interfaces) {
      const l = i.link;
      k.links.set(l.name, { name: l.name, kind: l.kind, mac: l.mac, mtu: l.mtu, up: l.up, ...(l.master ? { master: l.master } : {}), ...(l.addrGenMode ? { addrGenMode: l.addrGenMode } : {}) });
      for (const a of i.addresses) k.addresses.push({ dev: l.name, addr: a, secondary: a.flags.includes('secondary') });
      for (const r of i.routes) if (r.table !== 'local' && !k.routes.includes(r)) k.routes.push(r);
      k.neighbours.push(...i.neighbours.filter((n) => n.permanent));
    }
    return k;
  }

  link(name: string): LinkState {
    const l = this.links.get(name);
    if (!l) throw NO_DEVICE(name);
    return l;
  }

  snapshot(): Snapshot {
    return {
      links: [...this.links.values()].map((l) => ({ ...l })).sort((a, b) => a.name.localeCompare(b.name)),
      addresses: this.addresses.map((a) => `${a.dev} ${a.addr.family} ${a.addr.local}/${a.addr.prefixlen} scope ${a.addr.scope}${a.secondary ? ' secondary' : ''}${a.addr.broadcast ? ` brd ${a.addr.broadcast}` : ''}${a.addr.flags.filter((f) => f !== 'secondary').map((f) => ' ' + f).join('')}`).sort(),
      routes: this.routes.map(routeText).sort(),
      neighbours: this.neighbours.map((n) => `${n.dev} ${n.dst} ${n.lladdr ?? ''}${n.router ? ' router' : ''}`).sort(),
      nft: [...this.nft.keys()].sort(),
    };
  }

  /** What is left on one device. */
  on(dev: string): { addresses: Address[]; routes: Route[]; neighbours: Neighbour[] } {
    return {
      addresses: this.addresses.filter((a) => a.dev === dev).map((a) => a.addr),
      routes: this.routes.filter((r) => r.dev === dev || r.nexthops?.some((h) => h.dev === dev)),
      neighbours: this.neighbours.filter((n) => n.dev === dev),
    };
  }

  apply(a: Action): void {
    this.applied.push(a);
    switch (a.op) {
      case 'tap-open':
        if (this.links.has(a.tap.name) && !a.tap.reattach) throw new KernelError('TUNSETIFF: Device or resource busy');
        this.links.set(a.tap.name, { name: a.tap.name, kind: 'tun', mac: '02:00:00:00:ee:ee', mtu: 1500, up: false });
        return;
      case 'bridge-add':
        if (this.links.has(a.name)) throw new KernelError('RTNETLINK answers: File exists');
        this.links.set(a.name, { name: a.name, kind: 'bridge', mac: a.mac, mtu: a.mtu, up: false, addrGenMode: 'none' });
        return;
      case 'link-del': {
        const l = this.link(a.name);
        this.links.delete(a.name);
        for (const p of this.links.values()) {
          if (p.master === l.name) {
            delete p.master;
            delete p.learning;
          }
        }
        this.addresses = this.addresses.filter((x) => x.dev !== a.name);
        this.routes = this.routes.filter((r) => r.dev !== a.name);
        this.neighbours = this.neighbours.filter((n) => n.dev !== a.name);
        return;
      }
      case 'link-set': {
        const l = this.link(a.name);
        if (a.master !== undefined && a.master !== null) {
          const m = this.link(a.master);
          if (m.kind !== 'bridge') throw new KernelError('RTNETLINK answers: Invalid argument');
        }
        if (a.mac !== undefined) l.mac = a.mac;
        if (a.mtu !== undefined) l.mtu = a.mtu;
        if (a.master === null) {
          delete l.master;
          delete l.learning;
        } else if (a.master !== undefined) {
          l.master = a.master;
          l.learning = true;
        }
        if (a.addrGenMode !== undefined) l.addrGenMode = a.addrGenMode;
        if (a.up !== undefined) l.up = a.up;
        return;
      }
      case 'port-set': {
        const l = this.link(a.name);
        if (!l.master) throw new KernelError('RTNETLINK answers: Operation not supported');
        l.learning = a.learning;
        return;
      }
      case 'addr-add':
        return this.addrAdd(a.dev, a.addr);
      case 'addr-del':
        return this.addrDel(a.dev, a.addr);
      case 'route-add':
        return this.routeAdd(a.route);
      case 'route-del':
        return this.routeDel(a.route);
      case 'neigh-add': {
        this.link(a.neigh.dev);
        this.neighbours = this.neighbours.filter((n) => !(n.dev === a.neigh.dev && n.dst === a.neigh.dst));
        this.neighbours.push({ ...a.neigh, permanent: true });
        return;
      }
      case 'neigh-del': {
        this.link(a.neigh.dev);
        const i = this.neighbours.findIndex((n) => n.dev === a.neigh.dev && n.dst === a.neigh.dst);
        if (i < 0) throw new KernelError('RTNETLINK answers: No such file or directory');
        this.neighbours.splice(i, 1);
        return;
      }
      case 'nft-load':
        this.nft.set(a.table.family, a.table);
        return;
      case 'nft-delete':
        this.nft.delete(a.family);
        return;
    }
  }

  private addrAdd(dev: string, a: Address): void {
    this.link(dev);
    const had = this.addresses.find((x) => x.dev === dev && sameAddress(x.addr, a));
    if (had) {
      had.addr = a; // `replace` of an address that is there changes nothing else
      return;
    }
    const net = prefixRouteDst(a);
    const secondary =
      a.family === 'inet' &&
      this.addresses.some((x) => x.dev === dev && x.addr.family === 'inet' && !x.secondary && x.addr.prefixlen === a.prefixlen && contains(networkOf(parseIpv4(x.addr.local)!, x.addr.prefixlen), a.prefixlen, parseIpv4(a.local)!));
    this.addresses.push({ dev, addr: a, secondary });
    if (net && !secondary) {
      const r: Route =
        a.family === 'inet'
          ? { family: 'inet', table: 'main', type: 'unicast', dst: net, dev, protocol: 'kernel', scope: 'link', prefsrc: a.local, flags: [], ...(a.metric !== undefined ? { metric: a.metric } : {}) }
          : { family: 'inet6', table: 'main', type: 'unicast', dst: net, dev, protocol: 'kernel', metric: a.metric ?? 256, pref: 'medium', flags: [] };
      if (!this.routes.some((x) => routeText(x) === routeText(r))) this.routes.push(r);
    }
  }

  private addrDel(dev: string, a: Address): void {
    this.link(dev);
    const i = this.addresses.findIndex((x) => x.dev === dev && sameAddress(x.addr, a));
    if (i < 0) throw new KernelError('RTNETLINK answers: Cannot assign requested address');
    const gone = this.addresses[i]!;
    let removed = [gone];
    if (a.family === 'inet' && !gone.secondary) {
      // promote_secondaries=0: the primary takes its secondaries with it.
      const net = networkOf(parseIpv4(a.local)!, a.prefixlen);
      removed = removed.concat(this.addresses.filter((x) => x !== gone && x.dev === dev && x.secondary && x.addr.family === 'inet' && x.addr.prefixlen === a.prefixlen && networkOf(parseIpv4(x.addr.local)!, a.prefixlen) === net));
    }
    this.addresses = this.addresses.filter((x) => !removed.includes(x));
    for (const r of removed) {
      const net = prefixRouteDst(r.addr);
      const stillThere = this.addresses.some((x) => x.dev === dev && prefixRouteDst(x.addr) === net);
      if (net && !stillThere) this.routes = this.routes.filter((x) => !(x.dev === dev && x.protocol === 'kernel' && x.dst === net && x.family === r.addr.family));
      if (r.addr.family === 'inet') this.routes = this.routes.filter((x) => x.prefsrc !== r.addr.local);
    }
    if (a.family === 'inet' && !this.addresses.some((x) => x.dev === dev && x.addr.family === 'inet')) {
      // The link's last IPv4 address: the kernel flushes its IPv4 routes.
      this.routes = this.routes.filter((x) => !(x.family === 'inet' && (x.dev === dev || x.nexthops?.some((h) => h.dev === dev))));
    }
  }

  private checkGateway(family: Family, gw: string, dev: string, onlink: boolean): void {
    if (onlink) return;
    if (family === 'inet6' && isLinkLocal6(gw)) return;
    const reach = this.routes.some((r) => r.family === family && r.table === 'main' && r.type === 'unicast' && r.dev === dev && !r.gateway && !r.nexthops && covers(r, gw));
    if (!reach) throw new KernelError('Error: Nexthop has invalid gateway.');
  }

  private routeAdd(r: Route): void {
    if (r.nexthops?.length) {
      for (const h of r.nexthops) {
        this.link(h.dev);
        if (h.gateway) this.checkGateway(r.family, h.gateway, h.dev, !!h.flags?.includes('onlink'));
      }
    } else {
      if (!r.dev) throw new KernelError('Error: Device for nexthop is not up.');
      this.link(r.dev);
      if (r.gateway) this.checkGateway(r.family, r.gateway, r.dev, r.flags.includes('onlink'));
    }
    if (r.prefsrc && !this.addresses.some((x) => x.addr.family === r.family && x.addr.local === r.prefsrc))
      throw new KernelError(r.family === 'inet' ? 'Error: Invalid prefsrc address.' : 'Error: Invalid source address.');
    const key = routeKey(r);
    this.routes = this.routes.filter((x) => routeKey(x) !== key);
    this.routes.push(r);
  }

  private routeDel(spec: Route): void {
    const i = this.routes.findIndex(
      (r) =>
        r.family === spec.family &&
        r.table === spec.table &&
        r.type === spec.type &&
        r.dst === spec.dst &&
        (r.tos ?? '') === (spec.tos ?? '') &&
        (spec.nexthops ? JSON.stringify(r.nexthops) === JSON.stringify(spec.nexthops) : r.dev === spec.dev) &&
        (spec.gateway === undefined || r.gateway === spec.gateway) &&
        (spec.protocol === undefined || (r.protocol ?? 'boot') === spec.protocol) &&
        (spec.metric === undefined || metricOf(r) === spec.metric) &&
        (spec.family === 'inet6' || spec.scope === undefined || scopeOf(r) === spec.scope) &&
        (spec.prefsrc === undefined || r.prefsrc === spec.prefsrc),
    );
    if (i < 0) throw new KernelError('RTNETLINK answers: No such process');
    this.routes.splice(i, 1);
  }

  /**
   * The model as the Effects of execute/undoSteps. Every line and script
   * must come from an action of `steps`; anything else is a test failure.
   */
  effects(steps: Step[]): Effects {
    const byLine = new Map<string, { action: Action; index: number }>();
    const byScript = new Map<string, Action>();
    for (const a of steps.flatMap((s) => [...s.do, ...s.undo])) {
      (ipLines(a) ?? []).forEach((line, index) => {
        const had = byLine.get(line);
        if (!had || (had.index > 0 && index === 0)) byLine.set(line, { action: a, index });
      });
      if (a.op === 'nft-load') byScript.set(renderTable(a.table), a);
      if (a.op === 'nft-delete') byScript.set(removalScript(a.family), a);
    }
    return {
      ipBatch: async (lines, opts) => {
        const out: BatchFailure[] = [];
        for (const [i, line] of lines.entries()) {
          const entry = byLine.get(line);
          if (!entry) throw new Error(`an ip line no action of the plan renders: ${line}`);
          try {
            if (entry.index === 0) this.apply(entry.action);
          } catch (e) {
            if (!(e instanceof KernelError)) throw e;
            out.push({ line: i, command: line, message: e.message });
            if (!opts?.force) break;
          }
        }
        return out;
      },
      nft: async (script) => {
        const a = byScript.get(script);
        if (!a) throw new Error(`an nft script no action of the plan renders:\n${script}`);
        this.apply(a);
        return undefined;
      },
      settle: async () => 0,
    };
  }

  /** A Runtime for execute whose TAPs are opened in the model. */
  runtime(steps: Step[], log: Runtime['log'] = () => {}): Runtime {
    let fd = 100;
    return {
      log,
      effects: this.effects(steps),
      openTap: (spec) => {
        this.apply({ op: 'tap-open', tap: spec });
        return Array.from({ length: spec.queues }, () => fd++);
      },
    };
  }
}
