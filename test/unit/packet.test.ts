// The classic BPF filters of podtap's packet sockets, run in user space over
// frames built with serve/frames.ts: the kernel must hand the servers what
// they serve and nothing of the guest's other traffic.

import { describe, expect, it } from 'vitest';
import { ADVERT_FILTER, SERVER_FILTER, runFilter, serverFilter } from '../../src/serve/packet.ts';
import { answerArp } from '../../src/serve/arp.ts';
import { eui64LinkLocal, icmp6Frame, udp4Frame, udp6Frame } from '../../src/serve/frames.ts';
import { MSG, SERVER_ID, VM_MAC, clientPacket } from '../helpers/dhcp-packets.ts';

const SERVER_MAC = '02:aa:00:00:00:01';
const BROADCAST = 'ff:ff:ff:ff:ff:ff';
const VM_LL = eui64LinkLocal(VM_MAC);
const ND_BODY = Buffer.alloc(20); // reserved word + target address

const dhcp = clientPacket({ type: MSG.DISCOVER });
const discover = udp4Frame({ srcMac: VM_MAC, dstMac: BROADCAST, src: '0.0.0.0', dst: '255.255.255.255', srcPort: 68, dstPort: 67, payload: dhcp });
const renewal = udp4Frame({ srcMac: VM_MAC, dstMac: SERVER_MAC, src: '10.23.5.7', dst: SERVER_ID, srcPort: 68, dstPort: 67, payload: clientPacket({ type: MSG.REQUEST, ciaddr: '10.23.5.7' }) });
const offer = udp4Frame({ srcMac: SERVER_MAC, dstMac: VM_MAC, src: SERVER_ID, dst: '10.23.5.7', srcPort: 67, dstPort: 68, payload: dhcp });
const solicit6 = udp6Frame({ srcMac: VM_MAC, dstMac: '33:33:00:01:00:02', src: VM_LL, dst: 'ff02::1:2', srcPort: 546, dstPort: 547, payload: Buffer.from([1, 0, 0, 1]) });
const reply6 = udp6Frame({ srcMac: SERVER_MAC, dstMac: VM_MAC, src: 'fe80::1', dst: VM_LL, srcPort: 547, dstPort: 546, payload: Buffer.from([7, 0, 0, 1]) });
const icmp6 = (type: number, dstMac = '33:33:00:00:00:02', dst = 'ff02::2') => icmp6Frame({ srcMac: VM_MAC, dstMac, src: VM_LL, dst, hopLimit: 255, type, code: 0, body: ND_BODY });

/** The same frame with an 802.1Q tag (VLAN 5) in front of its ethertype. */
const tagged = (f: Buffer) => Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0x00, 0x00, 0x05]), f.subarray(12)]);
/** An IPv4 frame with its flags/fragment-offset field set. */
function fragmented(f: Buffer, field: number): Buffer {
  const out = Buffer.from(f);
  out.writeUInt16BE(field, 14 + 6);
  return out;
}
/** An IPv4 frame whose header carries four bytes of options (IHL 6). */
function withIpOptions(f: Buffer): Buffer {
  const out = Buffer.concat([f.subarray(0, 34), Buffer.from([1, 1, 1, 1]), f.subarray(34)]);
  out[14] = 0x46;
  out.writeUInt16BE(out.readUInt16BE(16) + 4, 16);
  return out;
}
const withProtocol = (f: Buffer, proto: number) => {
  const out = Buffer.from(f);
  out[14 + 9] = proto;
  return out;
};
function arp(): Buffer {
  const b = Buffer.alloc(42);
  Buffer.from('ffffffffffff' + VM_MAC.replaceAll(':', ''), 'hex').copy(b, 0);
  b.writeUInt16BE(0x0806, 12);
  // htype 1, ptype IPv4, hlen 6, plen 4, request; sender MAC/IP, target IP 67.67.67.67
  Buffer.from('0001080006040001', 'hex').copy(b, 14);
  Buffer.from(VM_MAC.replaceAll(':', ''), 'hex').copy(b, 22);
  b.fill(67, 38, 42);
  return b;
}

const accepts = (prog: typeof SERVER_FILTER, f: Buffer) => runFilter(prog, f) !== 0;

