// What a guest gets over IPv6 from podtap, told by real clients: dhcpcd
// (router advertisements and DHCPv6, and DHCPv4 in the same process) and
// ISC dhclient -6 (DHCPv6 only, next to a dhclient -4; its default route
// comes from the guest kernel's own RA handling, as on a Debian guest with
// ifupdown), in a guest namespace behind `podtap run -- tap-guest`, for
// every IPv6 pod shape (test/helpers/pods6.ts) on both data paths.
//
// Each client must get: the pod's IPv6 address by DHCPv6 (as a /128) and
// no other global address, not even for a moment (`ip monitor address`
// watches the guest from before the client starts: a client once added the
// gateway's own address from an advertised on-link /128); the default route
// via the right router (podtap's fe80::1, which must resolve to the
// gateway's MAC, or Calico's link-local gateway itself) and on-link exactly
// the prefixes the pod had on-link; the pod's IPv6 nameservers and search
// list (dhcpcd: from the RA's RDNSS/DNSSL and DHCPv6 options 23/24;
// dhclient: options 23/24) in the resolv.conf its script writes; the pod's
// MTU; a ping to an address in the node namespace through that router; a
// DHCPv6 renewal (--lease-time 10). Dual-stack pods also give the guest its
// IPv4 address and gateway by DHCPv4 at the same time; the IPv6-only pod is
// served (not refused) and the guest's DHCPv4 gets no answer at all.
//
// On the node's side of the pod interface a raw capture, running from
// before podtap starts to after it stops, must see no router advertisement,
// no DHCP of either family and no neighbour advertisement but the guest's
// own; the only frame podtap itself may send there is its one neighbour
// solicitation for the gateway's MAC, and it must be exactly that frame.
// The pod namespace is the same afterwards as before (snapshot.ts).
//
// The clients' scripts are contained as in dhcp-clients.ts: a private mount
// namespace with an overlay over /etc and tmpfs over /run, /var/lib/dhcp
// and /var/lib/dhcpcd, so nothing of the machine's changes (checked).
//
// One pod, podtap and guest per case; three cases at a time.

import { lstat, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, type ExpectStatic } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { DATAPATHS, type Datapath } from '../helpers/pods.ts';
import { startGuestNs, startRecv, type GuestNs } from '../helpers/guest-ns.ts';
import { events, reportingScript, startContained, writtenResolvConf, type ContainedProc } from '../helpers/dhcp-clients.ts';
import { startPodtap } from '../helpers/podtap.ts';
import { diffSnapshots, snapshot, waitSettled } from '../helpers/snapshot.ts';
import { limiter } from '../helpers/limit.ts';
import {
  SHAPES6,
  gatewaySolicitation,
  isPortMld,
  makePod6,
  monitorAddresses,
  nodeSideViolations,
  parseHexFrames,
  podtapStatus,
  waitStatus,
  type Nic6,
  type Pod6,
  type Shape6,
} from '../helpers/pods6.ts';
import { eui64LinkLocal } from '../../src/serve/frames.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const LEASE = 10;
type Client = 'dhcpcd' | 'dhclient';
const CLIENTS: readonly Client[] = ['dhcpcd', 'dhclient'];
type Json = Record<string, any>;

// ---------------------------------------------------------------------------
// The machine must not notice

interface MachineState {
  resolvConf: string;
  resolvStat: string;
  hostname: string;
  etc: string[];
  varLib: string[];
}

async function machineState(): Promise<MachineState> {
  const st = await lstat('/etc/resolv.conf');
  const list = async (d: string) => (await readdir(d).catch(() => [] as string[])).sort();
  return {
    resolvConf: await readFile('/etc/resolv.conf', 'utf8'),
    resolvStat: `${st.ino} ${st.size} ${st.mtimeMs} ${st.mode}`,
    hostname: hostname(),
    etc: await list('/etc'),
    varLib: [...(await list('/var/lib/dhcp')).map((f) => `dhcp/${f}`), ...(await list('/var/lib/dhcpcd')).map((f) => `dhcpcd/${f}`)],
  };
}

