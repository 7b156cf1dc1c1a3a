// The three real DHCP clients, run inside the VM's namespace with scripts
// that print every variable they are handed. udhcpc and dhclient leave
// configuring the interface to their script, so ours also applies the
// address and the classless routes (a renewing client needs an address and
// a route to unicast from); dhcpcd configures the interface itself. Every
// file a client writes lives in the test's temp directory: dhcpcd, whose
// state paths are compiled in, runs in a private mount namespace with temp
// directories bound over /run and /var/lib/dhcpcd.

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { Proc, Topology } from './dhcp-netns.ts';

export type ClientName = 'udhcpc' | 'dhclient' | 'dhcpcd';

const UDHCPC_SCRIPT = `#!/bin/sh
ev=$1
echo "EVENT $ev"
env | grep -v -E '^(PATH|PWD|SHLVL|_)=' | sort | sed 's/^/  /'
case "$ev" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface" \${broadcast:+broadcast $broadcast}
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then ip route replace "$1" dev "$interface" scope link
      else ip route replace "$1" via "$2" dev "$interface"; fi
      shift 2
    done ;;
esac
echo "END $ev"
exit 0
`;

// dhclient hands option 121 over as decimal bytes; the loop turns each
// route back into "dst/width" and a router.
const DHCLIENT_SCRIPT = `#!/bin/sh
echo "EVENT $reason"
env | grep -E '^(new_|reason=|interface=)' | sort | sed 's/^/  /'
case "$reason" in
  PREINIT) ip link set "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" \${new_broadcast_address:+broadcast $new_broadcast_address}
    set -- $new_rfc3442_classless_static_routes
    while [ $# -gt 0 ]; do
      w=$1; shift; n=$(( (w + 7) / 8 )); d=""; i=0
      while [ $i -lt 4 ]; do
        if [ $i -lt $n ]; then d="$d\${d:+.}$1"; shift; else d="$d\${d:+.}0"; fi
        i=$((i + 1))
      done
      g="$1.$2.$3.$4"; shift 4
      if [ "$g" = 0.0.0.0 ]; then ip route replace "$d/$w" dev "$interface" scope link
      else ip route replace "$d/$w" via "$g" dev "$interface"; fi
    done ;;
esac
echo "END $reason"
exit 0
`;

const DHCLIENT_CONF = `option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
option ms-classless-static-routes code 249 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name-servers, domain-name,
  domain-search, host-name, interface-mtu, rfc3442-classless-static-routes,
  dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;
`;

const DHCPCD_SCRIPT = `#!/bin/sh
echo "EVENT $reason"
env | grep -E '^(new_|reason=|interface=|protocol=)' | sort | sed 's/^/  /'
echo "END $reason"
exit 0
`;

const DHCPCD_CONF = `ipv4only
noarp
noipv4ll
noipv6rs
nohook resolv.conf, hostname, ntp
option subnet_mask, routers, domain_name_servers, domain_name, domain_search, host_name, interface_mtu, broadcast_address, classless_static_routes
`;

export interface ClientOptions {
  args?: string[]; // extra arguments (udhcpc only)
  leases?: string; // a dhclient lease file to start from, as after a reboot
}

/** Starts a client on the VM's eth0. */
export async function startClient(t: Topology, name: ClientName, opts: ClientOptions = {}): Promise<Proc> {
  const extra = opts.args ?? [];
  const dir = join(t.dir, name);
  await mkdir(dir, { recursive: true });
  switch (name) {
    case 'udhcpc': {
      const script = await t.file(`${name}/script.sh`, UDHCPC_SCRIPT, 0o755);
      return t.spawn(name, t.vm, ['busybox', 'udhcpc', '-f', '-i', 'eth0', '-s', script, '-O', 'staticroutes', '-O', 'search', '-O', 'mtu', ...extra]);
    }
    case 'dhclient': {
      const script = await t.file(`${name}/script.sh`, DHCLIENT_SCRIPT, 0o755);
      const conf = await t.file(`${name}/dhclient.conf`, DHCLIENT_CONF);
      if (opts.leases !== undefined) await t.file(`${name}/leases`, opts.leases);
      return t.spawn(name, t.vm, [
        'dhclient', '-d', '-v', '-4', '-cf', conf, '-sf', script, '-lf', join(dir, 'leases'), '-pf', join(dir, 'pid'), 'eth0',
      ]);
    }
    case 'dhcpcd': {
      const script = await t.file(`${name}/script.sh`, DHCPCD_SCRIPT, 0o755);
      const conf = await t.file(`${name}/dhcpcd.conf`, DHCPCD_CONF);
      const run = join(dir, 'run');
      const db = join(dir, 'db');
      await mkdir(run);
      await mkdir(db);
      const inner = `mount --make-rprivate / && mount --bind ${run} /run && mount --bind ${db} /var/lib/dhcpcd && exec dhcpcd -B -d -f ${conf} -c ${script} eth0`;
      return t.spawn(name, t.vm, ['unshare', '-m', 'sh', '-c', inner]);
    }
  }
}

