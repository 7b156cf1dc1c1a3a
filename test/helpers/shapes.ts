// PodNetwork values for the pod shapes podtap must handle, as discovery
// would report them. Used by the pure unit tests (no root needed); the
// namespace tests build the same shapes for real with CNI plugins.

import type { PodNetwork, Route, Address } from '../../src/pod/model.ts';

const dns = { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] };
const v6ll = (mac: string): Address => ({ family: 'inet6', local: `fe80::${mac.slice(0, 5).replace(':', '')}:ff:fe00:1`, prefixlen: 64, scope: 'link', flags: [] });
const r = (x: Partial<Route> & { dst: string }): Route => ({ family: 'inet', table: 'main', type: 'unicast', dev: 'eth0', flags: [], ...x });
const sysctls = { 'net/ipv6/conf/eth0/disable_ipv6': '0', 'net/ipv4/ip_forward': '0' };

function pod(mac: string, mtu: number, addresses: Address[], routes: Route[], extra: Partial<PodNetwork> = {}): PodNetwork {
  return { link: { name: 'eth0', ifindex: 2, kind: 'veth', mac, mtu, up: true }, addresses, routes, neighbours: [], sysctls, dns, hostname: 'vm-pod', ...extra };
}

export const SHAPES: Record<'ptp' | 'bridge' | 'calico' | 'dualstack' | 'jumbo', PodNetwork> = {
  // CNI ptp deletes the kernel prefix route and adds one via the gateway.
  ptp: pod('0a:58:0a:16:00:05', 1500, [{ family: 'inet', local: '10.22.0.5', prefixlen: 16, broadcast: '10.22.255.255', scope: 'global', label: 'eth0', flags: [] }, v6ll('0a:58')], [
    r({ dst: 'default', gateway: '10.22.0.1', protocol: 'boot', scope: 'global' }),
    r({ dst: '10.22.0.0/16', gateway: '10.22.0.1', protocol: 'boot', scope: 'global', prefsrc: '10.22.0.5' }),
    r({ family: 'inet6', dst: 'fe80::/64', protocol: 'kernel', metric: 256, pref: 'medium', scope: 'global' }),
  ]),
  bridge: pod('0a:58:0a:19:00:05', 1500, [{ family: 'inet', local: '10.25.0.5', prefixlen: 16, broadcast: '10.25.255.255', scope: 'global', label: 'eth0', flags: [] }], [
    r({ dst: 'default', gateway: '10.25.0.1', protocol: 'boot', scope: 'global' }),
    r({ dst: '10.25.0.0/16', protocol: 'kernel', scope: 'link', prefsrc: '10.25.0.5' }),
  ]),
  calico: pod('ee:ee:ee:0a:17:07', 1480, [{ family: 'inet', local: '10.23.5.7', prefixlen: 32, scope: 'global', label: 'eth0', flags: [] }], [
    r({ dst: 'default', gateway: '169.254.1.1', protocol: 'boot', scope: 'global' }),
    r({ dst: '169.254.1.1', protocol: 'boot', scope: 'link' }),
  ]),
  dualstack: pod('0a:58:0a:18:00:05', 1500, [
    { family: 'inet', local: '10.24.0.5', prefixlen: 16, broadcast: '10.24.255.255', scope: 'global', label: 'eth0', flags: [] },
    { family: 'inet6', local: 'fd00:24::5', prefixlen: 64, scope: 'global', flags: ['nodad'] },
    v6ll('0a:58'),
  ], [
    r({ dst: 'default', gateway: '10.24.0.1', protocol: 'boot', scope: 'global' }),
    r({ dst: '10.24.0.0/16', gateway: '10.24.0.1', protocol: 'boot', scope: 'global', prefsrc: '10.24.0.5' }),
    r({ family: 'inet6', dst: 'default', gateway: 'fd00:24::1', protocol: 'boot', metric: 1024, pref: 'medium', scope: 'global' }),
    r({ family: 'inet6', dst: 'fd00:24::/64', protocol: 'kernel', metric: 256, pref: 'medium', scope: 'global' }),
  ]),
  jumbo: pod('0a:58:0a:1a:00:05', 9000, [
    { family: 'inet', local: '10.26.0.5', prefixlen: 24, broadcast: '10.26.0.255', scope: 'global', label: 'eth0', flags: [] },
    { family: 'inet', local: '10.26.0.6', prefixlen: 24, broadcast: '10.26.0.255', scope: 'global', label: 'eth0', flags: ['secondary'] },
  ], [
    r({ dst: 'default', gateway: '10.26.0.1', protocol: 'boot', scope: 'global' }),
    r({ dst: '10.26.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.26.0.5' }),
    r({ dst: '10.77.0.0/16', gateway: '10.26.0.1', protocol: 'boot', scope: 'global', metric: 300 }),
  ], { neighbours: [{ family: 'inet', dst: '10.26.0.9', lladdr: '02:00:00:00:00:09', dev: 'eth0', router: false, proxy: false }] }),
};
