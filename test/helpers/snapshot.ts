// A normalised picture of everything in a network namespace that podtap
// promises to put back: links, addresses, routes (all tables), rules,
// permanent and proxy neighbours, nftables, legacy iptables, tc
// qdiscs/filters, per-interface and forwarding sysctls, the /etc files
// `ip netns exec` mounts, and leftover processes.
//
// ebtables needs no section of its own: `ebtables` here is ebtables-nft,
// whose tables are nftables `bridge` tables and so appear in `nft list
// ruleset`, and this kernel has no legacy ebtables
// (CONFIG_BRIDGE_NF_EBTABLES_LEGACY is off; ebtables-legacy fails). The same
// goes for iptables-nft. Legacy iptables is covered separately in case a
// legacy table gets loaded.
//
// Normalisation keeps what is state and drops what merely moves (counters,
// timers, lifetimes' countdown, nft handles), so two snapshots of one state are
// `toEqual` and any real difference shows up as a readable line in vitest's
// diff or in diffSnapshots().
//
// One `ip netns exec` running one shell script collects everything, because
// tests take hundreds of these: about 20 short processes per snapshot.

import { setTimeout as sleep } from 'node:timers/promises';
import { HELPER_MARK, nsSh, run } from './netns.ts';

export interface LinkSnapshot {
  [key: string]: unknown;
}

export interface Snapshot {
  /** Keyed by ifname: `ip -d link` fields minus counters, timers and addr_info. */
  links: Record<string, LinkSnapshot>;
  /** Keyed by ifname, in kernel order (primary before secondary matters). */
  addresses: Record<string, string[]>;
  /** `ip route show table all`, one line per route, table always spelled out; sorted. */
  routes: { inet: string[]; inet6: string[] };
  /** `ip rule`, in priority order. */
  rules: { inet: string[]; inet6: string[] };
  /** Permanent and proxy neighbour entries; sorted. */
  neighbours: string[];
  /** `nft list ruleset`, counters zeroed, timeouts' countdown dropped. */
  nftables: string[];
  /** iptables-legacy-save / ip6tables-legacy-save, only if a legacy table is loaded. */
  iptablesLegacy: string[];
  /** `tc qdisc show` (refcnt dropped) and filters on ingress/clsact qdiscs. */
  tc: string[];
  /** net.ipv4.ip_forward, net.ipv{4,6}.conf.*.* and net.ipv{4,6}.neigh.*.* */
  sysctls: Record<string, string>;
  /** Files in /etc/netns/<ns>/ as the namespace sees them (resolv.conf, hosts, hostname). */
  etc: Record<string, string>;
  /** `comm` of processes in the namespace, not counting the helpers' own; sorted. */
  processes: string[];
}

type Json = Record<string, unknown>;

const MARK = '@@podtap-snapshot@@';

// $1 is the namespace name. `set -e` so a broken tool fails the snapshot
// instead of silently emptying a section.
const SCRIPT = `
set -e
NS=$1
sec() { printf '\\n${MARK} %s\\n' "$1"; }
sec link; ip -j -d addr show
sec route4; ip -j -4 route show table all
sec route6; ip -j -6 route show table all
sec rule4; ip -j -4 rule show
sec rule6; ip -j -6 rule show
sec neigh; ip -j neigh show nud permanent
sec neighproxy; ip -j neigh show proxy
sec nft; nft list ruleset
sec iptables
if read -r x < /proc/net/ip_tables_names 2>/dev/null; then iptables-legacy-save; fi
if read -r x < /proc/net/ip6_tables_names 2>/dev/null; then ip6tables-legacy-save; fi
q=$(tc qdisc show)
sec tc; printf '%s\\n' "$q"
printf '%s\\n' "$q" | while read -r _ kind _ _ dev _; do
  case $kind in ingress|clsact)
    printf 'filters %s ingress\\n' "$dev"; tc filter show dev "$dev" ingress
    printf 'filters %s egress\\n' "$dev"; tc filter show dev "$dev" egress;;
  esac
done
sec sysctl
grep -r . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf \\
  /proc/sys/net/ipv4/neigh /proc/sys/net/ipv6/neigh 2>/dev/null || true
if [ -d "/etc/netns/$NS" ]; then
  for f in "/etc/netns/$NS"/*; do
    [ -f "$f" ] || continue
    n=\${f##*/}; sec "etc $n"; cat "/etc/$n" 2>/dev/null || true
  done
fi
sec procs
for p in $(ip netns pids "$NS"); do
  [ "$p" = "$$" ] && continue
  if grep -qa "${HELPER_MARK}=" "/proc/$p/environ" 2>/dev/null; then continue; fi
  read -r st < "/proc/$p/stat" 2>/dev/null || continue
  printf '%s\\n' "$st"
done
`;

