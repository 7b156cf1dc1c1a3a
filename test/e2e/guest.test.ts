// The test guest on its own, without podtap: if these fail, podtap's e2e
// failures say nothing about podtap. Two private namespaces stand in for
// the pod: "h" holds tap0 + br0 (where QEMU runs), "p" the peer at 10.99.7.1.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildGuest, guestQemuArgs, leaseFromVars, moduleOrder, parseGuestOutput, runGuest,
  type Guest, type GuestOptions, type GuestRun, type RunGuestOptions,
} from '../helpers/guest.ts';

// A real DHCP + renew boot, trimmed, plus a few lines that exercise the
// parser's edges (a kernel message sharing a line, a flag, an error).
const SAMPLE = [
  'PODTAP-GUEST config net=dhcp',
  'PODTAP-GUEST config mode=renew',
  'PODTAP-GUEST boot 6.1.0-56-amd64 2.11',
  'PODTAP-GUEST nic eth0 2.33',
  'udhcpc: started, v1.35.0',
  'PODTAP-GUEST dhcp-event 1 deconfig',
  'PODTAP-GUEST dhcp-var 1 interface=eth0',
  'PODTAP-GUEST dhcp-end 1 deconfig',
  'udhcpc: sending discover',
  'PODTAP-GUEST dhcp-event 2 bound',
  'PODTAP-GUEST dhcp-var 2 broadcast=10.99.7.255',
  'PODTAP-GUEST dhcp-var 2 dns=10.99.7.1 10.99.7.53',
  'PODTAP-GUEST dhcp-var 2 domain=pod.test',
  'PODTAP-GUEST dhcp-var 2 hostname=guest-7',
  'PODTAP-GUEST dhcp-var 2 interface=eth0',
  'PODTAP-GUEST dhcp-var 2 ip=10.99.7.77',
  'PODTAP-GUEST dhcp-var 2 lease=20',
  'PODTAP-GUEST dhcp-var 2 mask=24',
  'PODTAP-GUEST dhcp-var 2 mtu=1400',
  'PODTAP-GUEST dhcp-var 2 opt53=05',
  'PODTAP-GUEST dhcp-var 2 router=10.99.7.1',
  'PODTAP-GUEST dhcp-var 2 search=a.test b.test',
  'PODTAP-GUEST dhcp-var 2 serverid=10.99.7.1',
  'PODTAP-GUEST dhcp-var 2 staticroutes=10.98.0.0/16 10.99.7.1 0.0.0.0/0 10.99.7.1',
  'PODTAP-GUEST dhcp-var 2 subnet=255.255.255.0',
  'PODTAP-GUEST dhcp-end 2 bound',
  'PODTAP-GUEST ping 10.99.7.1 ok 3/3',
  'PODTAP-GUEST report 1 3.90',
  'PODTAP-GUEST mac 52:54:00:AA:BB:01',
  'PODTAP-GUEST mtu 1400',
  'PODTAP-GUEST hostname guest-7',
  'PODTAP-GUEST rxqueues 1',
  'PODTAP-GUEST txqueues 1',
  '[    3.95] some kernel message PODTAP-GUEST addr 2: eth0    inet 10.99.7.77/24 brd 10.99.7.255 scope global eth0\\       valid_lft forever preferred_lft forever',
  'PODTAP-GUEST route default via 10.99.7.1 dev eth0 ',
  'PODTAP-GUEST route 10.98.0.0/16 via 10.99.7.1 dev eth0 onlink metric 5',
  'PODTAP-GUEST route 10.99.7.0/24 dev eth0 scope link  src 10.99.7.77 ',
  'PODTAP-GUEST resolv search a.test b.test',
  'PODTAP-GUEST resolv nameserver 10.99.7.1',
  'PODTAP-GUEST resolv nameserver 10.99.7.53',
  'PODTAP-GUEST link eth0 52:54:00:AA:BB:01 1400',
  'PODTAP-GUEST linkaddr eth0 2: eth0    inet 10.99.7.77/24 brd 10.99.7.255 scope global eth0\\       valid_lft forever preferred_lft forever',
  'PODTAP-GUEST link eth1 52:54:00:aa:bb:02 1500',
  'PODTAP-GUEST report-end 1',
  'PODTAP-GUEST nolease eth1',
  'PODTAP-GUEST renew-requested 4.95',
  'PODTAP-GUEST dhcp-event 3 renew',
  'PODTAP-GUEST dhcp-var 3 ip=10.99.7.77',
  'PODTAP-GUEST dhcp-var 3 lease=20',
  'PODTAP-GUEST dhcp-var 3 mask=24',
  'PODTAP-GUEST dhcp-end 3 renew',
  'PODTAP-GUEST report 2 5.20',
  'PODTAP-GUEST mtu 1400',
  'PODTAP-GUEST tick 1 10.99.7.1 ok 5.31',
  'PODTAP-GUEST tick 2 10.99.7.1 timeout 6.40',
  'PODTAP-GUEST error dhcp route 10.0.0.0/8 via 1.2.3.4 failed',
  'PODTAP-GUEST-DONE',
  '[    5.6] reboot: Power down',
].join('\r\n');

