import { describe, expect, it } from 'vitest';
import { dhcpConfigFrom as configFrom, type DhcpConfig, type NicContext } from '../../src/serve/dhcp4/config.ts';
import type { Address, Link, PodInterface, Route } from '../../src/pod/model.ts';
import { MULTUS } from '../helpers/shapes.ts';

const DNS = { nameservers: ['10.96.0.10'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] };
/** The primary NIC's context: the pod's DNS and hostname. */
const OPTS: NicContext = { serverId: '169.254.75.1', leaseSeconds: 3600, primary: true, dns: DNS, hostname: 'web-0' };
const SECONDARY: NicContext = { ...OPTS, primary: false };

const r = (x: Partial<Route> & { dst: string }): Route => ({ family: 'inet', table: 'main', type: 'unicast', dev: 'eth0', flags: [], ...x });
const a4 = (local: string, prefixlen: number, more: Partial<Address> = {}): Address => ({ family: 'inet', local, prefixlen, scope: 'global', flags: [], ...more });

function pod(addresses: Address[], routes: Route[], link: Partial<Link> = {}): PodInterface {
  return {
    link: { name: 'eth0', ifindex: 2, kind: 'veth', mac: '0A:58:0A:16:00:05', mtu: 1500, up: true, ...link },
    addresses,
    routes,
    neighbours: [],
    sysctls: {},
  };
}

/** A NIC's config, which every interface with IPv4 has. */
function dhcpConfigFrom(iface: PodInterface, ctx: NicContext): { config: DhcpConfig; warnings: string[] } {
  const { config, warnings } = configFrom(iface, ctx);
  if (!config) throw new Error(`no DHCPv4 config for ${iface.link.name}`);
  return { config, warnings };
}