let machineBefore: MachineState | undefined;
let scratch: string;
beforeAll(async () => {
  machineBefore = await machineState();
  // Not under /run: every client gets a tmpfs over /run, and its scripts live here.
  scratch = await mkdtemp(join(tmpdir(), 'podtap-test-ipv6-'));
  cleanup.path(scratch);
});
afterAll(async () => {
  if (!machineBefore) return;
  expect(await machineState(), "the machine's /etc, /var/lib/dhcp{,cd} and hostname").toEqual(machineBefore);
});

// ---------------------------------------------------------------------------
// Contained clients (dhcp-clients.ts: startContained, reportingScript)

// One dhcpcd for both families, as a distribution runs it: router
// solicitation, DHCPv6 when the RA says M=1, DHCPv4.
const DHCPCD_CONF = `noarp
noipv4ll
option domain_name_servers, domain_name, domain_search, host_name, interface_mtu, classless_static_routes
option dhcp6_name_servers, dhcp6_domain_search
`;

// Debian's dhclient.conf asks for these; ours has to say so itself.
const DHCLIENT6_CONF = 'request dhcp6.name-servers, dhcp6.domain-search;\n';
const DHCLIENT4_CONF = `request subnet-mask, broadcast-address, routers, domain-name-servers, domain-name,
  domain-search, host-name, interface-mtu, dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;
`;

const eventOf = (p: ContainedProc, name: string) => events(p.out()).find((e) => e.event === name);
const has = (name: string) => (out: string) => events(out).some((e) => e.event === name);
const words = (s: string | undefined) => (s ?? '').split(/\s+/).filter(Boolean);

async function resolvConfOf(p: ContainedProc): Promise<{ nameservers: string[]; search: string[] }> {
  const text = (await writtenResolvConf(p)) ?? '';
  const lines = text.split('\n');
  return {
    nameservers: lines.filter((l) => l.startsWith('nameserver ')).map((l) => words(l)[1]!),
    search: lines.filter((l) => l.startsWith('search ')).flatMap((l) => words(l).slice(1)).map((d) => d.replace(/\.$/, '')),
  };
}

// ---------------------------------------------------------------------------
// The guest's view

