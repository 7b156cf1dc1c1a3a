// Pod values for the pod shapes podtap must handle, as discovery would report
// them (`Pod` / `PodInterface`, including the kernel's own routes of the local
// table, learned neighbours and sysctls). Used by the pure unit tests (no root
// needed); the namespace tests build the same shapes for real with CNI
// plugins.

import type { Address, Dns, Link, Neighbour, Pod, PodInterface, Route } from '../../src/pod/model.ts';
import { eui64LinkLocal } from '../../src/serve/frames.ts';

export const DNS: Dns = { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] };
export const HOSTNAME = 'vm-pod';

export const LO: Link = { name: 'lo', ifindex: 1, kind: 'loopback', mac: '00:00:00:00:00:00', mtu: 65536, up: true };

/** The kernel's EUI-64 link-local address of a MAC, as `ip -j addr` lists it. */
export const linkLocal = (mac: string): Address => ({ family: 'inet6', local: eui64LinkLocal(mac), prefixlen: 64, scope: 'link', flags: [] });

const a4 = (local: string, prefixlen: number, dev: string, more: Partial<Address> = {}): Address => ({ family: 'inet', local, prefixlen, scope: 'global', label: dev, flags: [], ...more });
const a6 = (local: string, prefixlen: number, more: Partial<Address> = {}): Address => ({ family: 'inet6', local, prefixlen, scope: 'global', flags: [], ...more });

/** A route through dev; main table, unicast, IPv4 unless said otherwise. */
const route = (dev: string) => (x: Partial<Route> & { dst: string }): Route => ({ family: 'inet', table: 'main', type: 'unicast', dev, flags: [], ...x });

/** What the kernel keeps in the local table for an interface's addresses (never moved by podtap). */
function localRoutes(dev: string, addresses: Address[]): Route[] {
  const r = route(dev);
  return addresses.flatMap((a): Route[] =>
    a.family === 'inet'
      ? [r({ table: 'local', type: 'local', dst: a.local, protocol: 'kernel', scope: 'host', prefsrc: a.local }), ...(a.broadcast ? [r({ table: 'local', type: 'broadcast', dst: a.broadcast, protocol: 'kernel', scope: 'link', prefsrc: a.local })] : [])]
      : [r({ family: 'inet6', table: 'local', type: 'local', dst: a.local, protocol: 'kernel', metric: 0, pref: 'medium' })],
  );
}

/** The kernel's IPv6 link-local prefix route (not moved: it comes and goes with the address). */
const fe80Route = (dev: string): Route => route(dev)({ family: 'inet6', dst: 'fe80::/64', protocol: 'kernel', metric: 256, pref: 'medium' });

function sysctls(dev: string, ipv6: boolean): Record<string, string> {
  return {
    [`net/ipv6/conf/${dev}/disable_ipv6`]: ipv6 ? '0' : '1',
    [`net/ipv6/conf/${dev}/accept_ra`]: '0',
    [`net/ipv6/conf/${dev}/addr_gen_mode`]: '0',
    [`net/ipv4/conf/${dev}/proxy_arp`]: '0',
    [`net/ipv4/conf/${dev}/rp_filter`]: '0',
    'net/ipv4/ip_forward': '0',
  };
}

interface IfaceSpec {
  name?: string;
  ifindex?: number;
  kind?: string;
  mac: string;
  mtu: number;
  /** IPv6 enabled: the kernel gave the link a link-local address (and its prefix route). */
  ipv6: boolean;
  addrGenMode?: string;
  addresses: Address[];
  routes: (r: ReturnType<typeof route>) => Route[];
  neighbours?: Omit<Neighbour, 'dev'>[];
  link?: Partial<Link>;
}