function sections(out: string): Map<string, string> {
  const map = new Map<string, string>();
  const parts = out.split(`\n${MARK} `);
  for (const part of parts.slice(1)) {
    const nl = part.indexOf('\n');
    const name = nl < 0 ? part : part.slice(0, nl);
    map.set(name, nl < 0 ? '' : part.slice(nl + 1));
  }
  return map;
}

function parseJsonArray(text: string | undefined, what: string): Json[] {
  const t = (text ?? '').trim();
  if (!t) return [];
  try {
    const v: unknown = JSON.parse(t);
    if (!Array.isArray(v)) throw new Error('not an array');
    return v as Json[];
  } catch (e) {
    throw new Error(`snapshot: cannot parse ${what}: ${(e as Error).message}\n${t.slice(0, 500)}`);
  }
}

function lines(text: string | undefined): string[] {
  return (text ?? '')
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.trim() !== '');
}

// ---------------------------------------------------------------------------
// Links and addresses

const FOREVER = 4294967295;

// Keys that change with time or traffic rather than with configuration.
const VOLATILE_LINK_KEYS = new Set(['addr_info', 'stats', 'stats64']);

function dropVolatile(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropVolatile);
  if (v && typeof v === 'object') {
    const out: Json = {};
    for (const [k, val] of Object.entries(v as Json)) {
      // Bridge and bridge-port timers (hello_timer, gc_timer, hold_timer...)
      // tick down continuously.
      if (VOLATILE_LINK_KEYS.has(k) || k.endsWith('_timer')) continue;
      out[k] = dropVolatile(val);
    }
    return out;
  }
  return v;
}

function renderAddress(a: Json): string {
  const rest: Json = { ...a };
  const take = (k: string): unknown => {
    const v = rest[k];
    delete rest[k];
    return v;
  };
  const parts = [`${take('family')} ${take('local')}/${take('prefixlen')}`];
  const peer = take('address');
  if (peer !== undefined) parts.push(`peer ${peer}`);
  const brd = take('broadcast');
  if (brd !== undefined) parts.push(`brd ${brd}`);
  const any = take('anycast');
  if (any !== undefined) parts.push(`any ${any}`);
  parts.push(`scope ${take('scope')}`);
  const label = take('label');
  if (label !== undefined) parts.push(`label ${label}`);
  // The countdown is not state; whether there is one is.
  const valid = take('valid_life_time');
  const pref = take('preferred_life_time');
  if (valid !== undefined && valid !== FOREVER) parts.push('valid_lft dynamic');
  if (pref !== undefined && pref !== FOREVER) parts.push('preferred_lft dynamic');
  const flags: string[] = [];
  const extra: string[] = [];
  for (const [k, v] of Object.entries(rest)) {
    if (v === true) flags.push(k);
    else extra.push(`${k} ${JSON.stringify(v)}`);
  }
  return [...parts, ...flags.sort(), ...extra].join(' ');
}

function isSettledLink(l: Json): boolean {
  const flags = Array.isArray(l.flags) ? (l.flags as string[]) : [];
  const carrier = flags.includes('UP') && flags.includes('LOWER_UP');
  const operUp = l.operstate === 'UP' || l.operstate === 'UNKNOWN';
  // operstate (and the NO-CARRIER flag derived from it) follows carrier
  // changes asynchronously via linkwatch.
  if (carrier !== operUp) return false;
  if (!carrier) return true; // DAD cannot run without carrier; tentative is then stable
  const addrs = Array.isArray(l.addr_info) ? (l.addr_info as Json[]) : [];
  return !addrs.some((a) => a.tentative === true && a.dadfailed !== true);
}

function unsettledReasons(links: Json[]): string[] {
  const out: string[] = [];
  for (const l of links) {
    if (isSettledLink(l)) continue;
    const addrs = Array.isArray(l.addr_info) ? (l.addr_info as Json[]) : [];
    const tentative = addrs.filter((a) => a.tentative === true).map((a) => `${a.local}/${a.prefixlen}`);
    out.push(
      `${l.ifname}: flags ${JSON.stringify(l.flags)} operstate ${l.operstate}` +
        (tentative.length ? ` tentative ${tentative.join(', ')}` : ''),
    );
  }
  return out;
}

// ---------------------------------------------------------------------------
// Routes, rules, neighbours