async function guestJson(g: GuestNs, args: string[]): Promise<Json[]> {
  const r = await run('ip', ['-n', g.ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Json[]) : [];
}

async function globalAddrs(g: GuestNs, family: '-4' | '-6'): Promise<string[]> {
  const [l] = await guestJson(g, [family, 'addr', 'show', 'dev', 'eth0', 'scope', 'global']);
  // ip -j leaves an empty object for each address the scope filter dropped.
  return ((l?.addr_info ?? []) as Json[]).filter((a) => a.local).map((a) => `${a.local}/${a.prefixlen}`);
}

/** The guest's IPv6 routes through eth0, link-local and multicast left out, as "dst via gw". */
async function routes6(g: GuestNs): Promise<Json[]> {
  return (await guestJson(g, ['-6', 'route', 'show', 'dev', 'eth0'])).filter((r) => r.dst !== 'fe80::/64' && !String(r.dst).startsWith('ff'));
}

async function ping(g: GuestNs, addr: string): Promise<boolean> {
  for (let i = 0; i < 5; i++) {
    if ((await g.run(['ping', '-c', '1', '-W', '2', addr], { reject: false })).exitCode === 0) return true;
  }
  return false;
}

async function until<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what} within ${ms} ms`);
    await sleep(200);
  }
}

/**
 * The guest's IPv6 routing through eth0 is the pod's: a default route via
 * the router, the pod's on-link prefixes on-link, and nothing else on-link
 * but its own address (a route some clients add with the /128). Other
 * routes may only go via the router.
 */
function checkRoutes6(ex: ExpectStatic, routes: Json[], nic: Nic6, label: string): void {
  // Soft: the case goes on, so that the addresses the guest took are checked too.
  const dflt = routes.filter((r) => r.dst === 'default');
  ex.soft(dflt.map((r) => r.gateway), `${label}: default routes ${JSON.stringify(routes)}`).toEqual([nic.router]);
  for (const p of nic.onLink) ex.soft(routes.some((r) => r.dst === p && !r.gateway), `${label}: ${p} on-link in ${JSON.stringify(routes)}`).toBe(true);
  const stray = routes.filter((r) => r.dst !== 'default' && !(r.gateway === nic.router) && !nic.onLink.includes(r.dst) && r.dst !== nic.ip6 && r.dst !== `${nic.ip6}/128`);
  ex.soft(stray, `${label}: routes the pod does not have`).toEqual([]);
}

// ---------------------------------------------------------------------------

const atOnce = limiter(3);

/** `ex` is the running test's own expect, for soft assertions: concurrent tests cannot use the global one; `c` is the case's own Cleanup. */
async function clientCase(shape: Shape6, datapath: Datapath, client: Client, ex: ExpectStatic, c: Cleanup): Promise<void> {
  // Where a case that overruns its time is stuck, for the log.
  let phase = 'start';
  const at = (p: string) => void (phase = p);
  const watchdog = setTimeout(() => console.error(`${client} ${shape} ${datapath}: still at "${phase}" after 150 s`), 150_000);
  watchdog.unref();
  try {
    const pod = await makePod6(shape, { cleanup: c });
    const nic = pod.nics[0]!;
    const v4 = nic.ip4;
    const v6Dns = pod.resolvConf.nameservers.filter((n) => n.includes(':'));
    const podtapAsks = nic.router !== nic.gateway6;
    const neigh = await run('ip', ['-n', pod.pod, '-6', '-j', 'neigh', 'show', 'dev', 'eth0', 'to', nic.gateway6]);
    const known = (JSON.parse(neigh.stdout || '[]') as Json[]).some((n) => n.lladdr);
    const before = await snapshot(pod.pod);

    // From before podtap starts: everything that reaches the node from the pod.
    at('podtap');
    const nodeRecv = await startRecv(pod.node, c, { ifname: pod.hostIfname, timeoutMs: 170_000 });
    const g = await startGuestNs(pod.asPod, {
      cleanup: c,
      podtapArgs: ['--datapath', datapath, '--lease-time', String(LEASE), '--log-format', 'json', '--log-level', 'debug'],
      // The guest's link starts at 1500 whatever the pod's MTU: the RA and DHCPv4 tell it.
      nics: [{ fds: '{fds}', ifname: 'eth0', mac: '{mac}', mtu: 1500 }],
    });
    // Advertising starts once podtap knows whom the router is at layer 2.
    const st = await waitStatus(pod, g.podtap.stateDir, (d) => d.nics?.[0]?.ra?.sent >= 1, 15_000, 'router advertisement');
    expect(st.nics[0].ra).toMatchObject({ needsGatewayMac: false, ...(podtapAsks ? { gatewayMac: nic.routerMac } : {}) });
    if (!podtapAsks) expect(st.nics[0].ra.gatewayMac).toBeUndefined();
    expect(st.nics[0].dhcp4 !== undefined, 'DHCPv4 served exactly when the pod has IPv4').toBe(v4 !== undefined);
    // So far only podtap and the guest's kernel (from :: or its link-local
    // address: duplicate address detection, MLD) can have sent anything, and
    // of podtap only its solicitation for the gateway's MAC may be there.
    const guestLl = eui64LinkLocal(nic.mac);
    const early = nodeRecv.frames().filter((h) => {
      const [f] = parseHexFrames([h]);
      return f!.kind === 'ipv6' && f!.src !== '::' && f!.src !== guestLl;
    });
    if (podtapAsks && !known) {
      expect(early.length, 'podtap asks the gateway its MAC').toBeGreaterThanOrEqual(1);
      for (const h of early) expect(h, "podtap's solicitation, byte for byte").toBe(gatewaySolicitation(nic));
    } else {
      expect(early, 'podtap has nothing to ask').toEqual([]);
    }

    at('clients');
    await waitSettled(g.ns);
    expect(await globalAddrs(g, '-6'), 'no global address before DHCPv6').toEqual([]);
    const monitor = await monitorAddresses(g.ns, c);
    const procs: ContainedProc[] = [];
    let p6: ContainedProc;
    let p4: ContainedProc;
    if (client === 'dhcpcd') {
      // The RA handling to test is dhcpcd's: the guest kernel's own stops here.
      await g.run(['sysctl', '-q', '-w', 'net.ipv6.conf.eth0.accept_ra=0']);
      await run('ip', ['-n', g.ns, '-6', 'route', 'flush', 'dev', 'eth0', 'proto', 'ra']);
      p6 = await startContained(g, 'dhcpcd', scratch, { 'dhcpcd.conf': DHCPCD_CONF, script: reportingScript('/usr/lib/dhcpcd/dhcpcd-run-hooks') }, (d) => ['dhcpcd', '-B', '-d', '-f', join(d, 'dhcpcd.conf'), '-c', join(d, 'script'), 'eth0'], c);
      p4 = p6;
      procs.push(p6);
    } else {
      p6 = await startContained(g, 'dhclient6', scratch, { 'dhclient.conf': DHCLIENT6_CONF, script: reportingScript('/sbin/dhclient-script') }, (d) => ['dhclient', '-6', '-d', '-v', '-cf', join(d, 'dhclient.conf'), '-sf', join(d, 'script'), '-lf', join(d, 'leases'), '-pf', join(d, 'pid'), 'eth0'], c);
      p4 = await startContained(g, 'dhclient4', scratch, { 'dhclient.conf': DHCLIENT4_CONF, script: reportingScript('/sbin/dhclient-script') }, (d) => ['dhclient', '-4', '-d', '-v', '-cf', join(d, 'dhclient.conf'), '-sf', join(d, 'script'), '-lf', join(d, 'leases'), '-pf', join(d, 'pid'), 'eth0'], c);
      procs.push(p6, p4);
    }
    const logFrom = g.podtap.stderr().length;
    try {
      // ---- IPv6: the address by DHCPv6
      await p6.waitFor(has('BOUND6'), 30_000, 'a DHCPv6 lease');
      const bound6 = eventOf(p6, 'BOUND6')!;
      if (client === 'dhcpcd') {
        expect(bound6.vars.new_dhcp6_ia_na1_ia_addr1).toBe(nic.ip6);
        expect(words(bound6.vars.new_dhcp6_name_servers)).toEqual(v6Dns);
        expect(words(bound6.vars.new_dhcp6_domain_search)).toEqual(pod.resolvConf.search);
      } else {
        expect(bound6.vars.new_ip6_address).toBe(nic.ip6);
        expect(words(bound6.vars.new_dhcp6_name_servers)).toEqual(v6Dns);
        expect(words(bound6.vars.new_dhcp6_domain_search).map((d) => d.replace(/\.$/, ''))).toEqual(pod.resolvConf.search);
      }
      expect(await globalAddrs(g, '-6')).toEqual([`${nic.ip6}/128`]);

      at('routes');
      // ---- the router: default route and on-link prefixes from the RA
      const routes = await until(async () => {
        const r = await routes6(g);
        return r.some((x) => x.dst === 'default') && nic.onLink.every((p) => r.some((x) => x.dst === p)) ? r : undefined;
      }, 20_000, 'no default route from the RA');
      checkRoutes6(ex, routes, nic, `${client} ${shape}`);
      if (client === 'dhcpcd') {
        const ra = eventOf(p6, 'ROUTERADVERT');
        expect(ra, p6.out().slice(-4000)).toBeDefined();
        expect(ra!.vars.nd1_from).toBe(nic.router);
        expect(words(ra!.vars.nd1_rdnss1_servers)).toEqual(v6Dns);
        expect(words(ra!.vars.nd1_dnssl1_search)).toEqual(pod.resolvConf.search);
      }
      // The pod's MTU: dhcpcd puts the RA's on its routes, the kernel on the link.
      if (client === 'dhcpcd') expect(routes.find((r) => r.dst === 'default')?.metrics?.find?.((m: Json) => m.mtu)?.mtu ?? routes.find((r) => r.dst === 'default')?.mtu).toBe(nic.mtu);
      else expect(Number((await g.run(['cat', '/proc/sys/net/ipv6/conf/eth0/mtu'])).stdout.trim())).toBe(nic.mtu);

      at('ping');
      // ---- through the router to the node, at the gateway's MAC
      expect(await ping(g, nic.nodeAddr6), `ping ${nic.nodeAddr6}`).toBe(true);
      const [rn] = await guestJson(g, ['-6', 'neigh', 'show', 'dev', 'eth0', 'to', nic.router]);
      expect(rn?.lladdr, `the guest's neighbour entry for ${nic.router}`).toBe(nic.routerMac);

      at('ipv4');
      // ---- IPv4 at the same time, or no answer at all
      if (v4) {
        await p4.waitFor(has('BOUND'), 30_000, 'a DHCPv4 lease');
        expect(eventOf(p4, 'BOUND')!.vars.new_ip_address).toBe(v4.address);
        expect(await globalAddrs(g, '-4')).toEqual([`${v4.address}/${v4.handedPrefix}`]);
        const d4 = await guestJson(g, ['-4', 'route', 'show', 'default']);
        expect(d4.map((r) => r.gateway)).toEqual([v4.gateway]);
        expect(await ping(g, v4.nodeAddr), `ping ${v4.nodeAddr}`).toBe(true);
      }

      // ---- DNS as the client's script wrote it
      const rc = await resolvConfOf(p6);
      const wantNs = client === 'dhcpcd' ? pod.resolvConf.nameservers : v6Dns;
      expect([...rc.nameservers].sort()).toEqual([...wantNs].sort());
      expect(rc.search).toEqual(pod.resolvConf.search);

      at('renewal');
      // ---- a renewal, answered
      await p6.waitFor(has('RENEW6'), 30_000, 'a DHCPv6 renewal');
      const renew6 = eventOf(p6, 'RENEW6')!;
      expect(client === 'dhcpcd' ? renew6.vars.new_dhcp6_ia_na1_ia_addr1 : renew6.vars.new_ip6_address).toBe(nic.ip6);
      if (v4) await p4.waitFor(has('RENEW'), 30_000, 'a DHCPv4 renewal');
      const st2 = await podtapStatus(pod, g.podtap.stateDir);
      expect(st2.nics[0].dhcp6).toMatchObject({ state: 'bound', addresses: [nic.ip6] });
      expect(st2.nics[0].dhcp6.renewals).toBeGreaterThanOrEqual(1);
      expect(await globalAddrs(g, '-6')).toEqual([`${nic.ip6}/128`]);

      if (!v4) {
        // The IPv6-only pod: the guest asked over DHCPv4 all along and got nothing.
        expect(p4.out()).toMatch(client === 'dhcpcd' ? /soliciting a DHCP lease/ : /DHCPDISCOVER on eth0/);
        expect(events(p4.out()).filter((e) => ['BOUND', 'RENEW', 'REBOOT'].includes(e.event))).toEqual([]);
        expect(st2.nics[0].dhcp4).toBeUndefined();
        expect(g.podtap.stderr().slice(logFrom)).not.toMatch(/"msg":"dhcp: (OFFER|ACK)/);
        expect(await globalAddrs(g, '-4')).toEqual([]);
      }
    } finally {
      at('stopping the clients');
      for (const p of procs) await p.stop();
      await monitor.stop();
    }
    // Every address the guest ever held was the pod's.
    const pods = new Set([nic.ip6, ...(v4 ? [v4.address] : [])]);
    const foreign = monitor.added().filter((a) => a.scope !== 'link' && a.scope !== 'host' && !pods.has(a.address.split('/')[0]!));
    expect(foreign.map((a) => a.line), 'addresses the guest held that are not the pod\'s').toEqual([]);

    at('stopping podtap');
    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
    at('snapshot');
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
    const frames = await nodeRecv.stop();
    // MLD from the bridge port's own MAC is the known issue below, not what this case is about.
    expect(nodeSideViolations(parseHexFrames(frames).filter((f) => !(datapath === 'bridge' && isPortMld(f, nic))), nic)).toEqual([]);
    // The capture was looking: the guest's pings went out there.
    expect(parseHexFrames(frames).some((f) => f.kind === 'ipv6' && f.icmp6?.type === 128 && f.dst === nic.nodeAddr6)).toBe(true);
  } finally {
    clearTimeout(watchdog);
  }
}