/** One pod interface as discovery reports it: its addresses (with the kernel's link-local), every route through it, neighbours and sysctls. */
export function podInterface(s: IfaceSpec): PodInterface {
  const dev = s.name ?? 'eth0';
  const addresses = [...s.addresses, ...(s.ipv6 ? [linkLocal(s.mac)] : [])];
  return {
    link: {
      name: dev,
      ifindex: s.ifindex ?? 2,
      kind: s.kind ?? 'veth',
      mac: s.mac,
      mtu: s.mtu,
      up: true,
      ...(s.addrGenMode !== undefined ? { addrGenMode: s.addrGenMode } : {}),
      ...s.link,
    },
    addresses,
    routes: [...s.routes(route(dev)), ...(s.ipv6 ? [fe80Route(dev)] : []), ...localRoutes(dev, addresses)],
    neighbours: (s.neighbours ?? []).map((n) => ({ ...n, dev })),
    sysctls: sysctls(dev, s.ipv6),
  };
}

export function podOf(...interfaces: PodInterface[]): Pod {
  return { interfaces, dns: DNS, hostname: HOSTNAME };
}

/** The links of the pod's namespace: loopback and the pod interfaces. */
export function linksOf(pod: Pod): Link[] {
  return [LO, ...pod.interfaces.map((i) => i.link)];
}

// ------------------------------------------------------------ interfaces

/**
 * CNI ptp: a /16 whose kernel prefix route the plugin replaced by a host
 * route to the gateway and the subnet via the gateway; a learned neighbour
 * for the gateway.
 */
const ptpEth0 = (over: Partial<IfaceSpec> = {}) =>
  podInterface({
    mac: '0a:58:0a:16:00:05',
    mtu: 1500,
    ipv6: true,
    addrGenMode: 'eui64',
    addresses: [a4('10.22.0.5', 16, 'eth0', { broadcast: '10.22.255.255' })],
    routes: (r) => [
      r({ dst: 'default', gateway: '10.22.0.1', protocol: 'boot', scope: 'global' }),
      r({ dst: '10.22.0.1', protocol: 'boot', scope: 'link', prefsrc: '10.22.0.5' }),
      r({ dst: '10.22.0.0/16', gateway: '10.22.0.1', protocol: 'boot', scope: 'global', prefsrc: '10.22.0.5' }),
    ],
    neighbours: [{ family: 'inet', dst: '10.22.0.1', lladdr: '2a:3c:91:00:10:01', router: false, proxy: false, permanent: false }],
    ...over,
  });

export const SHAPES: Record<'ptp' | 'bridge' | 'calico' | 'dualstack' | 'jumbo', Pod> = {
  ptp: podOf(ptpEth0()),
  // CNI bridge: the kernel prefix route stays; IPv6 is disabled on the link.
  bridge: podOf(
    podInterface({
      mac: '0a:58:0a:19:00:05',
      mtu: 1500,
      ipv6: false,
      addrGenMode: 'eui64',
      addresses: [a4('10.25.0.5', 16, 'eth0', { broadcast: '10.25.255.255' })],
      routes: (r) => [r({ dst: 'default', gateway: '10.25.0.1', protocol: 'boot', scope: 'global' }), r({ dst: '10.25.0.0/16', protocol: 'kernel', scope: 'link', prefsrc: '10.25.0.5' })],
    }),
  ),
  // Calico: a /32, the gateway 169.254.1.1 on-link through a host route.
  calico: podOf(
    podInterface({
      mac: 'ee:ee:ee:0a:17:07',
      mtu: 1480,
      ipv6: true,
      addrGenMode: 'eui64',
      addresses: [a4('10.23.5.7', 32, 'eth0')],
      routes: (r) => [r({ dst: 'default', gateway: '169.254.1.1', protocol: 'boot', scope: 'global' }), r({ dst: '169.254.1.1', protocol: 'boot', scope: 'link' })],
    }),
  ),
  // Dual stack: IPv4 as CNI ptp makes it; a global IPv6 address with its
  // kernel prefix route and a default route via a global gateway whose MAC
  // is known.
  dualstack: podOf(
    podInterface({
      mac: '0a:58:0a:18:00:05',
      mtu: 1500,
      ipv6: true,
      addrGenMode: 'eui64',
      addresses: [a4('10.24.0.5', 16, 'eth0', { broadcast: '10.24.255.255' }), a6('fd00:24::5', 64, { flags: ['nodad'] })],
      routes: (r) => [
        r({ dst: 'default', gateway: '10.24.0.1', protocol: 'boot', scope: 'global' }),
        r({ dst: '10.24.0.1', protocol: 'boot', scope: 'link', prefsrc: '10.24.0.5' }),
        r({ dst: '10.24.0.0/16', gateway: '10.24.0.1', protocol: 'boot', scope: 'global', prefsrc: '10.24.0.5' }),
        r({ family: 'inet6', dst: 'default', gateway: 'fd00:24::1', protocol: 'boot', metric: 1024, pref: 'medium' }),
        r({ family: 'inet6', dst: 'fd00:24::/64', protocol: 'kernel', metric: 256, pref: 'medium' }),
      ],
      neighbours: [{ family: 'inet6', dst: 'fd00:24::1', lladdr: '0a:58:0a:18:00:01', router: true, proxy: false, permanent: false }],
    }),
  ),
  // Jumbo frames, a secondary address, a metric route and a permanent neighbour; no IPv6 at all.
  jumbo: podOf(
    podInterface({
      mac: '0a:58:0a:1a:00:05',
      mtu: 9000,
      ipv6: false,
      addresses: [a4('10.26.0.5', 24, 'eth0', { broadcast: '10.26.0.255' }), a4('10.26.0.6', 24, 'eth0', { broadcast: '10.26.0.255', flags: ['secondary'] })],
      routes: (r) => [
        r({ dst: 'default', gateway: '10.26.0.1', protocol: 'boot', scope: 'global' }),
        r({ dst: '10.26.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.26.0.5' }),
        r({ dst: '10.77.0.0/16', gateway: '10.26.0.1', protocol: 'boot', scope: 'global', metric: 300 }),
      ],
      neighbours: [{ family: 'inet', dst: '10.26.0.9', lladdr: '02:00:00:00:00:09', router: false, proxy: false, permanent: true }],
    }),
  ),
};