export interface ClientEvent {
  event: string;
  vars: Record<string, string>;
}

/** The complete "EVENT x" ... "END x" blocks our scripts print, with their variables. */
export function events(out: string): ClientEvent[] {
  const list: ClientEvent[] = [];
  let open: ClientEvent | undefined;
  for (const line of out.split('\n')) {
    const ev = /^EVENT (\S+)/.exec(line);
    if (ev) {
      open = { event: ev[1]!, vars: {} };
      continue;
    }
    if (open && line === `END ${open.event}`) {
      list.push(open);
      open = undefined;
      continue;
    }
    const kv = /^ {2}([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (kv && open) open.vars[kv[1]!] = kv[2]!;
  }
  return list;
}

/** What a client says it was given, in one shape for all three. */
export interface Reported {
  ip: string;
  prefix: number;
  routes: { dst: string; gateway: string }[];
  router?: string;
  dns: string[];
  domain?: string;
  search: string[];
  hostname?: string;
  mtu?: number;
  broadcast?: string;
  serverId?: string;
  lease?: number;
}

function prefixOf(mask: string): number {
  return mask.split('.').reduce((n, o) => n + (Number(o) >>> 0).toString(2).replace(/0/g, '').length, 0);
}

const words = (s: string | undefined) => (s ?? '').split(/\s+/).filter(Boolean);

/** "dst/len gw dst/len gw ..." as udhcpc and dhcpcd print option 121. */
function pairRoutes(s: string | undefined): { dst: string; gateway: string }[] {
  const w = words(s);
  const out: { dst: string; gateway: string }[] = [];
  for (let i = 0; i + 1 < w.length; i += 2) out.push({ dst: w[i]!, gateway: w[i + 1]! });
  return out;
}

/** dhclient's decimal bytes, decoded independently of the server's codec. */
function byteRoutes(s: string | undefined): { dst: string; gateway: string }[] {
  const b = words(s).map(Number);
  const out: { dst: string; gateway: string }[] = [];
  let i = 0;
  while (i < b.length) {
    const width = b[i++]!;
    const n = Math.ceil(width / 8);
    const d = [0, 0, 0, 0].map((_, k) => (k < n ? b[i + k]! : 0));
    i += n;
    out.push({ dst: `${d.join('.')}/${width}`, gateway: b.slice(i, i + 4).join('.') });
    i += 4;
  }
  return out;
}

const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));
const strip = (o: Reported): Reported => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as unknown as Reported;

export function reported(client: ClientName, v: Record<string, string>): Reported {
  switch (client) {
    case 'udhcpc':
      return strip({
        ip: v.ip ?? '',
        prefix: Number(v.mask),
        routes: pairRoutes(v.staticroutes),
        router: v.router,
        dns: words(v.dns),
        domain: v.domain,
        search: words(v.search),
        hostname: v.hostname,
        mtu: num(v.mtu),
        broadcast: v.broadcast,
        serverId: v.serverid,
        lease: num(v.lease),
      });
    case 'dhclient':
      return strip({
        ip: v.new_ip_address ?? '',
        prefix: prefixOf(v.new_subnet_mask ?? ''),
        routes: byteRoutes(v.new_rfc3442_classless_static_routes),
        router: v.new_routers,
        dns: words(v.new_domain_name_servers),
        domain: v.new_domain_name,
        search: words(v.new_domain_search).map((s) => s.replace(/\.$/, '')),
        hostname: v.new_host_name,
        mtu: num(v.new_interface_mtu),
        broadcast: v.new_broadcast_address,
        serverId: v.new_dhcp_server_identifier,
        lease: num(v.new_dhcp_lease_time),
      });
    case 'dhcpcd':
      return strip({
        ip: v.new_ip_address ?? '',
        prefix: Number(v.new_subnet_cidr),
        routes: pairRoutes(v.new_classless_static_routes),
        router: v.new_routers,
        dns: words(v.new_domain_name_servers),
        domain: v.new_domain_name,
        search: words(v.new_domain_search),
        hostname: v.new_host_name,
        mtu: num(v.new_interface_mtu),
        broadcast: v.new_broadcast_address,
        serverId: v.new_dhcp_server_identifier,
        lease: num(v.new_dhcp_lease_time),
      });
  }
}

/** The event names each client's script gets for a first lease and a renewal. */
export const BOUND_EVENT: Record<ClientName, string> = { udhcpc: 'bound', dhclient: 'BOUND', dhcpcd: 'BOUND' };
export const RENEW_EVENT: Record<ClientName, string> = { udhcpc: 'renew', dhclient: 'RENEW', dhcpcd: 'RENEW' };

/** Whether a tool is installed (test/install.sh installs them all; this only makes a missing one explicit). */
export function have(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
export function hasUdhcpc(): boolean {
  try {
    return execFileSync('busybox', ['--list'], { encoding: 'utf8' }).split('\n').includes('udhcpc');
  } catch {
    return false;
  }
}