// Known issue, in the plan (src/plan), not in the servers: on the bridge
// data path the pod interface wears a generated MAC while it is a port of
// the bridge, and keeps an IPv6 stack of its own (address generation off,
// but IPv6 on: podtap cannot write disable_ipv6 in a container). The MLD
// leave reports the kernel sends for the solicited-node groups of the
// addresses podtap has just removed are retransmitted a moment later, by
// then from the generated MAC, straight out of the pod interface (a port's
// own frames pass no bridge hook, so the guard's output chain never sees
// them). The node sees a MAC the pod never had. This test fails until that
// is fixed (proposal: a netdev egress chain on the pod interface that drops
// any source MAC but the VM's, on both data paths).
describe('the node side of the pod interface', () => {
  it('bridge data path: nothing leaves the pod interface from a MAC but the pod\'s', () =>
    cleanup.scope('case bridge MAC', async (c) => {
      const pod = await makePod6('dualstack', { cleanup: c });
      const nic = pod.nics[0]!;
      const recv = await startRecv(pod.node, c, { ifname: pod.hostIfname, timeoutMs: 60_000 });
      const up = startPodtap(pod.asPod, ['up', '--datapath', 'bridge'], c);
      await up.ready;
      // Longer than MLD's unsolicited report interval (1 s) with its retransmission.
      await sleep(3000);
      const frames = parseHexFrames(await recv.stop());
      up.proc.kill('SIGTERM');
      expect((await up.proc).exitCode).toBe(0);
      const foreign = frames.filter((f) => 'eth' in f && f.eth && f.eth.src !== nic.mac);
      const describe = (f: (typeof frames)[number]) => (f.kind === 'ipv6' ? `${f.eth.src}: ${f.src} > ${f.dst} icmp6 ${f.icmp6?.type ?? '-'}` : f.kind);
      expect(foreign.map(describe)).toEqual([]);
    }));
});

describe.concurrent('real IPv6 clients in a guest behind podtap', () => {
  it('the clients are installed (test/install.sh)', async () => {
    for (const [cmd, args] of [['dhcpcd', ['--version']], ['dhclient', ['--version']]] as const) {
      expect((await run(cmd, [...args], { reject: false })).exitCode, cmd).toBe(0);
    }
  });
  for (const shape of SHAPES6) {
    for (const datapath of DATAPATHS) {
      for (const client of CLIENTS) {
        it(`${client}: ${shape} pod, ${datapath} data path`, ({ expect: ex }) => atOnce(() => cleanup.scope(`case ${shape}/${datapath}/${client}`, (c) => clientCase(shape, datapath, client, ex, c))), 170_000);
      }
    }
  }
});
