import { describe, expect, it } from 'vitest';
import {
  ETHERTYPE_IPV6,
  eui64LinkLocal,
  formatIpv6Bytes,
  icmp6Frame,
  internetChecksum,
  ipv6Bytes,
  ipv6MulticastMac,
  isIpv6LinkLocal,
  isIpv6Multicast,
  isIpv6Unspecified,
  macBytes,
  parseFrame,
  solicitedNode,
  udp4Frame,
  udp6Frame,
} from '../../src/serve/frames.ts';
import type { Ipv4Packet, Ipv6Packet, ParsedFrame } from '../../src/serve/frames.ts';
import { rng } from '../helpers/dhcp-mutate.ts';

// Frames captured with tcpdump on the peer of a veth in a throwaway pair of
// network namespaces: a Linux 6.x guest side bringing its link up, then ISC
// dhclient 4.4.3 soliciting.
const KERNEL_MLD_REPORT =
  '33330000001652540012345686dd600000000024000100000000000000000000000000000000ff0200000000000000000000000000163a000502000001008f003b220000000104000000ff0200000000000000000001ff123456';
const KERNEL_DAD_NS =
  '3333ff12345652540012345686dd6000000000203aff00000000000000000000000000000000ff0200000000000000000001ff12345687002dba00000000fe80000000000000505400fffe1234560e0171eefd9918b7';
const KERNEL_RS =
  '33330000000252540012345686dd6000000000103afffe80000000000000505400fffe123456ff020000000000000000000000000002850071b5000000000101525400123456';
// dhclient's SOLICIT as the peer saw it: the sender offloaded the UDP
// checksum, so the field holds only the pseudo-header sum (tcpdump: "bad udp
// cksum 0x8194 -> 0x7975").
const DHCLIENT_SOLICIT =
  '33330001000252540012345686dd600505f200401101fe80000000000000505400fffe123456ff0200000000000000000000000100020222022300408194012080070001000e00010001329f6db052540012345600060008001700180027001f0008000200000003000c0012345600000e1000001518';

// Frames built by udp4Frame/udp6Frame and read back by tcpdump 4.99 -vv,
// which reported "udp sum ok" and no bad IP header checksum for each.
const TCPDUMP_UDP4_UNICAST =
  '52540012345602000000000108004500003a0000000040117696a9fe4b010a170507004300440026b15a706f6474617020736179732068656c6c6f2c206f6464206c656e67746821';
const TCPDUMP_UDP6 =
  '52540012345602000000000186dd60000000000d1140fe800000000000000000000000000001fe80000000000000505400fffe12345602230222000d68cc0701020309';

const hex = (s: string) => Buffer.from(s, 'hex');

function v6(f: ParsedFrame): Ipv6Packet {
  if (f.kind !== 'ipv6') throw new Error(`expected IPv6, got ${JSON.stringify(f)}`);
  return f;
}

function v4(f: ParsedFrame): Ipv4Packet {
  if (f.kind !== 'ipv4') throw new Error(`expected IPv4, got ${JSON.stringify(f)}`);
  return f;
}

function reason(f: ParsedFrame): string | undefined {
  return f.kind === 'invalid' ? f.reason : undefined;
}