describe('dhcpConfigFrom', () => {
  it('CNI ptp: no connected /16, so a /32 with the pod routes: gateway host route first, default last', () => {
    const { config, warnings } = dhcpConfigFrom(
      pod(
        [a4('10.22.0.5', 16, { broadcast: '10.22.255.255' }), { family: 'inet6', local: 'fe80::858:aff:fe16:5', prefixlen: 64, scope: 'link', flags: [] }],
        [
          r({ dst: 'default', gateway: '10.22.0.1', protocol: 'boot' }),
          r({ dst: '10.22.0.0/16', gateway: '10.22.0.1', protocol: 'boot', prefsrc: '10.22.0.5' }),
          r({ dst: '10.22.0.1', scope: 'link', protocol: 'boot', prefsrc: '10.22.0.5' }),
          r({ family: 'inet6', dst: 'fe80::/64', protocol: 'kernel', metric: 256 }),
        ],
      ),
      OPTS,
    );
    expect(warnings).toEqual([]);
    expect(config).toEqual({
      vmMac: '0a:58:0a:16:00:05',
      ip: '10.22.0.5',
      prefixlen: 32,
      router: '10.22.0.1',
      routes: [
        { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
        { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
        { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
      ],
      dns: ['10.96.0.10'],
      domain: 'default.svc.cluster.local',
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      hostname: 'web-0',
      mtu: 1500,
      serverId: '169.254.75.1',
      leaseSeconds: 3600,
    });
  });

  it('CNI ptp without the gateway host route: one is added, with a warning', () => {
    // The route "/16 via gateway" would shadow the on-link /16 the guest
    // derives from its mask, leaving the gateway unreachable.
    const { config, warnings } = dhcpConfigFrom(
      pod([a4('10.22.0.5', 16)], [r({ dst: '10.22.0.0/16', gateway: '10.22.0.1', prefsrc: '10.22.0.5' }), r({ dst: 'default', gateway: '10.22.0.1' })]),
      OPTS,
    );
    expect(config.routes).toEqual([
      { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
      { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
      { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
    ]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/gateway 10\.22\.0\.1 is not on-link/);
    expect(config.prefixlen).toBe(32);
    expect(config.broadcast).toBeUndefined();
  });

  it('CNI bridge: the kernel prefix route is left to the guest, only the default route is sent', () => {
    const { config, warnings } = dhcpConfigFrom(
      pod(
        [a4('10.25.0.5', 16, { broadcast: '10.25.255.255' })],
        [r({ dst: 'default', gateway: '10.25.0.1', protocol: 'boot' }), r({ dst: '10.25.0.0/16', protocol: 'kernel', scope: 'link', prefsrc: '10.25.0.5' })],
      ),
      OPTS,
    );
    expect(warnings).toEqual([]);
    expect(config.router).toBe('10.25.0.1');
    expect(config.routes).toEqual([{ dst: '0.0.0.0/0', gateway: '10.25.0.1' }]);
    expect(config.prefixlen).toBe(16);
  });

  it('Calico: /32 address, on-link 169.254.1.1 before the default route through it, no broadcast', () => {
    const { config, warnings } = dhcpConfigFrom(
      pod(
        [a4('10.23.5.7', 32)],
        [r({ dst: 'default', gateway: '169.254.1.1', protocol: 'boot' }), r({ dst: '169.254.1.1', scope: 'link', protocol: 'boot' })],
        { ifindex: 4, mac: 'ee:ee:ee:0a:17:07', mtu: 1480 },
      ),
      OPTS,
    );
    expect(warnings).toEqual([]);
    expect(config.ip).toBe('10.23.5.7');
    expect(config.prefixlen).toBe(32);
    expect(config.router).toBe('169.254.1.1');
    expect(config.routes).toEqual([
      { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
    ]);
    expect(config.broadcast).toBeUndefined();
    expect(config.mtu).toBe(1480);
    expect(config.vmMac).toBe('ee:ee:ee:0a:17:07');
  });

  it('two IPv4 addresses and a metric route: the primary is given, the other warned about', () => {
    const { config, warnings } = dhcpConfigFrom(
      pod(
        [a4('10.26.0.5', 24, { broadcast: '10.26.0.255' }), a4('10.26.0.6', 24, { flags: ['secondary'] }), a4('10.99.0.2', 24)],
        [
          r({ dst: 'default', gateway: '10.26.0.1', protocol: 'boot' }),
          r({ dst: '10.26.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.26.0.5' }),
          r({ dst: '10.99.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.99.0.2' }),
          r({ dst: '10.77.0.0/16', gateway: '10.26.0.1', protocol: 'boot', metric: 300 }),
        ],
      ),
      OPTS,
    );
    expect(config.ip).toBe('10.26.0.5');
    expect(config.prefixlen).toBe(24);
    // The second subnet's kernel route is not the VM's own subnet, so the
    // guest needs it explicitly, on-link.
    expect(config.routes).toEqual([
      { dst: '10.99.0.0/24', gateway: '0.0.0.0' },
      { dst: '10.77.0.0/16', gateway: '10.26.0.1' },
      { dst: '0.0.0.0/0', gateway: '10.26.0.1' },
    ]);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/10\.26\.0\.6\/24 .*cannot be given by DHCP/);
    expect(warnings[1]).toMatch(/10\.99\.0\.2\/24 .*cannot be given by DHCP/);
  });

  it('the first non-secondary address is primary even if listed after a secondary one', () => {
    const { config } = dhcpConfigFrom(pod([a4('10.0.0.9', 24, { flags: ['secondary'] }), a4('10.0.0.5', 24)], []), OPTS);
    expect(config.ip).toBe('10.0.0.5');
    expect(config.router).toBeUndefined();
    expect(config.routes).toEqual([]);
  });

  it('skips what DHCPv4 cannot carry, with a warning each', () => {
    const { config, warnings } = dhcpConfigFrom(
      pod(
        [a4('10.0.0.5', 24)],
        [
          r({ dst: '10.0.0.0/24', protocol: 'kernel', scope: 'link', prefsrc: '10.0.0.5' }),
          r({ dst: 'default', gateway: '10.0.0.1' }),
          r({ dst: 'default', gateway: '10.0.0.254', metric: 100 }),
          r({ dst: '10.1.0.0/16', gateway: '10.0.0.1', table: '100' }),
          r({ dst: '10.2.0.0/16', type: 'blackhole' }),
          r({ dst: '10.0.0.5', type: 'local', table: 'local' }),
          r({ dst: '10.3.0.0/16', gateway: '10.0.0.1', dev: 'eth1' }),
          r({ family: 'inet6', dst: 'default', gateway: 'fd00::1' }),
        ],
      ),
      {
        ...OPTS,
        dns: { nameservers: ['10.96.0.10', 'fd00::10'], search: ['ok.example', 'bad domain.example', 'x'.repeat(64) + '.example', 'fine.example.'], options: [] },
        hostname: 'host_with.bad!char',
      },
    );
    expect(config.routes).toEqual([{ dst: '0.0.0.0/0', gateway: '10.0.0.1' }]);
    expect(config.dns).toEqual(['10.96.0.10']);
    expect(config.search).toEqual(['ok.example', 'fine.example']);
    expect(config.domain).toBe('ok.example');
    expect(config.hostname).toBeUndefined();
    const text = warnings.join('\n');
    expect(text).toMatch(/default via 10\.0\.0\.254 .*metric 100.* shadowed/);
    expect(text).toMatch(/table 100/);
    expect(text).toMatch(/blackhole/);
    // IPv6 nameservers are DHCPv6's to hand out: left out here without a word.
    expect(text).not.toMatch(/fd00::10/);
    expect(text).toMatch(/"bad domain\.example" cannot be encoded/);
    expect(text).toMatch(/xxxxxxxx.*cannot be encoded/);
    expect(text).toMatch(/hostname/);
    expect(warnings).toHaveLength(6);
  });

  it('a lower-metric route wins whichever order the routes come in', () => {
    const { config } = dhcpConfigFrom(
      pod([a4('10.0.0.5', 24)], [r({ dst: '10.0.0.0/24', protocol: 'kernel', scope: 'link' }), r({ dst: '10.9.0.0/16', gateway: '10.0.0.2', metric: 50 }), r({ dst: '10.9.0.0/16', gateway: '10.0.0.3', metric: 10 })]),
      OPTS,
    );
    expect(config.routes).toEqual([{ dst: '10.9.0.0/16', gateway: '10.0.0.3' }]);
  });

  it('an onlink gateway outside the subnet gets an on-link host route', () => {
    const { config, warnings } = dhcpConfigFrom(pod([a4('10.30.0.5', 32)], [r({ dst: 'default', gateway: '10.30.255.254', flags: ['onlink'] })]), OPTS);
    expect(config.routes).toEqual([
      { dst: '10.30.255.254/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '10.30.255.254' },
    ]);
    expect(warnings).toHaveLength(1);
  });

  it('an on-link default route has no router', () => {
    const { config } = dhcpConfigFrom(pod([a4('10.30.0.5', 24)], [r({ dst: 'default', scope: 'link' })]), OPTS);
    expect(config.router).toBeUndefined();
    expect(config.routes).toEqual([{ dst: '0.0.0.0/0', gateway: '0.0.0.0' }]);
  });

  it('gives no config, and no warning, when there is no IPv4 address to give', () => {
    expect(configFrom(pod([{ family: 'inet6', local: 'fd00::5', prefixlen: 64, scope: 'global', flags: [] }], []), OPTS)).toEqual({ warnings: [] });
    expect(configFrom(pod([a4('10.0.0.5', 24, { scope: 'link' })], []), OPTS)).toEqual({ warnings: [] });
    expect(configFrom(pod([], []), SECONDARY)).toEqual({ warnings: [] });
  });
});

describe('dhcpConfigFrom, per NIC', () => {
  const [eth0, net1, net2, net3] = MULTUS.interfaces as [PodInterface, PodInterface, PodInterface, PodInterface];
  const ctx = (primary: boolean): NicContext => ({ serverId: '169.254.75.1', leaseSeconds: 600, primary, dns: MULTUS.dns, hostname: MULTUS.hostname });

  it('the primary NIC gets the default route, DNS, search domains and the hostname', () => {
    const { config, warnings } = dhcpConfigFrom(eth0, ctx(true));
    expect(warnings).toEqual([]);
    expect(config).toMatchObject({
      vmMac: '0a:58:0a:16:00:05',
      ip: '10.22.0.5',
      prefixlen: 32,
      router: '10.22.0.1',
      dns: ['10.96.0.10'],
      domain: 'default.svc.cluster.local',
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      hostname: 'vm-pod',
      leaseSeconds: 600,
    });
    expect(config.routes).toEqual([
      { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
      { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
      { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
    ]);
  });

  it('a secondary NIC gets its own address and routes only: no default route, no DNS, no hostname', () => {
    const one = dhcpConfigFrom(net1, ctx(false));
    expect(one.warnings).toEqual([]);
    expect(one.config).toEqual({
      vmMac: '0a:58:0a:1e:00:05',
      ip: '10.30.0.5',
      prefixlen: 24,
      routes: [],
      dns: [],
      search: [],
      mtu: 1500,
      broadcast: '10.30.0.255',
      serverId: '169.254.75.1',
      leaseSeconds: 600,
    });
    const two = dhcpConfigFrom(net2, ctx(false)).config;
    expect(two.routes).toEqual([{ dst: '192.168.60.0/24', gateway: '192.168.50.1' }]);
    expect(two.router).toBeUndefined();
    expect(two.dns).toEqual([]);
    expect(two.hostname).toBeUndefined();
    expect(two.domain).toBeUndefined();
  });

  it('a secondary NIC\'s own default route is left out, with a warning, so the guest has exactly one', () => {
    const withDefault: PodInterface = { ...net1, routes: [...net1.routes, r({ dst: 'default', gateway: '10.30.0.1', dev: 'net1', metric: 200 })] };
    const { config, warnings } = dhcpConfigFrom(withDefault, ctx(false));
    expect(config.routes).toEqual([]);
    expect(config.router).toBeUndefined();
    expect(warnings).toEqual([expect.stringMatching(/default route default via 10\.30\.0\.1 dev net1 is not given to the VM/)]);
    // The same interface as the primary NIC would hand it out.
    expect(dhcpConfigFrom(withDefault, ctx(true)).config.router).toBe('10.30.0.1');
  });

  it('only the routes through the NIC\'s own interface count', () => {
    const mixed: PodInterface = { ...net1, routes: [...net1.routes, ...eth0.routes] };
    expect(dhcpConfigFrom(mixed, ctx(false)).config.routes).toEqual([]);
  });

  it('an interface without IPv4 (layer 2 only) gets no config at all', () => {
    expect(configFrom(net3, ctx(false))).toEqual({ warnings: [] });
    expect(configFrom(net3, ctx(true))).toEqual({ warnings: [] });
  });
});
