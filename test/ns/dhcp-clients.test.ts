// Real DHCP clients against the real podtap: busybox udhcpc, ISC dhclient and
// dhcpcd, each with the scripts a guest would run (test/helpers/
// dhcp-clients.ts), in a guest namespace behind `podtap run -- tap-guest`
// (test/helpers/guest-ns.ts), for the ptp, calico and bridge pod shapes on
// both data paths. Each client must get the pod's address, routes (the
// guest's routing table is the pod's), DNS servers and search list (in the
// resolv.conf its script writes), MTU and hostname, and renew by unicast to
// the server identifier, answered: the client reports the renewal and podtap
// logs the ACK in the RENEWING state, which it only assigns to a request
// that came unicast. A tcpdump on the node's end of the pod veth, running
// while each client does all this, must see no DHCP at all (and does see the
// guest's pings, so it is looking). Also: a client with another MAC gets
// nothing and podtap logs it once; a guest rebooting with a stale address
// is NAKed and then gets the pod's.
//
// The guest's link starts each client at MTU 1500, so the pod's MTU (1450
// for calico) is the client's doing. The clients' scripts are contained (see
// dhcp-clients.ts); the machine's /etc/resolv.conf, /etc and hostname are
// compared before and after the file.
//
// One pod and one podtap (--lease-time 10) per shape and data path, shared
// by that rig's clients, which run one after the other; three rigs work at
// once. About 90 s.
//
// A missing client binary fails these tests: test/install.sh, which npm test
// runs first, installs them.