describe('parsing frames real tools sent', () => {
  it('skips the hop-by-hop header of an MLDv2 report to reach ICMPv6', () => {
    const p = v6(parseFrame(hex(KERNEL_MLD_REPORT)));
    expect(p.eth).toEqual({ dst: '33:33:00:00:00:16', src: '52:54:00:12:34:56', ethertype: ETHERTYPE_IPV6 });
    expect(p.src).toBe('::');
    expect(p.dst).toBe('ff02::16');
    expect(p.hopLimit).toBe(1);
    expect(p.extensions).toEqual([0]);
    expect(p.protocol).toBe(58);
    expect(p.icmp6?.type).toBe(143);
    expect(p.icmp6?.checksum).toBe('valid');
  });

  it('reads the kernel DAD probe and router solicitation with valid checksums', () => {
    const ns = v6(parseFrame(hex(KERNEL_DAD_NS)));
    expect([ns.src, ns.dst, ns.hopLimit]).toEqual(['::', 'ff02::1:ff12:3456', 255]);
    expect(ns.icmp6).toMatchObject({ type: 135, code: 0, checksum: 'valid' });
    expect(formatIpv6Bytes(ns.icmp6!.body, 4)).toBe('fe80::5054:ff:fe12:3456');
    const rs = v6(parseFrame(hex(KERNEL_RS)));
    expect([rs.src, rs.dst]).toEqual(['fe80::5054:ff:fe12:3456', 'ff02::2']);
    expect(rs.icmp6).toMatchObject({ type: 133, code: 0, checksum: 'valid' });
    expect(rs.icmp6!.body.toString('hex')).toBe('000000000101525400123456');
  });

  it('reports an offloaded UDP checksum as invalid, and computes the one tcpdump expected', () => {
    const p = v6(parseFrame(hex(DHCLIENT_SOLICIT)));
    expect(p.udp).toMatchObject({ srcPort: 546, dstPort: 547, checksum: 'invalid' });
    expect(p.udp!.payload.length).toBe(56);
    expect(p.udp!.payload[0]).toBe(1); // SOLICIT
    const rebuilt = udp6Frame({
      srcMac: p.eth.src,
      dstMac: p.eth.dst,
      src: p.src,
      dst: p.dst,
      srcPort: 546,
      dstPort: 547,
      payload: p.udp!.payload,
      hopLimit: p.hopLimit,
    });
    expect(rebuilt.readUInt16BE(14 + 40 + 6)).toBe(0x7975);
    expect(v6(parseFrame(rebuilt)).udp!.checksum).toBe('valid');
  });
});