describe('parseGuestOutput', () => {
  it('turns a serial capture into a report', () => {
    const r = parseGuestOutput(SAMPLE);
    expect(r.done).toBe(true);
    expect(r.kernel).toBe('6.1.0-56-amd64');
    expect(r.config).toEqual({ net: 'dhcp', mode: 'renew' });
    expect(r.dhcp.map((e) => e.event)).toEqual(['deconfig', 'bound', 'renew']);
    expect(r.dhcp.every((e) => e.complete)).toBe(true);
    expect(r.renewals).toBe(1);
    expect(r.renewRequested).toBe(true);
    // The lease comes from the last bound/renew, so the renewal wins.
    expect(r.lease?.event).toBe('renew');
    const bound = r.dhcp[1]!.vars;
    expect(bound.dns).toBe('10.99.7.1 10.99.7.53');
    expect(bound.opt53).toBe('05');
    const first = leaseFromVars('bound', bound);
    expect(first).toMatchObject({
      event: 'bound', ip: '10.99.7.77', mask: 24, subnet: '255.255.255.0', mtu: 1400, lease: 20,
      router: ['10.99.7.1'], dns: ['10.99.7.1', '10.99.7.53'], search: ['a.test', 'b.test'],
      domain: 'pod.test', hostname: 'guest-7', serverid: '10.99.7.1', opt53: '05',
      staticroutes: [{ dst: '10.98.0.0/16', gateway: '10.99.7.1' }, { dst: '0.0.0.0/0', gateway: '10.99.7.1' }],
    });
    expect(r.pings).toEqual([{ target: '10.99.7.1', ok: true, received: 3, sent: 3 }]);
    expect(r.ticks).toEqual([
      { n: 1, target: '10.99.7.1', ok: true, uptime: 5.31 },
      { n: 2, target: '10.99.7.1', ok: false, uptime: 6.4 },
    ]);
    expect(r.errors).toEqual(['dhcp route 10.0.0.0/8 via 1.2.3.4 failed']);
    // Snapshot 2 never ended, so "last" is the complete first one.
    expect(r.snapshots).toHaveLength(2);
    const s = r.last!;
    expect(s.seq).toBe(1);
    expect(s).toMatchObject({ mac: '52:54:00:aa:bb:01', mtu: 1400, hostname: 'guest-7', rxQueues: 1, txQueues: 1 });
    expect(s.addresses).toMatchObject([{ local: '10.99.7.77', prefixlen: 24, broadcast: '10.99.7.255', scope: 'global' }]);
    expect(s.routes).toMatchObject([
      { dst: 'default', gateway: '10.99.7.1', dev: 'eth0', onlink: false },
      { dst: '10.98.0.0/16', gateway: '10.99.7.1', onlink: true, metric: 5 },
      { dst: '10.99.7.0/24', dev: 'eth0', scope: 'link', src: '10.99.7.77' },
    ]);
    expect(s.resolv).toMatchObject({ nameservers: ['10.99.7.1', '10.99.7.53'], search: ['a.test', 'b.test'] });
    // Every NIC, each with its own addresses.
    expect(s.links).toMatchObject([
      { name: 'eth0', mac: '52:54:00:aa:bb:01', mtu: 1400, addresses: [{ local: '10.99.7.77', prefixlen: 24 }] },
      { name: 'eth1', mac: '52:54:00:aa:bb:02', mtu: 1500, addresses: [] },
    ]);
    expect(r.noLease).toEqual(['eth1']);
  });

  it('reports an unfinished boot as not done', () => {
    const r = parseGuestOutput('PODTAP-GUEST boot 6.1 1.0\nPODTAP-GUEST error no eth0 after 10s\n');
    expect(r.done).toBe(false);
    expect(r.errors).toEqual(['no eth0 after 10s']);
    expect(r.last).toBeUndefined();
  });
});

describe('moduleOrder', () => {
  it('puts dependencies first, once, and normalises names', () => {
    const dep = [
      'kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz',
      'kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz',
      'kernel/net/core/failover.ko.xz:',
      'kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz',
      'kernel/drivers/virtio/virtio_ring.ko.xz:',
      'kernel/drivers/virtio/virtio-pci.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz',
    ].join('\n');
    expect(moduleOrder(dep, ['virtio_pci', 'virtio_net']).map((f) => f.split('/').pop())).toEqual([
      'virtio_ring.ko.xz', 'virtio.ko.xz', 'virtio-pci.ko.xz', 'failover.ko.xz', 'net_failover.ko.xz', 'virtio_net.ko.xz',
    ]);
    expect(() => moduleOrder(dep, ['e1000'])).toThrow(/e1000/);
  });
});