import { lstat, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { startGuestNs, type GuestNs } from '../helpers/guest-ns.ts';
import { startCapture } from '../helpers/capture.ts';
import { limiter } from '../helpers/limit.ts';
import {
  BOUND_EVENT,
  CLIENTS,
  RENEW_EVENT,
  events,
  missingClients,
  reported,
  startClient,
  writtenResolvConf,
  type ClientName,
  type ClientProc,
  type Reported,
} from '../helpers/dhcp-clients.ts';
import { OTHER_MAC } from '../helpers/dhcp-packets.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const LEASE = 10;
const SERVER_ID = '169.254.75.1';
const missing = missingClients();
// npm test installs every client first (test/install.sh): a missing one is
// a failure, never a skip.
const strict = true;
const skip = missing.length > 0 && !strict;

type Json = Record<string, any>;
type ShapeName = 'ptp' | 'calico' | 'bridge';
type Datapath = 'bridge' | 'redirect';

/** What the guest must be told, beyond what the pod itself says (address, DNS, hostname, MTU). */
const OPTIONS: Record<ShapeName, (pod: Pod) => Pick<Reported, 'prefix' | 'routes' | 'router' | 'broadcast'>> = {
  // ptp has no connected route for its /16 (only "/16 via gateway"): the
  // guest gets a /32 and the pod's routes, on-link one first.
  ptp: (p) => ({
    prefix: 32,
    routes: [
      { dst: `${p.gateway}/32`, gateway: '0.0.0.0' },
      { dst: '10.22.0.0/16', gateway: p.gateway! },
      { dst: '0.0.0.0/0', gateway: p.gateway! },
    ],
    router: p.gateway!,
  }),
  calico: (p) => ({
    prefix: 32,
    routes: [
      { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
    ],
    router: p.gateway!,
  }),
  // The bridge plugin's pod has its /16 connected: the mask carries it.
  bridge: (p) => ({ prefix: 16, routes: [{ dst: '0.0.0.0/0', gateway: p.gateway! }], router: p.gateway!, broadcast: '10.21.255.255' }),
};

function expected(shape: ShapeName, pod: Pod): Reported {
  return {
    ip: pod.podIP,
    ...OPTIONS[shape](pod),
    dns: pod.resolvConf.nameservers,
    domain: pod.resolvConf.search[0]!,
    search: pod.resolvConf.search,
    hostname: pod.hostname,
    mtu: pod.expect.mtu,
    serverId: SERVER_ID,
    lease: LEASE,
  };
}

/** dhclient and dhcpcd fill in a broadcast address themselves when none came (the address itself for a /32). */
function asReported(client: ClientName, vars: Record<string, string>, want: Reported): Reported {
  const got = reported(client, vars);
  if (client !== 'udhcpc' && want.broadcast === undefined) {
    expect(got.broadcast).toBe(want.ip);
    delete got.broadcast;
  }
  return got;
}

// ---------------------------------------------------------------------------
// The machine must not notice

interface MachineState {
  resolvConf: string;
  resolvStat: string;
  hostname: string;
  etc: string[];
}

async function machineState(): Promise<MachineState> {
  const st = await lstat('/etc/resolv.conf');
  return {
    resolvConf: await readFile('/etc/resolv.conf', 'utf8'),
    resolvStat: `${st.ino} ${st.size} ${st.mtimeMs} ${st.mode}`,
    hostname: hostname(),
    etc: (await readdir('/etc')).sort(),
  };
}

let machineBefore: MachineState;
let scratch: string;
beforeAll(async () => {
  machineBefore = await machineState();
  // Not under /run: each client gets a tmpfs over /run, and its scripts live here.
  scratch = await mkdtemp(join(tmpdir(), 'podtap-test-dhcp-'));
  cleanup.path(scratch);
});
afterAll(async () => {
  if (!machineBefore) return;
  expect(await machineState(), "the machine's /etc/resolv.conf, /etc and hostname").toEqual(machineBefore);
});

// ---------------------------------------------------------------------------
// Rigs: a pod, a podtap and a guest, shared by one shape and data path

interface Rig {
  shape: ShapeName;
  datapath: Datapath;
  pod: Pod;
  g: GuestNs;
}

const rigs = new Map<string, Promise<Rig>>();
const serial = new Map<string, ReturnType<typeof limiter>>();
const atOnce = limiter(3);

function rig(shape: ShapeName, datapath: Datapath): Promise<Rig> {
  const key = `${shape}/${datapath}`;
  let r = rigs.get(key);
  if (!r) {
    r = (async () => {
      const pod = await makePod(shape, { cleanup });
      const g = await startGuestNs(pod, {
        cleanup,
        podtapArgs: ['--datapath', datapath, '--lease-time', String(LEASE), '--log-format', 'json', '--log-level', 'debug'],
        // The guest's link starts at 1500 whatever the pod's MTU: setting it is the client's job.
        nics: [{ fds: '{fds}', ifname: 'eth0', mac: '{mac}', mtu: 1500 }],
      });
      return { shape, datapath, pod, g };
    })();
    rigs.set(key, r);
  }
  return r;
}

/** Runs `fn` on the rig once the rig's earlier cases are done, with at most three rigs busy. */
function onRig<T>(shape: ShapeName, datapath: Datapath, fn: (r: Rig) => Promise<T>): Promise<T> {
  const key = `${shape}/${datapath}`;
  if (!serial.has(key)) serial.set(key, limiter(1));
  return serial.get(key)!(() => atOnce(async () => fn(await rig(shape, datapath))));
}

afterAll(async () => {
  for (const r of rigs.values()) {
    const { g } = await r.catch(() => ({ g: undefined }));
    if (!g) continue;
    const stopped = await g.stop();
    expect(stopped.exitCode, stopped.stderr).toBe(0);
  }
});

/** podtap's JSON log lines written since `from` (tap-guest's plain lines left out). */
function podtapLog(r: Rig, from = 0): Json[] {
  return r.g.podtap
    .stderr()
    .slice(from)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Json);
}

async function ipJson(ns: string, args: string[]): Promise<Json[]> {
  const r = await run('ip', ['-n', ns, '-j', ...args]);
  return r.stdout.trim() ? (JSON.parse(r.stdout) as Json[]) : [];
}

/** The guest's eth0 as a fresh VM has it: no IPv4 address or route, MTU 1500. */
async function resetGuest(r: Rig): Promise<void> {
  await run('ip', ['-n', r.g.ns, '-4', 'addr', 'flush', 'dev', 'eth0']);
  await run('ip', ['-n', r.g.ns, '-4', 'route', 'flush', 'dev', 'eth0']);
  await run('ip', ['-n', r.g.ns, 'link', 'set', 'dev', 'eth0', 'mtu', '1500']);
}

/** tcpdump on the node's end of the pod veth: DHCP and ICMP. */
async function nodeCapture(r: Rig) {
  const cap = await startCapture(r.pod.node, r.pod.hostIfname, cleanup, ['udp', 'port', '67', 'or', 'udp', 'port', '68', 'or', 'icmp']);
  return {
    async stop() {
      const lines = await cap.stop();
      return { dhcp: lines.filter((l) => / (IPv4|IP), .*\.6[78] > |BOOTP\/DHCP/.test(l)), icmp: lines.filter((l) => /ICMP/.test(l)) };
    },
  };
}

const has = (name: string) => (out: string) => events(out).some((e) => e.event === name);

/** The routes of the pod's IPv4 table, as "dst gateway". */
const podRoutes = (pod: Pod) => [...new Set(pod.expect.routes.filter((x) => x.family === 'inet').map((x) => `${x.dst} ${x.gateway ?? ''}`))].sort();

async function checkIdentity(r: Rig, c: ClientProc, vars: Record<string, string>, want: Reported): Promise<void> {
  const { pod, g } = r;
  expect(asReported(c.name, vars, want)).toEqual(want);
  // The script set the hostname (dhcpcd makes an FQDN with the domain).
  expect(vars.GUEST_HOSTNAME?.split('.')[0]).toBe(pod.hostname);
  // The address, and a routing table that is the pod's.
  const [link] = await ipJson(g.ns, ['-4', 'addr', 'show', 'dev', 'eth0']);
  expect(link!.addr_info.map((a: Json) => `${a.local}/${a.prefixlen}`)).toEqual([`${pod.podIP}/${want.prefix}`]);
  const routes = await ipJson(g.ns, ['-4', 'route', 'show', 'dev', 'eth0']);
  expect([...new Set(routes.map((x) => `${x.dst} ${x.gateway ?? ''}`))].sort()).toEqual(podRoutes(pod));
  // The pod's MTU: on the link (udhcpc's script, dhclient-script) or on
  // every route (dhcpcd).
  const mtu = Number((await ipJson(g.ns, ['link', 'show', 'dev', 'eth0']))[0]!.mtu);
  const routeMtus = routes.map((x) => Number(x.metrics?.find?.((m: Json) => m.mtu !== undefined)?.mtu ?? x.mtu ?? NaN));
  expect(mtu === pod.expect.mtu || routeMtus.every((m) => m === pod.expect.mtu), `link MTU ${mtu}, route MTUs ${routeMtus}`).toBe(true);
  // The resolver configuration the script wrote.
  const rc = (await writtenResolvConf(c)) ?? '';
  const lines = rc.split('\n');
  expect(lines.filter((l) => l.startsWith('nameserver ')).map((l) => l.split(/\s+/)[1])).toEqual(pod.resolvConf.nameservers);
  expect(lines.find((l) => l.startsWith('search '))?.split(/\s+/).slice(1).map((s) => s.replace(/\.$/, ''))).toEqual(pod.resolvConf.search);
}

async function ping(r: Rig): Promise<boolean> {
  const res = await r.g.run(['ping', '-c', '1', '-W', '2', r.pod.nodeAddr], { reject: false });
  return res.exitCode === 0;
}

async function clientCase(r: Rig, client: ClientName): Promise<void> {
  const want = expected(r.shape, r.pod);
  await resetGuest(r);
  const logFrom = r.g.podtap.stderr().length;
  const cap = await nodeCapture(r);
  const c = await startClient(r.g, client, scratch, cleanup);
  try {
    await c.waitFor(has(BOUND_EVENT[client]), 30_000, 'a lease');
    const bound = events(c.out()).find((e) => e.event === BOUND_EVENT[client])!;
    await checkIdentity(r, c, bound.vars, want);
    // The guest is the pod on the wire: the node answers it.
    expect(await ping(r)).toBe(true);

    // Renewal: unicast to the server identifier, through the pod's routes,
    // taken off the TAP by podtap before the guard (which would drop it).
    await c.waitFor(has(RENEW_EVENT[client]), 40_000, 'a renewal');
    const renewed = events(c.out()).find((e) => e.event === RENEW_EVENT[client])!;
    expect(asReported(client, renewed.vars, want)).toEqual(want);
    const out = c.out();
    // (busybox udhcpc sometimes closes its unicast socket before podtap's ACK
    // lands and then broadcasts the renewal as well: its own race, not a
    // missing answer, which the ACK in podtap's log below rules out.)
    if (client === 'udhcpc') expect(out).toContain(`sending renew to server ${SERVER_ID}`);
    if (client === 'dhclient') expect(out).toContain(`DHCPREQUEST for ${r.pod.podIP} on eth0 to ${SERVER_ID} port 67`);
    if (client === 'dhcpcd') expect(out).toContain(`renewing lease of ${r.pod.podIP}`);
    const acks = podtapLog(r, logFrom).filter((l) => l.msg === 'dhcp: ACK (renewing)');
    expect(acks.length, JSON.stringify(podtapLog(r, logFrom))).toBeGreaterThanOrEqual(1);
    expect(acks[0]).toMatchObject({ state: 'renewing', mac: r.g.ready.mac, to: r.pod.podIP });
    expect(podtapLog(r, logFrom).filter((l) => /^dhcp: NAK/.test(l.msg))).toEqual([]);
    // Still bound after the renewal.
    expect((await ipJson(r.g.ns, ['-4', 'addr', 'show', 'dev', 'eth0']))[0]!.addr_info.map((a: Json) => a.local)).toEqual([r.pod.podIP]);
  } finally {
    await c.stop();
    const seen = await cap.stop();
    expect(seen.dhcp, 'DHCP on the node side of the pod veth').toEqual([]);
    expect(seen.icmp.length, 'the capture saw the guest\'s pings').toBeGreaterThan(0);
  }
}

const RIGS: [ShapeName, Datapath][] = [
  ['ptp', 'bridge'],
  ['ptp', 'redirect'],
  ['calico', 'bridge'],
  ['calico', 'redirect'],
  ['bridge', 'bridge'],
  ['bridge', 'redirect'],
];

describe.skipIf(skip)('real DHCP clients against podtap, in a guest namespace', () => {
  it('every client is installed (test/install.sh)', () => {
    expect(missing).toEqual([]);
  });

  describe.concurrent('get the pod\'s identity and renew by unicast, with no DHCP on the node side', () => {
    for (const [shape, datapath] of RIGS) {
      for (const client of CLIENTS) {
        it(`${client}: ${shape} pod, ${datapath} data path`, () => onRig(shape, datapath, (r) => clientCase(r, client)), 150_000);
      }
    }

    it('a client with another MAC gets nothing, and podtap logs it once (calico pod, bridge data path)', () =>
      onRig('calico', 'bridge', async (r) => {
        await resetGuest(r);
        const setMac = async (m: string) => {
          await run('ip', ['-n', r.g.ns, 'link', 'set', 'dev', 'eth0', 'down']);
          await run('ip', ['-n', r.g.ns, 'link', 'set', 'dev', 'eth0', 'address', m, 'up']);
        };
        const logFrom = r.g.podtap.stderr().length;
        const cap = await nodeCapture(r);
        await setMac(OTHER_MAC);
        try {
          const c = await startClient(r.g, 'udhcpc', scratch, cleanup, { args: ['-n', '-t', '3', '-T', '1'] });
          expect(await c.exited).not.toBe(0);
          expect(c.out().match(/broadcasting discover/g)).toHaveLength(3);
          expect(c.out()).not.toMatch(/lease of/);
          expect(events(c.out()).map((e) => e.event)).not.toContain('bound');
          const log = podtapLog(r, logFrom);
          expect(log.filter((l) => /^dhcp: (OFFER|ACK|NAK)/.test(l.msg))).toEqual([]);
          const foreign = log.filter((l) => l.msg === "dhcp: not answering a MAC that is not the VM's");
          expect(foreign).toHaveLength(1);
          expect(foreign[0]).toMatchObject({ mac: OTHER_MAC });
        } finally {
          await setMac(r.g.ready.mac);
          expect((await cap.stop()).dhcp).toEqual([]);
        }
      }), 150_000);

    it('a guest rebooting with a stale address is NAKed, then gets the pod\'s (dhclient, ptp pod, redirect data path)', () =>
      onRig('ptp', 'redirect', async (r) => {
        await resetGuest(r);
        // An unexpired lease on another address: dhclient starts in INIT-REBOOT.
        const stale = [
          'lease {',
          '  interface "eth0";',
          '  fixed-address 10.22.0.99;',
          '  option subnet-mask 255.255.255.255;',
          `  option dhcp-server-identifier ${SERVER_ID};`,
          '  renew 4 2037/01/01 00:00:00;',
          '  rebind 4 2037/01/01 00:00:00;',
          '  expire 4 2037/01/01 00:00:00;',
          '}',
          '',
        ].join('\n');
        const logFrom = r.g.podtap.stderr().length;
        const cap = await nodeCapture(r);
        const c = await startClient(r.g, 'dhclient', scratch, cleanup, { leases: stale });
        try {
          await c.waitFor(has('BOUND'), 40_000, 'a lease');
          expect(c.out()).toContain('DHCPREQUEST for 10.22.0.99');
          expect(c.out()).toContain(`DHCPNAK from ${SERVER_ID}`);
          expect(events(c.out()).map((e) => e.event)).not.toContain('REBOOT');
          const bound = events(c.out()).find((e) => e.event === 'BOUND')!;
          await checkIdentity(r, c, bound.vars, expected('ptp', r.pod));
          const naks = podtapLog(r, logFrom).filter((l) => /^dhcp: NAK/.test(l.msg));
          expect(naks.length).toBeGreaterThanOrEqual(1);
          expect(naks[0]).toMatchObject({ state: 'init-reboot', to: '255.255.255.255', mac: r.g.ready.mac });
        } finally {
          await c.stop();
          expect((await cap.stop()).dhcp).toEqual([]);
        }
      }), 150_000);
  });
});
