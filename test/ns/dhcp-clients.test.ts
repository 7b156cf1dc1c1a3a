// Real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) against the real
// server, in namespaces laid out as podtap leaves a pod (see
// test/helpers/dhcp-netns.ts). Each client must end up with the pod's
// identity, renew by unicast through the guard, and nothing DHCP may leak to
// the node.

import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dhcpConfigFrom } from '../../src/serve/dhcp4/config.ts';
import type { DhcpConfig } from '../../src/serve/dhcp4/config.ts';
import type { PodNetwork, Route } from '../../src/pod/model.ts';
import { BOUND_EVENT, RENEW_EVENT, events, have, hasUdhcpc, reported, startClient } from '../helpers/dhcp-clients.ts';
import type { ClientName, Reported } from '../helpers/dhcp-clients.ts';
import { SERVER_IP, Topology, netnsList } from '../helpers/dhcp-netns.ts';
import { OTHER_MAC, VM_MAC } from '../helpers/dhcp-packets.ts';

// Renewal at 5 s for dhclient and dhcpcd (dhcpcd raises the lease itself to
// its 20 s minimum but keeps our T1). udhcpc keeps its own schedule: with
// Debian's busybox 1.35 it renews about every 15 s here; other builds
// stretch short leases to 122 s and renew at 61 s, hence its long wait.
const LEASE = 10;
const FLOOD = join(import.meta.dirname, '../helpers/dhcp-flood.ts');
const NODE = join(import.meta.dirname, '../../node_modules/.bin/node');

const canRun =
  process.getuid?.() === 0 &&
  have('ip', ['netns', 'list']) &&
  have('nft', ['--version']) &&
  have('tcpdump', ['--version']) &&
  hasUdhcpc() &&
  have('dhclient', ['--version']) &&
  have('dhcpcd', ['--version']);