describe('building frames', () => {
  it('builds IPv4/UDP byte for byte as tcpdump verified it', () => {
    const f = udp4Frame({
      srcMac: '02:00:00:00:00:01',
      dstMac: '52:54:00:12:34:56',
      src: '169.254.75.1',
      dst: '10.23.5.7',
      srcPort: 67,
      dstPort: 68,
      payload: Buffer.from('podtap says hello, odd length!'),
    });
    expect(f.toString('hex')).toBe(TCPDUMP_UDP4_UNICAST);
    // The header checksum field makes the header sum to all ones.
    expect(internetChecksum(f, 14, 34)).toBe(0);
  });

  it('builds IPv6/UDP byte for byte as tcpdump verified it', () => {
    const f = udp6Frame({
      srcMac: '02:00:00:00:00:01',
      dstMac: '52:54:00:12:34:56',
      src: 'fe80::1',
      dst: 'fe80::5054:ff:fe12:3456',
      srcPort: 547,
      dstPort: 546,
      payload: Buffer.from([7, 1, 2, 3, 9]),
    });
    expect(f.toString('hex')).toBe(TCPDUMP_UDP6);
  });

  it('rebuilds the kernel router solicitation exactly, checksum included', () => {
    const f = icmp6Frame({
      srcMac: '52:54:00:12:34:56',
      dstMac: ipv6MulticastMac('ff02::2'),
      src: eui64LinkLocal('52:54:00:12:34:56'),
      dst: 'ff02::2',
      hopLimit: 255,
      type: 133,
      code: 0,
      body: hex('000000000101525400123456'),
    });
    expect(f.toString('hex')).toBe(KERNEL_RS);
  });

  it('round-trips UDP over IPv4 and IPv6 and ICMPv6 through the parser', () => {
    for (let n = 0; n < 40; n++) {
      const payload = Buffer.from(Array.from({ length: n * 7 }, (_, i) => (i * 31 + n) & 255));
      const a = v4(parseFrame(udp4Frame({ srcMac: '02:00:00:00:00:01', dstMac: 'ff:ff:ff:ff:ff:ff', src: '169.254.75.1', dst: '255.255.255.255', srcPort: 67, dstPort: 68, payload, ttl: 7 })));
      expect([a.src, a.dst, a.protocol, a.ttl, a.fragment]).toEqual(['169.254.75.1', '255.255.255.255', 17, 7, false]);
      expect(a.udp).toMatchObject({ srcPort: 67, dstPort: 68, checksum: 'valid' });
      expect(Buffer.compare(a.udp!.payload, payload)).toBe(0);
      const b = v6(parseFrame(udp6Frame({ srcMac: '02:00:00:00:00:01', dstMac: '52:54:00:12:34:56', src: 'fe80::1', dst: '2001:db8::5', srcPort: 547, dstPort: 546, payload })));
      expect([b.src, b.dst, b.hopLimit, b.protocol]).toEqual(['fe80::1', '2001:db8::5', 64, 17]);
      expect(b.udp).toMatchObject({ srcPort: 547, dstPort: 546, checksum: 'valid' });
      expect(Buffer.compare(b.udp!.payload, payload)).toBe(0);
      const c = v6(parseFrame(icmp6Frame({ srcMac: '02:00:00:00:00:01', dstMac: '33:33:00:00:00:01', src: 'fe80::1', dst: 'ff02::1', hopLimit: 255, type: 134, code: 0, body: payload })));
      expect(c.icmp6).toMatchObject({ type: 134, code: 0, checksum: 'valid' });
      expect(Buffer.compare(c.icmp6!.body, payload)).toBe(0);
    }
  });

  it('never puts a zero UDP checksum on the wire', () => {
    // Search for a payload whose checksum computes to zero; it must go out as ffff.
    let found = false;
    for (let x = 0; x < 0x10000 && !found; x++) {
      const payload = Buffer.from([x >> 8, x & 255]);
      const f = udp6Frame({ srcMac: '02:00:00:00:00:01', dstMac: '02:00:00:00:00:02', src: 'fe80::1', dst: 'fe80::2', srcPort: 1, dstPort: 2, payload });
      const sum = f.readUInt16BE(14 + 40 + 6);
      expect(sum).not.toBe(0);
      if (sum === 0xffff) {
        found = true;
        expect(v6(parseFrame(f)).udp!.checksum).toBe('valid');
      }
    }
    expect(found).toBe(true);
  });

  it('refuses values that cannot be encoded', () => {
    const base = { srcMac: '02:00:00:00:00:01', dstMac: '02:00:00:00:00:02', src: 'fe80::1', dst: 'fe80::2', srcPort: 1, dstPort: 2, payload: Buffer.alloc(1) };
    expect(() => udp6Frame({ ...base, srcMac: 'nope' })).toThrow(/MAC/);
    expect(() => udp6Frame({ ...base, src: '10.0.0.1' })).toThrow(/IPv6/);
    expect(() => udp6Frame({ ...base, dstPort: 70000 })).toThrow(/port/);
    expect(() => udp6Frame({ ...base, payload: Buffer.alloc(70000) })).toThrow(/jumbogram/);
    expect(() => udp4Frame({ ...base, src: '1.2.3.4', dst: 'fe80::2' })).toThrow(/IPv4/);
    expect(() => icmp6Frame({ ...base, hopLimit: 256, type: 1, code: 0, body: Buffer.alloc(0) })).toThrow(/hop limit/);
  });
});

