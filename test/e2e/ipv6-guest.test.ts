// A real guest over IPv6, for each IPv6 pod shape (test/helpers/pods6.ts):
// `podtap run` boots a QEMU (TCG) guest whose init runs busybox udhcpc for
// IPv4, where the pod has IPv4, and then Debian's dhcpcd -6, which takes the
// router from podtap's advertisement and the pod's address by DHCPv6. The
// guest must hold the pod's IPv6 address (a /128) and nothing else global,
// route by default through the right router (podtap's fe80::1 at the
// gateway's MAC, or Calico's link-local gateway), have the pod's IPv6
// nameservers and search list, ping an address in the node namespace through
// that route, and (dual-stack) still have its IPv4 address by DHCPv4. The
// node's side of the pod interface sees no router advertisement, DHCP or
// foreign neighbour advertisement; the pod is exactly restored afterwards.
//
// One boot per shape; the data paths alternate between shapes.

import { afterAll, describe, expect, it } from 'vitest';
import { Cleanup } from '../helpers/netns.ts';
import { type Datapath } from '../helpers/pods.ts';
import { diffSnapshots, snapshot } from '../helpers/snapshot.ts';
import { buildGuest, guestQemuArgs, runGuest } from '../helpers/guest.ts';
import { startRecv } from '../helpers/guest-ns.ts';
import { PODTAP, stateDirFor } from '../helpers/podtap.ts';
import { isPortMld, makePod6, nodeSideViolations, parseHexFrames, type Shape6 } from '../helpers/pods6.ts';
import { limiter } from '../helpers/limit.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const CASES: [Shape6, Datapath][] = [
  ['dualstack', 'bridge'],
  ['bridge6', 'redirect'],
  ['calico6', 'bridge'],
  ['ptp6only', 'redirect'],
];

// Two TCG guests at a time: the machine has two cores, shared.
const twoAtOnce = limiter(2);

describe.concurrent('a QEMU guest over IPv6', () => {
  for (const [shape, datapath] of CASES) {
    it(`${shape} pod, ${datapath} data path: the pod's IPv6 address by DHCPv6, its router by RA, the node answers`, () => twoAtOnce(async () => {
      const c = new Cleanup();
      const unregister = cleanup.defer(`case ${shape}`, () => c.cleanupAll());
      try {
        const guest = await buildGuest();
        const pod = await makePod6(shape, { cleanup: c, hostname: `vm-${shape}` });
        const nic = pod.nics[0]!;
        const v4 = nic.ip4;
        const v6Dns = pod.resolvConf.nameservers.filter((n) => n.includes(':'));
        const before = await snapshot(pod.pod);
        const node = await startRecv(pod.node, c, { ifname: pod.hostIfname, timeoutMs: 200_000 });
        const targets = [nic.nodeAddr6, ...(v4 ? [v4.nodeAddr] : [])];
        const qemu = [
          ...guestQemuArgs({ guest, net: v4 ? 'dhcp' : 'none', ipv6: 'dhcpcd', ping: targets, guestTimeout: 150 }),
          '-netdev', 'tap,id=n0,fds={fds}',
          '-device', 'virtio-net-pci,netdev=n0,mac={mac},romfile=',
        ];
        const run = await runGuest(pod.argv([PODTAP, 'run', '--datapath', datapath, '--state-dir', stateDirFor(c), '--', ...qemu]), { timeoutMs: 200_000 });
        const frames = parseHexFrames(await node.stop());
        const r = run.report;
        const s = r.last;
        expect(r.errors, run.serial).toEqual([]);
        expect(s, run.serial).toBeDefined();

        // DHCPv6: the pod's address, and nothing else global.
        const bound = r.dhcp6.find((e) => e.event === 'BOUND6' && e.complete);
        expect(bound?.vars.new_dhcp6_ia_na1_ia_addr1, run.serial).toBe(nic.ip6);
        expect(s!.addresses6.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${nic.ip6}/128`]);
        // The RA: the default route through the router, on-link exactly the pod's on-link prefixes.
        // busybox ip prints the kernel's multicast route too (type first).
        const routes = s!.routes6.filter((x) => x.dev === 'eth0' && x.dst !== 'fe80::/64' && !/^(multicast|local|anycast) /.test(x.raw));
        expect(routes.filter((x) => x.dst === 'default').map((x) => x.gateway)).toEqual([nic.router]);
        for (const p of nic.onLink) expect(routes.some((x) => x.dst === p && !x.gateway), `${p} on-link`).toBe(true);
        expect(routes.filter((x) => !x.gateway && x.dst !== 'default' && !nic.onLink.includes(x.dst) && x.dst !== nic.ip6).map((x) => x.raw)).toEqual([]);
        // DNS over IPv6, from the RA and DHCPv6.
        expect(s!.resolv6.nameservers).toEqual(v6Dns);
        expect(s!.resolv6.search).toEqual(pod.resolvConf.search);
        // Through that router to the node, whose MAC the router resolved to.
        for (const t of targets) expect(r.pings.find((p) => p.target === t)?.ok, `ping ${t}\n${run.serial}`).toBe(true);
        const neigh = s!.neigh6.find((l) => l.startsWith(`${nic.router} `));
        expect(neigh, s!.neigh6.join('\n')).toContain(`lladdr ${nic.routerMac}`);
        // IPv4 alongside, where the pod has it.
        if (v4) {
          expect(r.lease?.ip).toBe(v4.address);
          expect(s!.addresses.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${v4.address}/${v4.handedPrefix}`]);
        }

        expect(run.exitCode, run.stderr).toBe(0);
        // The bridge port's own MLD is a known issue of its own (ipv6-clients.test.ts).
        expect(nodeSideViolations(frames.filter((f) => !(datapath === 'bridge' && isPortMld(f, nic))), nic)).toEqual([]);
        expect(frames.some((f) => f.kind === 'ipv6' && f.icmp6?.type === 128 && f.dst === nic.nodeAddr6), "the guest's pings on the node side").toBe(true);
        expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
      } finally {
        unregister();
        await c.cleanupAll();
      }
    }), 400_000);
  }
});
