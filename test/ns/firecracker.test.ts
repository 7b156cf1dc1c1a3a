// `podtap up --persist-tap --tap-owner UID:GID`, for Firecracker: it opens
// its taps by name (host_dev_name) as an unprivileged user rather than
// taking fds. podtap leaves a persistent single-queue tap per NIC owned by
// that user, holds no queue of them itself, and deletes them on SIGTERM.
// Once on the bridge data path with one NIC, once on the redirect data path
// with two (a veth and a macvlan).
//
// The VMM here is a small Node script that does what Firecracker does with
// host_dev_name (open /dev/net/tun, TUNSETIFF with IFF_TAP|IFF_NO_PI|
// IFF_VNET_HDR on the existing name, no IFF_MULTI_QUEUE), run as that uid/gid
// without any capability, and then speaks through the tap like a guest
// would: a DHCP DISCOVER from the VM's MAC, which podtap's server answers
// with an OFFER of the pod's address.

import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { Cleanup, run } from '../helpers/netns.ts';
import { makePod, type Pod } from '../helpers/pods.ts';
import { snapshot, diffSnapshots } from '../helpers/snapshot.ts';
import { startPodtap } from '../helpers/podtap.ts';

const cleanup = new Cleanup();
afterAll(() => cleanup.cleanupAll());

const REPO = resolve(import.meta.dirname, '../..');
const NODE = join(REPO, 'node_modules/.bin/node');
const url = (p: string) => JSON.stringify(pathToFileURL(join(REPO, p)).href);

const UID = 4242;
const GID = 4343;

// argv: VM MAC, tap name. Prints JSON lines: who it runs as, the tap it attached (or
// why it could not), and the DHCP OFFER that came back through the tap.
const FAKE_FIRECRACKER = `
import { readFileSync, readSync, writeSync, closeSync } from 'node:fs';
import { openTap, tapInfo, waitFd } from ${url('src/sys/native.ts')};
import { parsePacket } from ${url('src/serve/dhcp4/codec.ts')};
import { clientPacket } from ${url('test/helpers/dhcp-packets.ts')};

const [vmMac, tapName] = process.argv.slice(1);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const capEff = /^CapEff:\\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))[1];
out({ event: 'who', uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(), capEff });

let fd;
try {
  [fd] = openTap(tapName, { queues: 1, vnetHdr: true, multiQueue: false, exclusive: false });
} catch (e) {
  out({ event: 'open-failed', code: e.code, message: e.message });
  process.exit(3);
}
out({ event: 'attached', ...tapInfo(fd) });

const dotted = (n) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
const xid = 0x5eed0000 | (process.pid & 0xffff);
const dhcp = clientPacket({ type: 1, mac: vmMac, xid, prl: [1, 3, 6, 15, 26, 121] });
function frame() {
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(68, 0); udp.writeUInt16BE(67, 2); udp.writeUInt16BE(8 + dhcp.length, 4); // checksum 0: none
  const ip = Buffer.alloc(20);
  ip[0] = 0x45; ip.writeUInt16BE(20 + 8 + dhcp.length, 2); ip[8] = 64; ip[9] = 17;
  ip.writeUInt32BE(0xffffffff, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ip.writeUInt16BE(~sum & 0xffff, 10);
  const eth = Buffer.alloc(14, 0xff);
  Buffer.from(vmMac.split(':').map((h) => parseInt(h, 16))).copy(eth, 6);
  eth.writeUInt16BE(0x0800, 12);
  const vnetHdr = Buffer.alloc(10); // virtio_net_hdr: no offloads
  return Buffer.concat([vnetHdr, eth, ip, udp, dhcp]);
}

const deadline = Date.now() + 15000;
const buf = Buffer.alloc(65536);
let nextSend = 0;
let offer;
while (!offer && Date.now() < deadline) {
  if (Date.now() >= nextSend) { writeSync(fd, frame()); nextSend = Date.now() + 1000; }
  if (!waitFd(fd, 'read', 200)) continue;
  const n = readSync(fd, buf);
  const f = buf.subarray(10, n);
  if (f.length < 14 + 20 + 8 || f.readUInt16BE(12) !== 0x0800) continue;
  const ip = f.subarray(14);
  const udp = ip.subarray((ip[0] & 15) * 4);
  if (ip[9] !== 17 || udp.readUInt16BE(2) !== 68) continue;
  let p;
  try { p = parsePacket(udp.subarray(8)); } catch { continue; }
  const type = p.options.get(53);
  if (p.xid !== xid || !type || type[0] !== 2) continue;
  const sid = p.options.get(54);
  offer = { event: 'offer', yiaddr: dotted(p.yiaddr), serverId: sid ? dotted(sid.readUInt32BE(0)) : null, srcIp: dotted(ip.readUInt32BE(12)) };
}
closeSync(fd);
out(offer ?? { event: 'no-offer' });
process.exit(offer ? 0 : 4);
`;

interface Line {
  event: string;
  [k: string]: unknown;
}