function renderRoute(r: Json): string {
  const rest: Json = { ...r };
  const take = (k: string): unknown => {
    const v = rest[k];
    delete rest[k];
    return v;
  };
  const parts: string[] = [];
  const type = take('type');
  parts.push(typeof type === 'string' ? type : 'unicast');
  parts.push(String(take('dst')));
  const gw = take('gateway');
  if (gw !== undefined) parts.push(`via ${gw}`);
  const via = take('via') as Json | undefined;
  if (via !== undefined) parts.push(`via ${via.family} ${via.host}`);
  const dev = take('dev');
  if (dev !== undefined) parts.push(`dev ${dev}`);
  parts.push(`table ${take('table') ?? 'main'}`);
  const proto = take('protocol');
  parts.push(`proto ${proto ?? 'boot'}`);
  const scope = take('scope');
  if (scope !== undefined) parts.push(`scope ${scope}`);
  const src = take('prefsrc');
  if (src !== undefined) parts.push(`src ${src}`);
  const metric = take('metric');
  if (metric !== undefined) parts.push(`metric ${metric}`);
  const flags = take('flags');
  if (Array.isArray(flags) && flags.length) parts.push(...(flags as string[]));
  const pref = take('pref');
  if (pref !== undefined) parts.push(`pref ${pref}`);
  if (take('expires') !== undefined) parts.push('expires');
  for (const [k, v] of Object.entries(rest)) parts.push(`${k} ${JSON.stringify(v)}`);
  return parts.join(' ');
}

function renderRule(r: Json): string {
  const rest: Json = { ...r };
  const prio = rest.priority;
  delete rest.priority;
  return [`${prio}:`, ...Object.entries(rest).map(([k, v]) => (typeof v === 'string' || typeof v === 'number' ? `${k} ${v}` : `${k} ${JSON.stringify(v)}`))].join(' ');
}

function renderNeighbour(n: Json, kind: 'permanent' | 'proxy'): string {
  const rest: Json = { ...n };
  const take = (k: string): unknown => {
    const v = rest[k];
    delete rest[k];
    return v;
  };
  const parts = [kind, String(take('dst'))];
  const dev = take('dev');
  if (dev !== undefined) parts.push(`dev ${dev}`);
  const ll = take('lladdr');
  if (ll !== undefined) parts.push(`lladdr ${ll}`);
  const state = take('state');
  if (Array.isArray(state)) parts.push(...(state as string[]));
  for (const [k, v] of Object.entries(rest)) parts.push(v === null || v === true ? k : `${k} ${JSON.stringify(v)}`);
  return parts.join(' ');
}

const byText = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

// ---------------------------------------------------------------------------
// Firewall, tc, sysctls, processes

function normaliseNft(text: string | undefined): string[] {
  return lines(text).map((l) =>
    l
      .replace(/counter packets \d+ bytes \d+/g, 'counter')
      .replace(/ expires [0-9hmsd.]+/g, '')
      .replace(/ used \d+ bytes/g, ''),
  );
}

function normaliseIptables(text: string | undefined): string[] {
  return lines(text)
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]'));
}

function normaliseTc(text: string | undefined): string[] {
  return lines(text).map((l) => l.replace(/ refcnt \d+/g, ''));
}

function parseSysctls(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of lines(text)) {
    const i = l.indexOf(':');
    if (i < 0) continue;
    const key = l.slice('/proc/sys/'.length, i).replaceAll('/', '.');
    out[key] = l.slice(i + 1);
  }
  // Sorted keys give a stable order when printed.
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => byText(a, b)));
}

function parseProcs(text: string | undefined): string[] {
  const out: string[] = [];
  for (const l of lines(text)) {
    const open = l.indexOf('(');
    const close = l.lastIndexOf(')');
    if (open < 0 || close < open) continue;
    // A zombie's environ is unreadable, so a concurrent helper's child that
    // just exited would otherwise slip through; zombies hold no state anyway.
    if (l.slice(close + 2, close + 3) === 'Z') continue;
    out.push(l.slice(open + 1, close));
  }
  return out.sort(byText);
}

// ---------------------------------------------------------------------------

export interface SnapshotOptions {
  /**
   * Default true: if an address is still tentative (IPv6 DAD) or a link's
   * operstate lags its carrier, look again until settled or `settleMs`
   * (default 8 s) runs out; then the snapshot shows the unsettled state.
   */
  settle?: boolean;
  settleMs?: number;
}

async function collect(netns: string): Promise<Map<string, string>> {
  const r = await nsSh(netns, SCRIPT, [netns], { timeoutMs: 30_000 });
  return sections(r.stdout);
}