describe('what the parser refuses', () => {
  const udp6 = () => udp6Frame({ srcMac: '52:54:00:12:34:56', dstMac: '33:33:00:01:00:02', src: 'fe80::5054:ff:fe12:3456', dst: 'ff02::1:2', srcPort: 546, dstPort: 547, payload: Buffer.from('0102030405060708', 'hex') });
  const udp4 = () => udp4Frame({ srcMac: '52:54:00:12:34:56', dstMac: 'ff:ff:ff:ff:ff:ff', src: '0.0.0.0', dst: '255.255.255.255', srcPort: 68, dstPort: 67, payload: Buffer.alloc(20, 1) });

  it('leaves VLAN-tagged frames alone, and calls ARP "other"', () => {
    for (const tpid of [0x8100, 0x88a8]) {
      const f = Buffer.concat([udp4().subarray(0, 12), Buffer.from([tpid >> 8, tpid & 255, 0, 5, 0x08, 0x00]), udp4().subarray(14)]);
      const p = parseFrame(f);
      expect(p.kind).toBe('tagged');
      expect(p.kind === 'tagged' && p.eth.ethertype).toBe(tpid);
    }
    const arp = Buffer.concat([Buffer.from('ffffffffffff525400123456', 'hex'), Buffer.from([0x08, 0x06]), Buffer.alloc(28)]);
    expect(parseFrame(arp).kind).toBe('other');
  });

  it('gives a reason for every short or lying length, never an exception', () => {
    expect(reason(parseFrame(Buffer.alloc(13)))).toBe('short-ethernet');
    const a = udp4();
    expect(reason(parseFrame(a.subarray(0, 30)))).toBe('ipv4-truncated');
    const longer = Buffer.from(a);
    longer.writeUInt16BE(a.length, 16); // total length past the frame
    expect(reason(parseFrame(longer))).toBe('ipv4-bad-total-length');
    const ihl = Buffer.from(a);
    ihl[14] = 0x44;
    expect(reason(parseFrame(ihl))).toBe('ipv4-bad-header-length');
    const ver = Buffer.from(a);
    ver[14] = 0x65;
    expect(reason(parseFrame(ver))).toBe('ipv4-bad-version');
    const sum = Buffer.from(a);
    sum[14 + 8] = sum[14 + 8]! ^ 1; // TTL changed under the header checksum
    expect(reason(parseFrame(sum))).toBe('ipv4-bad-header-checksum');
    const ulen = Buffer.from(a);
    ulen.writeUInt16BE(200, 14 + 20 + 4);
    expect(reason(parseFrame(ulen))).toBe('udp-bad-length');

    const b = udp6();
    expect(reason(parseFrame(b.subarray(0, 50)))).toBe('ipv6-truncated');
    expect(reason(parseFrame(b.subarray(0, b.length - 1)))).toBe('ipv6-truncated');
    const v = Buffer.from(b);
    v[14] = 0x40;
    expect(reason(parseFrame(v))).toBe('ipv6-bad-version');
    const short = Buffer.from(b);
    short.writeUInt16BE(7, 18); // IPv6 payload too small for a UDP header
    expect(reason(parseFrame(short))).toBe('udp-truncated');
    const lying = Buffer.from(b);
    lying.writeUInt16BE(9, 14 + 40 + 4); // UDP length below the header
    lying.writeUInt16BE(7, 14 + 40 + 4);
    expect(reason(parseFrame(lying))).toBe('udp-bad-length');
    const jumbo = Buffer.from(b);
    jumbo.writeUInt16BE(0, 18);
    jumbo[20] = 0;
    expect(reason(parseFrame(jumbo))).toBe('ipv6-jumbogram');
    const icmp = icmp6Frame({ srcMac: '02:00:00:00:00:01', dstMac: '33:33:00:00:00:01', src: 'fe80::1', dst: 'ff02::1', hopLimit: 255, type: 1, code: 0, body: Buffer.alloc(0) });
    icmp.writeUInt16BE(3, 18);
    expect(reason(parseFrame(icmp))).toBe('icmp6-truncated');
  });

  it('reads up to the IP length and ignores Ethernet padding', () => {
    const a = Buffer.concat([udp4(), Buffer.alloc(18, 0xee)]);
    const p = v4(parseFrame(a));
    expect(p.udp!.payload.equals(Buffer.alloc(20, 1))).toBe(true);
    expect(p.udp!.checksum).toBe('valid');
    const b = Buffer.concat([udp6(), Buffer.alloc(10, 0xee)]);
    expect(v6(parseFrame(b)).udp!.payload.toString('hex')).toBe('0102030405060708');
  });

  it('tells valid, corrupted and absent UDP checksums apart', () => {
    const a = udp4();
    const bad = Buffer.from(a);
    bad[bad.length - 1] = bad[bad.length - 1]! ^ 0x40;
    expect(v4(parseFrame(bad)).udp!.checksum).toBe('invalid');
    const none = Buffer.from(a);
    none.writeUInt16BE(0, 14 + 20 + 6);
    expect(v4(parseFrame(none)).udp!.checksum).toBe('absent');
    const b = Buffer.from(udp6());
    b.writeUInt16BE(0, 14 + 40 + 6);
    expect(v6(parseFrame(b)).udp!.checksum).toBe('absent');
    const c = Buffer.from(udp6());
    c[c.length - 1] = c[c.length - 1]! ^ 1;
    expect(v6(parseFrame(c)).udp!.checksum).toBe('invalid');
  });

  it('does not look into IPv4 fragments', () => {
    for (const frag of [0x2000, 0x0001]) {
      const a = Buffer.from(udp4());
      a.writeUInt16BE(frag, 14 + 6);
      a.writeUInt16BE(0, 14 + 10);
      a.writeUInt16BE(internetChecksum(a, 14, 34), 14 + 10);
      const p = v4(parseFrame(a));
      expect(p.fragment).toBe(true);
      expect(p.udp).toBeUndefined();
    }
  });

  /** An IPv6 frame whose payload is the given extension headers and then a UDP datagram. */
  function withExtensions(headers: { type: number; bytes: Buffer }[]): Buffer {
    const base = udp6();
    const udp = base.subarray(54);
    const chain: Buffer[] = [];
    for (let i = 0; i < headers.length; i++) {
      const h = Buffer.from(headers[i]!.bytes);
      h[0] = i + 1 < headers.length ? headers[i + 1]!.type : 17;
      chain.push(h);
    }
    const ip = Buffer.from(base.subarray(0, 54));
    ip.writeUInt16BE(chain.reduce((n, h) => n + h.length, 0) + udp.length, 18);
    ip[20] = headers.length > 0 ? headers[0]!.type : 17;
    return Buffer.concat([ip, ...chain, udp]);
  }
  const opts8 = Buffer.from('0000010400000000', 'hex'); // next, len 0, PadN
  const routing = (left: number) => Buffer.from([0, 0, 4, left, 0, 0, 0, 0]);

  it('walks destination options and routing headers to the UDP header, checksum intact', () => {
    const p = v6(parseFrame(withExtensions([{ type: 0, bytes: opts8 }, { type: 60, bytes: opts8 }, { type: 43, bytes: routing(0) }, { type: 60, bytes: Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(14)]) }])));
    expect(p.extensions).toEqual([0, 60, 43, 60]);
    expect(p.protocol).toBe(17);
    expect(p.inTransit).toBe(false);
    expect(p.udp).toMatchObject({ srcPort: 546, dstPort: 547, checksum: 'valid' });
  });

  it('stops at a fragment header or a routing header with segments left', () => {
    const frag = v6(parseFrame(withExtensions([{ type: 44, bytes: Buffer.alloc(8) }])));
    expect([frag.inTransit, frag.protocol, frag.udp]).toEqual([true, 17, undefined]);
    const routed = v6(parseFrame(withExtensions([{ type: 43, bytes: routing(1) }])));
    expect([routed.inTransit, routed.udp]).toEqual([true, undefined]);
  });

  it('refuses hop-by-hop options anywhere but first, long chains and cut headers', () => {
    expect(reason(parseFrame(withExtensions([{ type: 60, bytes: opts8 }, { type: 0, bytes: opts8 }])))).toBe('ipv6-hop-by-hop-not-first');
    expect(reason(parseFrame(withExtensions(Array.from({ length: 9 }, () => ({ type: 60, bytes: opts8 })))))).toBe('ipv6-too-many-extensions');
    const cut = withExtensions([{ type: 60, bytes: opts8 }]);
    cut[54 + 1] = 200; // claims 1608 bytes
    expect(reason(parseFrame(cut))).toBe('ipv6-extension-truncated');
  });

  it('never throws on random or mangled frames', () => {
    const r = rng(0xf4a3e);
    const seeds = [hex(KERNEL_MLD_REPORT), hex(KERNEL_DAD_NS), hex(KERNEL_RS), hex(DHCLIENT_SOLICIT), hex(TCPDUMP_UDP4_UNICAST), hex(TCPDUMP_UDP6)];
    const kinds: Record<string, number> = {};
    for (let i = 0; i < 20_000; i++) {
      let b: Buffer;
      if (i % 4 === 0) b = r.bytes(r.int(120));
      else {
        b = Buffer.from(r.pick(seeds));
        for (let n = 1 + r.int(4); n > 0; n--) b[r.int(b.length)] = r.pick([0, 1, 0xff, 0x3a, 0x11, 0x2c, 0x2b, 0x3c, r.int(256)]);
        if (r.next() < 0.3) b = b.subarray(0, r.int(b.length + 1));
      }
      let p: ParsedFrame;
      try {
        p = parseFrame(b);
      } catch (e) {
        throw new Error(`iteration ${i} threw on ${b.toString('hex')}: ${(e as Error).stack}`);
      }
      kinds[p.kind] = (kinds[p.kind] ?? 0) + 1;
    }
    expect(kinds.ipv6).toBeGreaterThan(1000);
    expect(kinds.invalid).toBeGreaterThan(1000);
  });
});