const sh = (...argv: string[]) => execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

describe('guest under QEMU in private namespaces', () => {
  const id = randomBytes(3).toString('hex');
  const hostNs = `ptg-${id}-h`;
  const peerNs = `ptg-${id}-p`;
  const made: string[] = [];
  const stopAll = new AbortController();
  const inflight = new Set<Promise<unknown>>();
  const daemons: ChildProcess[] = [];
  let tmp = '';
  let guest: Guest;

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces, tap)');
    guest = await buildGuest();
    tmp = mkdtempSync(path.join(tmpdir(), 'ptg-'));
    for (const ns of [hostNs, peerNs]) {
      sh('ip', 'netns', 'add', ns);
      made.push(ns);
      sh('ip', '-n', ns, 'link', 'set', 'lo', 'up');
    }
    sh('ip', '-n', hostNs, 'link', 'add', 'br0', 'type', 'bridge');
    sh('ip', '-n', hostNs, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap');
    // A second NIC's tap on nothing: no DHCP server ever answers there.
    sh('ip', '-n', hostNs, 'tuntap', 'add', 'dev', 'tap1', 'mode', 'tap');
    sh('ip', '-n', hostNs, 'link', 'set', 'tap1', 'up');
    sh('ip', '-n', hostNs, 'link', 'add', 'vh', 'type', 'veth', 'peer', 'name', 'vp', 'netns', peerNs);
    for (const dev of ['tap0', 'vh']) sh('ip', '-n', hostNs, 'link', 'set', dev, 'master', 'br0', 'up');
    sh('ip', '-n', hostNs, 'link', 'set', 'br0', 'up');
    sh('ip', '-n', peerNs, 'addr', 'add', '10.99.7.1/24', 'dev', 'vp');
    sh('ip', '-n', peerNs, 'link', 'set', 'vp', 'up');
  });

  afterAll(async () => {
    stopAll.abort();
    await Promise.allSettled(inflight);
    for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
    for (const ns of made) {
      try {
        sh('ip', 'netns', 'del', ns);
      } catch (e) {
        console.error(`could not delete netns ${ns}:`, e);
      }
    }
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    const left = sh('ip', 'netns', 'list');
    expect(left).not.toContain(hostNs);
    expect(left).not.toContain(peerNs);
  });

  const boot = (mac: string, o: Omit<GuestOptions, 'guest'>, run: Partial<RunGuestOptions> = {}, mac2?: string): Promise<GuestRun> => {
    const argv = [
      'ip', 'netns', 'exec', hostNs,
      ...guestQemuArgs({ guest, ...o }),
      '-netdev', 'tap,id=n0,ifname=tap0,script=no,downscript=no',
      // No option ROM: the guest never network-boots, and iPXE costs boot time.
      '-device', `virtio-net-pci,netdev=n0,mac=${mac},romfile=`,
      ...(mac2 ? ['-netdev', 'tap,id=n1,ifname=tap1,script=no,downscript=no', '-device', `virtio-net-pci,netdev=n1,mac=${mac2},romfile=`] : []),
    ];
    const p = runGuest(argv, { timeoutMs: 90_000, signal: stopAll.signal, ...run });
    inflight.add(p);
    void p.finally(() => inflight.delete(p)).catch(() => {});
    return p;
  };

  it('static address: reaches the peer, not a missing host, and reports NIC facts', async () => {
    const mac = '52:54:00:99:07:02';
    const run = await boot(mac, {
      net: { address: '10.99.7.2/24', gateway: '10.99.7.1' },
      ping: ['10.99.7.1', '10.99.7.9'],
    });
    const r = run.report;
    expect(r.errors, run.serial).toEqual([]);
    expect(r.done, run.serial).toBe(true);
    expect(run.reason).toBe('done');
    expect(r.pings).toEqual([
      { target: '10.99.7.1', ok: true, received: 3, sent: 3 },
      { target: '10.99.7.9', ok: false, received: 0, sent: 3 },
    ]);
    const s = r.last!;
    expect(s.mac).toBe(mac);
    expect(s.mtu).toBe(1500);
    expect(s.rxQueues).toBe(1);
    expect(s.addresses).toMatchObject([{ local: '10.99.7.2', prefixlen: 24 }]);
    expect(s.routes).toContainEqual(expect.objectContaining({ dst: 'default', gateway: '10.99.7.1', dev: 'eth0' }));
    // The peer saw the guest's MAC, so traffic really crossed tap0 -> br0 -> veth.
    expect(sh('ip', '-n', peerNs, 'neigh', 'show', '10.99.7.2')).toContain(mac);
  });

  it('DHCP: applies every lease field like a distro and renews; a second NIC without a server reports no lease', async () => {
    const mac = '52:54:00:99:07:77';
    const mac2 = '52:54:00:99:07:78';
    const conf = path.join(tmp, 'udhcpd.conf');
    writeFileSync(conf, [
      'start 10.99.7.100', 'end 10.99.7.110', 'interface vp', 'max_leases 10',
      `lease_file ${path.join(tmp, 'leases')}`, `pidfile ${path.join(tmp, 'udhcpd.pid')}`,
      `static_lease ${mac} 10.99.7.77`,
      'opt subnet 255.255.255.0', 'opt router 10.99.7.1', 'opt dns 10.99.7.1 10.99.7.53',
      'opt domain pod.test', 'opt search a.test b.test', 'opt hostname guest-77', 'opt mtu 1400',
      'opt lease 600', 'opt staticroutes 10.98.0.0/16 10.99.7.1, 0.0.0.0/0 10.99.7.1',
      '',
    ].join('\n'));
    const udhcpd = spawn('ip', ['netns', 'exec', peerNs, 'busybox', 'udhcpd', '-f', '-a', '100', conf], { stdio: 'ignore' });
    daemons.push(udhcpd);
    try {
      const run = await boot(mac, {
        net: 'dhcp', ping: ['10.99.7.1'], mode: 'renew', renewAfter: 1, renews: 1, renewWait: 20,
        more: [{ nic: 'eth1', net: 'try' }],
      }, {}, mac2);
      const r = run.report;
      expect(r.errors, run.serial).toEqual([]);
      expect(r.done, run.serial).toBe(true);
      const bound = r.dhcp.find((e) => e.event === 'bound');
      expect(bound?.vars, run.serial).toMatchObject({
        ip: '10.99.7.77', mask: '24', subnet: '255.255.255.0', router: '10.99.7.1', mtu: '1400',
        hostname: 'guest-77', domain: 'pod.test', search: 'a.test b.test', serverid: '10.99.7.1',
        lease: '600', opt53: '05',
      });
      expect(r.renewRequested).toBe(true);
      expect(r.renewals).toBeGreaterThanOrEqual(1);
      expect(r.lease).toMatchObject({
        event: 'renew', ip: '10.99.7.77', dns: ['10.99.7.1', '10.99.7.53'],
        staticroutes: [{ dst: '10.98.0.0/16', gateway: '10.99.7.1' }, { dst: '0.0.0.0/0', gateway: '10.99.7.1' }],
      });
      expect(r.pings).toEqual([{ target: '10.99.7.1', ok: true, received: 3, sent: 3 }]);
      const s = r.last!;
      expect(s.seq).toBe(2); // the snapshot taken after the renewal
      expect(s).toMatchObject({ mac, mtu: 1400, hostname: 'guest-77' });
      expect(s.addresses).toMatchObject([{ local: '10.99.7.77', prefixlen: 24, broadcast: '10.99.7.255' }]);
      const routes = s.routes.map((x) => `${x.dst} ${x.gateway ?? '-'}`);
      expect(routes).toEqual(expect.arrayContaining(['default 10.99.7.1', '10.98.0.0/16 10.99.7.1', '10.99.7.0/24 -']));
      expect(s.resolv).toMatchObject({ nameservers: ['10.99.7.1', '10.99.7.53'], search: ['a.test', 'b.test'] });
      expect(r.noLease).toEqual(['eth1']);
      expect(s.links.map((l) => [l.name, l.mac, l.addresses.map((a) => a.local)])).toEqual([['eth0', mac, ['10.99.7.77']], ['eth1', mac2, []]]);
      // eth1's client ran and gave up: deconfig, then leasefail.
      expect(r.dhcp.filter((e) => e.vars.interface === 'eth1').map((e) => e.event)).toEqual(['deconfig', 'leasefail']);
    } finally {
      udhcpd.kill('SIGTERM');
    }
  });

  it('ping-forever: ticks once a second until stopped, and the process is gone after', async () => {
    let oks = 0;
    const run = await boot('52:54:00:99:07:03', { net: { address: '10.99.7.3/24' }, ping: ['10.99.7.1'], mode: 'ping-forever' }, {
      until: (line) => / tick \d+ \S+ ok /.test(line) && ++oks >= 3,
    });
    expect(run.reason, run.serial).toBe('until');
    expect(run.report.done).toBe(false);
    expect(run.report.ticks.slice(0, 3).map((t) => t.ok)).toEqual([true, true, true]);
    const [a, b] = run.report.ticks;
    expect(b!.uptime - a!.uptime).toBeGreaterThan(0.5);
    expect(() => process.kill(run.pid, 0)).toThrow();
  });
});
