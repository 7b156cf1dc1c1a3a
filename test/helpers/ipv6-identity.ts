// The IPv6 identity of a pod (src/serve/nd/ra.ts Ipv6Identity) that the unit
// tests of the RA and DHCPv6 servers start from.

import type { Ipv6Identity } from '../../src/serve/nd/ra.ts';

/** A dual-stack pod on a /64 with a default route, one more route and DNS. */
export function podIdentity(over: Partial<Ipv6Identity> = {}): Ipv6Identity {
  return {
    addresses: [{ address: '2001:db8:1::5', prefixlen: 64 }],
    onLink: [{ prefix: '2001:db8:1::', prefixlen: 64 }],
    routes: [{ prefix: '2001:db8:99::', prefixlen: 48, mtu: 1400 }],
    defaultRoute: {},
    router: { linkLocal: 'fe80::1', mac: '02:00:00:00:00:01' },
    mtu: 1500,
    dns: { servers: ['2001:db8::53', '10.96.0.10'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'] },
    ...over,
  };
}