describe('address helpers', () => {
  it('derives the link-local address the kernel gave each MAC', () => {
    expect(eui64LinkLocal('52:54:00:12:34:56')).toBe('fe80::5054:ff:fe12:3456');
    expect(eui64LinkLocal('02:00:00:AA:BB:CC')).toBe('fe80::ff:feaa:bbcc');
  });

  it('maps groups to 33:33 MACs and addresses to solicited-node groups', () => {
    expect(ipv6MulticastMac('ff02::1')).toBe('33:33:00:00:00:01');
    expect(ipv6MulticastMac('ff02::1:ff12:3456')).toBe('33:33:ff:12:34:56');
    expect(solicitedNode('fe80::5054:ff:fe12:3456')).toBe('ff02::1:ff12:3456');
    expect(solicitedNode('2001:db8::abcd:ef01')).toBe('ff02::1:ffcd:ef01');
  });

  it('classifies and converts addresses', () => {
    expect(isIpv6Multicast('ff02::2')).toBe(true);
    expect(isIpv6Multicast('fe80::1')).toBe(false);
    expect(isIpv6LinkLocal('fe80::1')).toBe(true);
    expect(isIpv6LinkLocal('febf::1')).toBe(true);
    expect(isIpv6LinkLocal('fec0::1')).toBe(false);
    expect(isIpv6Unspecified('::')).toBe(true);
    expect(isIpv6Unspecified('::1')).toBe(false);
    expect(isIpv6Multicast('not an address')).toBe(false);
    expect(formatIpv6Bytes(ipv6Bytes('2001:DB8:0:0:1::1')!)).toBe('2001:db8::1:0:0:1');
    expect(ipv6Bytes('1::2::3')).toBeUndefined();
    expect(macBytes('52-54-00-12-34-56')?.toString('hex')).toBe('525400123456');
    expect(macBytes('52:54:00:12:34')).toBeUndefined();
  });
});