export async function snapshot(netns: string, opts: SnapshotOptions = {}): Promise<Snapshot> {
  const deadline = Date.now() + (opts.settleMs ?? 8000);
  // Wait with one cheap `ip` per look (a full collection is some twenty
  // processes), then collect; look again in full only if it moved meanwhile.
  if (opts.settle !== false) await waitSettled(netns, opts.settleMs ?? 8000).catch(() => {});
  let sec = await collect(netns);
  let links = parseJsonArray(sec.get('link'), 'ip -j -d addr');
  while (opts.settle !== false && unsettledReasons(links).length && Date.now() < deadline) {
    await sleep(50);
    sec = await collect(netns);
    links = parseJsonArray(sec.get('link'), 'ip -j -d addr');
  }

  const snap: Snapshot = {
    links: {},
    addresses: {},
    routes: {
      inet: parseJsonArray(sec.get('route4'), 'ip -4 route').map(renderRoute).sort(byText),
      inet6: parseJsonArray(sec.get('route6'), 'ip -6 route').map(renderRoute).sort(byText),
    },
    rules: {
      inet: parseJsonArray(sec.get('rule4'), 'ip -4 rule').map(renderRule),
      inet6: parseJsonArray(sec.get('rule6'), 'ip -6 rule').map(renderRule),
    },
    neighbours: [
      ...parseJsonArray(sec.get('neigh'), 'ip neigh').map((n) => renderNeighbour(n, 'permanent')),
      ...parseJsonArray(sec.get('neighproxy'), 'ip neigh proxy').map((n) => renderNeighbour(n, 'proxy')),
    ].sort(byText),
    nftables: normaliseNft(sec.get('nft')),
    iptablesLegacy: normaliseIptables(sec.get('iptables')),
    tc: normaliseTc(sec.get('tc')),
    sysctls: parseSysctls(sec.get('sysctl')),
    etc: {},
    processes: parseProcs(sec.get('procs')),
  };
  for (const l of links) {
    const name = String(l.ifname);
    snap.links[name] = dropVolatile(l) as LinkSnapshot;
    const addrs = Array.isArray(l.addr_info) ? (l.addr_info as Json[]) : [];
    snap.addresses[name] = addrs.map(renderAddress);
  }
  for (const [name, body] of sec) {
    if (name.startsWith('etc ')) snap.etc[name.slice(4)] = body;
  }
  return snap;
}

/**
 * Waits until every link's operstate agrees with its carrier and no address
 * is tentative. Both lag: a veth whose carrier just came up stays operstate
 * DOWN (NO-CARRIER) for up to ~1 s (linkwatch), IPv6 link-local only appears
 * then, and DAD keeps it tentative for ~1 s more. Throws, naming what is
 * unsettled, after `timeoutMs`.
 */
export async function waitSettled(netns: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await run('ip', ['-n', netns, '-j', 'addr', 'show'], { env: { [HELPER_MARK]: '1' } });
    const reasons = unsettledReasons(parseJsonArray(r.stdout, 'ip -j addr'));
    if (!reasons.length) return;
    if (Date.now() >= deadline) throw new Error(`netns ${netns} not settled after ${timeoutMs} ms:\n${reasons.join('\n')}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------
// Differences

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && same(a[k], b[k]));
  }
  return false;
}

const show = (v: unknown): string => JSON.stringify(v);

function diffValue(path: string, a: unknown, b: unknown, out: string[]): void {
  if (same(a, b)) return;
  if (Array.isArray(a) && Array.isArray(b) && [...a, ...b].every((x) => typeof x === 'string')) {
    // Lines: report what went and what came, as a multiset.
    const unmatched = (from: string[], against: string[]): string[] => {
      const left = new Map<string, number>();
      for (const x of against) left.set(x, (left.get(x) ?? 0) + 1);
      return from.filter((x) => {
        const n = left.get(x) ?? 0;
        if (n > 0) left.set(x, n - 1);
        return n === 0;
      });
    };
    const removed = unmatched(a as string[], b as string[]);
    const added = unmatched(b as string[], a as string[]);
    for (const x of removed) out.push(`${path}: - ${x}`);
    for (const x of added) out.push(`${path}: + ${x}`);
    if (!removed.length && !added.length) out.push(`${path}: order ${show(a)} -> ${show(b)}`);
    return;
  }
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
    for (const k of keys) {
      const p = path ? `${path}.${k}` : k;
      if (!(k in b)) out.push(`${p}: removed (was ${show(a[k])})`);
      else if (!(k in a)) out.push(`${p}: added ${show(b[k])}`);
      else diffValue(p, a[k], b[k], out);
    }
    return;
  }
  out.push(`${path}: ${show(a)} -> ${show(b)}`);
}

/** One line per difference from `a` (before) to `b` (after); empty when equal. */
export function diffSnapshots(a: Snapshot, b: Snapshot): string[] {
  const out: string[] = [];
  diffValue('', a, b, out);
  return out;
}