const r = (x: Partial<Route> & { dst: string }): Route => ({ family: 'inet', table: 'main', type: 'unicast', dev: 'eth0', flags: [], ...x });
const DNS = { nameservers: ['10.96.0.10', '10.96.0.11'], search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5'] };

interface Shape {
  pod: PodNetwork; // as discovery would report it, with the veth MAC the VM takes over
  nodeAddr: string;
  gateway: string;
  expected: Reported;
}

const SHAPES: Record<'ptp' | 'calico', Shape> = {
  ptp: {
    pod: {
      link: { name: 'eth0', ifindex: 2, kind: 'veth', mac: VM_MAC, mtu: 1450, up: true },
      addresses: [{ family: 'inet', local: '10.22.0.5', prefixlen: 16, broadcast: '10.22.255.255', scope: 'global', flags: [] }],
      routes: [
        r({ dst: 'default', gateway: '10.22.0.1' }),
        r({ dst: '10.22.0.0/16', gateway: '10.22.0.1', prefsrc: '10.22.0.5' }),
        r({ dst: '10.22.0.1', scope: 'link', prefsrc: '10.22.0.5' }),
      ],
      neighbours: [],
      sysctls: {},
      dns: DNS,
      hostname: 'web-ptp-0',
    },
    nodeAddr: '10.22.0.1/32',
    gateway: '10.22.0.1',
    // ptp has no connected route for its /16 (only "/16 via gateway"), so
    // the guest gets a /32 and routes exactly as the pod does.
    expected: {
      ip: '10.22.0.5',
      prefix: 32,
      routes: [
        { dst: '10.22.0.1/32', gateway: '0.0.0.0' },
        { dst: '10.22.0.0/16', gateway: '10.22.0.1' },
        { dst: '0.0.0.0/0', gateway: '10.22.0.1' },
      ],
      router: '10.22.0.1',
      dns: ['10.96.0.10', '10.96.0.11'],
      domain: 'default.svc.cluster.local',
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      hostname: 'web-ptp-0',
      mtu: 1450,
      serverId: SERVER_IP,
      lease: LEASE,
    },
  },
  calico: {
    pod: {
      link: { name: 'eth0', ifindex: 4, kind: 'veth', mac: VM_MAC, mtu: 1480, up: true },
      addresses: [{ family: 'inet', local: '10.23.5.7', prefixlen: 32, scope: 'global', flags: [] }],
      routes: [r({ dst: 'default', gateway: '169.254.1.1' }), r({ dst: '169.254.1.1', scope: 'link' })],
      neighbours: [],
      sysctls: {},
      dns: DNS,
      hostname: 'web-calico-0',
    },
    nodeAddr: '169.254.1.1/32',
    gateway: '169.254.1.1',
    expected: {
      ip: '10.23.5.7',
      prefix: 32,
      routes: [
        { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
        { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
      ],
      router: '169.254.1.1',
      dns: ['10.96.0.10', '10.96.0.11'],
      domain: 'default.svc.cluster.local',
      search: ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'],
      hostname: 'web-calico-0',
      mtu: 1480,
      serverId: SERVER_IP,
      lease: LEASE,
    },
  },
};

function configFor(shape: Shape, over: Partial<DhcpConfig> = {}): DhcpConfig {
  const { config, warnings } = dhcpConfigFrom(shape.pod, { serverId: SERVER_IP, leaseSeconds: LEASE });
  expect(warnings).toEqual([]);
  return { ...config, ...over };
}

async function topology(shape: Shape, vmMac = VM_MAC): Promise<Topology> {
  const t = await Topology.create({ vmIp: shape.expected.ip, nodeAddr: shape.nodeAddr, vmMac });
  // The node routes back to the pod, as a CNI's host side does, so the
  // VM's ping of its gateway proves it really is the pod on the wire.
  await t.exec(t.node, ['ip', 'route', 'add', `${shape.expected.ip}/32`, 'dev', t.nodeVeth]);
  return t;
}

/**
 * dhclient and dhcpcd fill in new_broadcast_address themselves when no
 * option 28 came (the address itself for a /32); udhcpc reports only what
 * was sent.
 */
function asReported(client: ClientName, vars: Record<string, string>, expected: Reported): Reported {
  const got = reported(client, vars);
  if (client !== 'udhcpc' && expected.broadcast === undefined) {
    expect(got.broadcast).toBe(expected.ip);
    delete got.broadcast;
  }
  return got;
}

const made: string[] = [];
const mine = (t: Topology) => made.push(t.pod, t.node, t.vm);

afterAll(async () => {
  if (!canRun) return;
  const left = (await netnsList()).filter((n) => made.includes(n));
  expect(left).toEqual([]);
});

// udhcpc first: its renewal comes at 61 s, the others' at 5 s.
const CASES: [ClientName, 'ptp' | 'calico'][] = [
  ['udhcpc', 'ptp'],
  ['udhcpc', 'calico'],
  ['dhclient', 'ptp'],
  ['dhclient', 'calico'],
  ['dhcpcd', 'ptp'],
  ['dhcpcd', 'calico'],
];

describe.skipIf(!canRun).concurrent('real DHCP clients in namespaces', () => {
  for (const [client, shapeName] of CASES) {
    it(`${client} gets the ${shapeName} pod's identity and renews by unicast`, async () => {
      const shape = SHAPES[shapeName];
      const t = await topology(shape);
      mine(t);
      try {
        const capture = await t.startCapture();
        const server = await t.startServer(configFor(shape));
        const proc = await startClient(t, client);

        const has = (name: string) => (out: string) => events(out).some((e) => e.event === name);
        await proc.waitFor(has(BOUND_EVENT[client]), 40_000, 'a lease');
        const bound = events(proc.out).find((e) => e.event === BOUND_EVENT[client])!;
        expect(asReported(client, bound.vars, shape.expected)).toEqual(shape.expected);

        // The VM now answers as the pod: its gateway is reachable through br0.
        await t.exec(t.vm, ['ping', '-c', '1', '-W', '3', shape.gateway]);

        await proc.waitFor(has(RENEW_EVENT[client]), client === 'udhcpc' ? 100_000 : 40_000, 'a renewal');
        const renewed = events(proc.out).find((e) => e.event === RENEW_EVENT[client])!;
        expect(asReported(client, renewed.vars, shape.expected)).toEqual(shape.expected);
        if (client === 'udhcpc') expect(proc.out).toContain(`sending renew to server ${SERVER_IP}`);
        if (client === 'dhclient') expect(proc.out).toContain(`DHCPREQUEST for ${shape.expected.ip} on eth0 to ${SERVER_IP} port 67`);

        const stats = await server.stats();
        // RENEWING is a REQUEST that arrived unicast on the server-identifier socket.
        expect(stats.acks.renewing).toBeGreaterThanOrEqual(1);
        expect(stats.receivedUnicast).toBeGreaterThanOrEqual(1);
        expect(stats.naks).toBe(0);
        expect(stats.errors).toEqual({ handler: 0, send: 0, socket: 0 });
        expect(stats.lease).toMatchObject({ state: 'bound', expired: false });
        expect(stats.lease.renewals).toBeGreaterThanOrEqual(1);

        // The lease outlived its renewal time: the address is still there.
        const addrs = JSON.parse(await t.exec(t.vm, ['ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0'])) as { addr_info: { local: string; prefixlen: number }[] }[];
        expect(addrs[0]!.addr_info).toContainEqual(expect.objectContaining({ local: shape.expected.ip, prefixlen: shape.expected.prefix }));
        const routes = JSON.parse(await t.exec(t.vm, ['ip', '-j', '-4', 'route', 'show', 'dev', 'eth0'])) as { dst: string; gateway?: string }[];
        expect(routes).toContainEqual(expect.objectContaining({ dst: 'default', gateway: shape.gateway }));
        expect(routes.map((x) => x.dst)).toContain(shape.gateway);

        await proc.stop();
        const seen = await capture.stop();
        expect(seen.dhcp).toEqual([]);
        expect(seen.arp.length).toBeGreaterThan(0); // the capture did see the VM
      } finally {
        await t.cleanup();
      }
    });
  }

  it('a guest rebooting with a stale address is NAKed, then gets the pod\'s', async () => {
    const shape = SHAPES.ptp;
    const t = await topology(shape);
    mine(t);
    try {
      const capture = await t.startCapture();
      const server = await t.startServer(configFor(shape));
      // An unexpired lease on another address: dhclient starts in INIT-REBOOT.
      const stale = [
        'lease {',
        '  interface "eth0";',
        '  fixed-address 10.22.0.99;',
        '  option subnet-mask 255.255.0.0;',
        `  option dhcp-server-identifier ${SERVER_IP};`,
        '  renew 4 2037/01/01 00:00:00;',
        '  rebind 4 2037/01/01 00:00:00;',
        '  expire 4 2037/01/01 00:00:00;',
        '}',
        '',
      ].join('\n');
      const proc = await startClient(t, 'dhclient', { leases: stale });
      await proc.waitFor((o) => events(o).some((e) => e.event === 'BOUND'), 40_000, 'a lease');
      expect(proc.out).toContain('DHCPREQUEST for 10.22.0.99');
      expect(proc.out).toContain(`DHCPNAK from ${SERVER_IP}`);
      const bound = events(proc.out).find((e) => e.event === 'BOUND')!;
      expect(asReported('dhclient', bound.vars, shape.expected)).toEqual(shape.expected);
      const stats = await server.stats();
      expect(stats.naks).toBeGreaterThanOrEqual(1);
      const nak = server.logs().find((l) => l.msg.startsWith('dhcp: NAK'));
      expect(nak?.fields).toMatchObject({ state: 'init-reboot', to: '255.255.255.255' });
      await proc.stop();
      expect((await capture.stop()).dhcp).toEqual([]);
    } finally {
      await t.cleanup();
    }
  });

  it('a client with another MAC gets nothing, and is logged once', async () => {
    const shape = SHAPES.calico;
    const t = await topology(shape, OTHER_MAC);
    mine(t);
    try {
      const capture = await t.startCapture();
      const server = await t.startServer(configFor(shape));
      const proc = await startClient(t, 'udhcpc', { args: ['-n', '-t', '3', '-T', '1'] });
      expect(await proc.wait()).not.toBe(0);
      expect(events(proc.out).map((e) => e.event)).not.toContain('bound');
      const stats = await server.stats();
      expect(stats.dropped['foreign-mac']).toBeGreaterThanOrEqual(3);
      expect(stats.replied).toEqual({ OFFER: 0, ACK: 0, NAK: 0 });
      const logged = server.logs().filter((l) => l.msg.includes('not answering'));
      expect(logged).toHaveLength(1);
      expect(logged[0]!.fields).toMatchObject({ mac: OTHER_MAC });
      const seen = await capture.stop();
      expect(seen.dhcp).toEqual([]);
    } finally {
      await t.cleanup();
    }
  });

  it('a flood of malformed and foreign packets is survived, with bounded logging', async () => {
    const shape = SHAPES.ptp;
    const t = await topology(shape);
    mine(t);
    try {
      const capture = await t.startCapture();
      const server = await t.startServer(configFor(shape));
      // Give the VM its address by hand so it can unicast to the server too.
      await t.exec(t.vm, ['ip', 'link', 'set', 'eth0', 'up']);
      await t.exec(t.vm, ['ip', 'addr', 'add', '10.22.0.5/16', 'dev', 'eth0']);
      await t.exec(t.vm, ['ip', 'route', 'add', 'default', 'via', '10.22.0.1']);
      const flood = t.spawn('flood', t.vm, [NODE, FLOOD, '10.22.0.5', '4000']);
      expect(await flood.wait()).toBe(0);
      const sent = JSON.parse(flood.out.trim().split('\n').at(-1)!) as { sent: number; failed: number };
      expect(sent.sent).toBeGreaterThan(3000);

      // Let the server drain its socket, then check it is still sane.
      await new Promise((res) => setTimeout(res, 1000));
      const stats = await server.stats();
      expect(server.alive()).toBe(true);
      expect(stats.received).toBeGreaterThan(1000);
      expect(stats.errors.handler).toBe(0);
      const malformed = Object.entries(stats.dropped).filter(([k]) => k.startsWith('malformed:'));
      expect(malformed.length).toBeGreaterThan(0);
      expect(stats.dropped['foreign-mac']).toBeGreaterThan(100);
      // At most ten new-MAC lines a minute, however many MACs there were.
      expect(server.logs().filter((l) => l.msg.includes('not answering')).length).toBeLessThanOrEqual(10);
      expect(server.logs().length).toBeLessThan(200);

      // And it still serves the VM.
      await t.exec(t.vm, ['ip', 'addr', 'flush', 'dev', 'eth0']);
      // -B asks for broadcast replies: the path where a socket bound to br0's
      // address must get 255.255.255.255 out of br0.
      const proc = await startClient(t, 'udhcpc', { args: ['-n', '-q', '-B', '-t', '5', '-T', '1'] });
      expect(await proc.wait()).toBe(0);
      expect(reported('udhcpc', events(proc.out).find((e) => e.event === 'bound')!.vars)).toEqual(shape.expected);
      const answered = server.logs().filter((l) => l.fields?.state === 'selecting');
      expect(answered.at(-1)?.fields).toMatchObject({ to: '255.255.255.255' });
      expect((await server.stats()).errors).toEqual({ handler: 0, send: 0, socket: 0 });

      const seen = await capture.stop();
      expect(seen.dhcp).toEqual([]);
    } finally {
      await t.cleanup();
    }
  });
});