describe('SERVER_FILTER', () => {
  it('accepts DHCPv4 requests, broadcast and unicast (renewals), whole', () => {
    expect(runFilter(SERVER_FILTER, discover)).toBe(0x40000);
    expect(accepts(SERVER_FILTER, renewal)).toBe(true);
    // An IPv4 header with options: the UDP header is found by IHL.
    expect(accepts(SERVER_FILTER, withIpOptions(discover))).toBe(true);
    expect(accepts(SERVER_FILTER, withIpOptions(offer))).toBe(false);
  });

  it('accepts DHCPv6 client messages, router solicitations and neighbour solicitations', () => {
    expect(accepts(SERVER_FILTER, solicit6)).toBe(true);
    expect(accepts(SERVER_FILTER, icmp6(133))).toBe(true);
    expect(accepts(SERVER_FILTER, icmp6(135, '33:33:ff:00:00:01', 'ff02::1:ff00:1'))).toBe(true);
  });

  it('rejects DHCP replies, other UDP and other ICMPv6', () => {
    expect(accepts(SERVER_FILTER, offer)).toBe(false);
    expect(accepts(SERVER_FILTER, reply6)).toBe(false);
    const dns = udp4Frame({ srcMac: VM_MAC, dstMac: SERVER_MAC, src: '10.23.5.7', dst: '10.96.0.10', srcPort: 40000, dstPort: 53, payload: Buffer.alloc(30) });
    expect(accepts(SERVER_FILTER, dns)).toBe(false);
    const dns6 = udp6Frame({ srcMac: VM_MAC, dstMac: SERVER_MAC, src: 'fd00::5', dst: 'fd00::a', srcPort: 40000, dstPort: 53, payload: Buffer.alloc(30) });
    expect(accepts(SERVER_FILTER, dns6)).toBe(false);
    // Port 67 over another protocol than UDP.
    expect(accepts(SERVER_FILTER, withProtocol(discover, 6))).toBe(false);
    for (const type of [128, 134, 136, 137, 143]) expect(accepts(SERVER_FILTER, icmp6(type)), `ICMPv6 type ${type}`).toBe(false);
  });

  it('rejects later fragments, which have no UDP header, and takes a datagram marked "don\'t fragment"', () => {
    expect(accepts(SERVER_FILTER, fragmented(discover, 0x0001))).toBe(false); // offset 8
    expect(accepts(SERVER_FILTER, fragmented(discover, 0x2001))).toBe(false); // more to come, offset 8
    expect(accepts(SERVER_FILTER, fragmented(discover, 0x4000))).toBe(true); // DF: whole
  });

  it('rejects the first fragment too (more fragments, offset 0): it is not a whole request', () => {
    expect(accepts(SERVER_FILTER, fragmented(discover, 0x2000))).toBe(false);
  });

  it('rejects VLAN-tagged DHCP, ARP, and frames too short to hold the fields it reads', () => {
    expect(accepts(SERVER_FILTER, tagged(discover))).toBe(false);
    expect(accepts(SERVER_FILTER, tagged(solicit6))).toBe(false);
    expect(accepts(SERVER_FILTER, arp())).toBe(false);
    for (const n of [0, 13, 14, 24, 36]) expect(accepts(SERVER_FILTER, discover.subarray(0, n)), `${n} bytes`).toBe(false);
    expect(accepts(SERVER_FILTER, solicit6.subarray(0, 56))).toBe(false);
  });
});

describe('ADVERT_FILTER', () => {
  it('accepts neighbour advertisements only', () => {
    expect(runFilter(ADVERT_FILTER, icmp6(136, VM_MAC, VM_LL))).toBe(0x40000);
    for (const type of [133, 134, 135, 137, 128]) expect(accepts(ADVERT_FILTER, icmp6(type)), `ICMPv6 type ${type}`).toBe(false);
    for (const f of [discover, offer, solicit6, reply6, arp(), tagged(icmp6(136))]) expect(accepts(ADVERT_FILTER, f)).toBe(false);
    // A UDP datagram whose byte at the ICMPv6 type offset reads 136.
    const lookalike = udp6Frame({ srcMac: VM_MAC, dstMac: SERVER_MAC, src: VM_LL, dst: 'fe80::1', srcPort: 136 * 256, dstPort: 9, payload: Buffer.alloc(8) });
    expect(lookalike[54]).toBe(136);
    expect(accepts(ADVERT_FILTER, lookalike)).toBe(false);
  });
});

describe('serverFilter with a server identifier, and the ARP answer', () => {
  const id = 0x4343_4343; // 67.67.67.67, what arp() asks for
  const withArp = serverFilter(id);
  const asking = (target: number, op = 1) => {
    const f = arp();
    f.writeUInt16BE(op, 20);
    f.writeUInt32BE(target >>> 0, 38);
    return f;
  };

  it('accepts ARP requests for the server identifier only, and still everything SERVER_FILTER does', () => {
    expect(accepts(withArp, asking(id))).toBe(true);
    expect(accepts(withArp, asking(id + 1))).toBe(false);
    expect(accepts(withArp, asking(id, 2))).toBe(false); // a reply
    expect(accepts(withArp, tagged(asking(id)))).toBe(false);
    expect(runFilter(withArp, asking(id), { vlanTagged: true })).toBe(0);
    expect(accepts(SERVER_FILTER, asking(id))).toBe(false);
    for (const f of [discover, renewal, solicit6]) expect(accepts(withArp, f)).toBe(true);
    for (const f of [offer, reply6]) expect(accepts(withArp, f)).toBe(false);
  });

  it('answers the VM\'s request with podtap\'s MAC, and nothing else', () => {
    const s = { serverId: id, serverMac: SERVER_MAC, vmMac: VM_MAC };
    const req = asking(id);
    req.writeUInt32BE(0x0a170507, 28); // sender IP 10.23.5.7
    const a = answerArp(req, s)!;
    expect(a.subarray(0, 6).toString('hex')).toBe(VM_MAC.replaceAll(':', ''));
    expect(a.subarray(6, 12).toString('hex')).toBe(SERVER_MAC.replaceAll(':', ''));
    expect(a.readUInt16BE(20)).toBe(2);
    expect(a.subarray(22, 28).toString('hex')).toBe(SERVER_MAC.replaceAll(':', ''));
    expect(a.readUInt32BE(28)).toBe(id);
    expect(a.subarray(32, 38).toString('hex')).toBe(VM_MAC.replaceAll(':', ''));
    expect(a.readUInt32BE(38)).toBe(0x0a170507);
    expect(answerArp(asking(id + 1), s)).toBeUndefined();
    expect(answerArp(asking(id, 2), s)).toBeUndefined();
    expect(answerArp(asking(id), { ...s, vmMac: '02:00:00:00:00:99' })).toBeUndefined();
    expect(answerArp(discover, s)).toBeUndefined();
    expect(answerArp(asking(id).subarray(0, 30), s)).toBeUndefined();
  });
});