/**
 * A Multus pod with four networks, in NIC order: eth0 from CNI ptp with the
 * default route; net1 from a CNI bridge with no gateway (and a permanent
 * neighbour); net2 a macvlan with a route of its own through a gateway, for
 * both families; net3 an L2-only veth without any address (IPv6 disabled).
 */
export const MULTUS: Pod = podOf(
  ptpEth0({ ifindex: 3 }),
  podInterface({
    name: 'net1',
    ifindex: 4,
    mac: '0a:58:0a:1e:00:05',
    mtu: 1500,
    ipv6: true,
    addrGenMode: 'eui64',
    addresses: [a4('10.30.0.5', 24, 'net1', { broadcast: '10.30.0.255' })],
    routes: (r) => [r({ dst: '10.30.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.30.0.5' })],
    neighbours: [{ family: 'inet', dst: '10.30.0.9', lladdr: '02:00:00:1e:00:09', router: false, proxy: false, permanent: true }],
  }),
  podInterface({
    name: 'net2',
    ifindex: 5,
    kind: 'macvlan',
    mac: '5e:10:c0:a8:32:0a',
    mtu: 1500,
    ipv6: true,
    addrGenMode: 'eui64',
    link: { macvlanMode: 'bridge' },
    addresses: [a4('192.168.50.10', 24, 'net2', { broadcast: '192.168.50.255' }), a6('2001:db8:50::10', 64)],
    routes: (r) => [
      r({ dst: '192.168.50.0/24', protocol: 'kernel', scope: 'link', prefsrc: '192.168.50.10' }),
      r({ dst: '192.168.60.0/24', gateway: '192.168.50.1', protocol: 'static', scope: 'global' }),
      r({ family: 'inet6', dst: '2001:db8:50::/64', protocol: 'kernel', metric: 256, pref: 'medium' }),
      r({ family: 'inet6', dst: '2001:db8:60::/64', gateway: '2001:db8:50::1', protocol: 'static', metric: 1024, pref: 'medium' }),
    ],
  }),
  podInterface({ name: 'net3', ifindex: 6, mac: '0a:58:0a:1f:00:05', mtu: 1500, ipv6: false, addrGenMode: 'eui64', addresses: [], routes: () => [] }),
);

/** Every shape, the multi-NIC one included. */
export const ALL_SHAPES: Record<keyof typeof SHAPES | 'multus', Pod> = { ...SHAPES, multus: MULTUS };