/** Runs the stand-in VMM in the pod as uid:gid with no capabilities; collects its lines. */
function fakeFirecracker(pod: Pod, uid: number, gid: number, vmMac: string, tap = 'tap0'): Promise<{ code: number | null; lines: Line[]; stderr: string }> {
  const child = spawn(
    'ip',
    ['netns', 'exec', pod.pod, 'setpriv', '--reuid', String(uid), '--regid', String(gid), '--clear-groups', '--',
      NODE, '--disable-warning=ExperimentalWarning', '--input-type=module', '-e', FAKE_FIRECRACKER, vmMac, tap],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  cleanup.pid(child.pid!);
  let out = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolveRun) =>
    child.once('close', (code) => resolveRun({ code, stderr, lines: out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line) })),
  );
}

interface IpLink {
  master?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown>; [k: string]: unknown };
}

async function tapLink(pod: Pod, tap = 'tap0'): Promise<IpLink | undefined> {
  const r = await run('ip', ['-n', pod.pod, '-d', '-j', 'link', 'show', 'dev', tap], { reject: false });
  return r.exitCode === 0 ? (JSON.parse(r.stdout) as IpLink[])[0] : undefined;
}

const CASES = [
  { shape: 'ptp', datapath: 'bridge', nics: [] as string[] },
  { shape: 'multi', datapath: 'redirect', nics: ['eth0', 'net2'] },
] as const;

for (const { shape, datapath, nics } of CASES) {
  it(`up --persist-tap --tap-owner (${shape} pod, ${datapath}, ${Math.max(nics.length, 1)} NIC${nics.length > 1 ? 's' : ''}): persistent taps that an unprivileged VMM opens by name, deleted on SIGTERM`, async () => {
    const pod = await makePod(shape, { cleanup });
    const before = await snapshot(pod.pod);

    const podtap = startPodtap(pod, ['up', '--persist-tap', '--tap-owner', `${UID}:${GID}`, '--datapath', datapath, ...nics.flatMap((n) => ['--interface', n])], cleanup);
    const ready = await podtap.ready;
    expect(ready).toMatchObject({ mac: pod.expect.mac, ip: `${pod.podIP}/${pod.handedPrefix}`, tap: 'tap0', queues: 1, persistent: true, datapath });
    const wanted = nics.length ? nics.map((n) => pod.nics.find((x) => x.ifname === n)!) : [pod.nics[0]!];
    expect(ready.nics.map((n) => [n.interface, n.tap, n.mac, n.ip])).toEqual(wanted.map((n, i) => [n.ifname, `tap${i}`, n.mac, `${n.ip}/${n.handedPrefix}`]));

    for (const [i, nic] of wanted.entries()) {
      const tap = `tap${i}`;
      // ip -d link: a persistent single-queue tap with a vnet header, owned by
      // uid:gid, on the data path, and no carrier: podtap keeps no queue open.
      const { stdout: text } = await run('ip', ['-n', pod.pod, '-d', 'link', 'show', tap]);
      expect(text).toMatch(new RegExp(`tun type tap pi off vnet_hdr on persist on user ${UID} group ${GID}`));
      expect(text).not.toMatch(/multi_queue/);
      const link = await tapLink(pod, tap);
      expect(link?.linkinfo).toEqual({
        info_kind: 'tun',
        info_data: { type: 'tap', pi: false, vnet_hdr: true, multi_queue: false, persist: true, user: UID, group: GID },
        ...(datapath === 'bridge' ? { info_slave_kind: 'bridge', info_slave_data: expect.any(Object) } : {}),
      });
      expect(link?.master).toBe(datapath === 'bridge' ? `br${i}` : undefined);
      expect(link?.flags).toContain('NO-CARRIER');

      // The VMM's user opens the tap by name, without any capability, and its
      // DHCP DISCOVER gets podtap's OFFER of that NIC's address.
      const vmm = await fakeFirecracker(pod, UID, GID, nic.mac, tap);
      expect(vmm.code, vmm.stderr + JSON.stringify(vmm.lines)).toBe(0);
      // (Node's getgroups() adds the effective gid; the supplementary list is empty.)
      expect(vmm.lines[0]).toMatchObject({ event: 'who', uid: UID, gid: GID, groups: [GID], capEff: '0000000000000000' });
      expect(vmm.lines[1]).toMatchObject({ event: 'attached', name: tap });
      expect(vmm.lines[2]).toEqual({ event: 'offer', yiaddr: nic.ip, serverId: '169.254.75.1', srcIp: '169.254.75.1' });

      // The tap outlives the VMM that let go of it (a restarted Firecracker
      // finds it again)...
      expect((await tapLink(pod, tap))?.linkinfo?.info_data).toMatchObject({ persist: true, user: UID, group: GID });
      // ...and another user without NET_ADMIN may not take it over.
      const stranger = await fakeFirecracker(pod, UID + 1, UID + 1, nic.mac, tap);
      expect(stranger.code).toBe(3);
      expect(stranger.lines[1]).toMatchObject({ event: 'open-failed', code: 'EPERM' });
    }

    process.kill(podtap.pid, 'SIGTERM');
    const exit = await podtap.proc;
    expect(exit.exitCode, podtap.stderr()).toBe(0);
    expect(podtap.stderr()).toMatch(/namespace restored/);
    for (const i of wanted.keys()) expect(await tapLink(pod, `tap${i}`)).toBeUndefined();
    expect(diffSnapshots(before, await snapshot(pod.pod))).toEqual([]);
  });
}
