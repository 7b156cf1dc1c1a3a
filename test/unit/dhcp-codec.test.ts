import { describe, expect, it } from 'vitest';
import { BOOTREPLY, BOOTREQUEST, HEADER_SIZE, MAGIC_COOKIE, ParseError, encodePacket, hardwareAddress, parseMac, parsePacket } from '../../src/serve/dhcp4/codec.ts';
import { formatIpv4, ipv4, parseCidr, parseIpv4 } from '../../src/net/ipv4.ts';
import {
  OPT,
  OptionError,
  checkDomainName,
  decodeClasslessRoutes,
  decodeIps,
  decodeSearchList,
  encodeClasslessRoutes,
  encodeIps,
  encodeSearchList,
  encodeU16,
  encodeU32,
  optionWireLength,
  writeOption,
} from '../../src/serve/dhcp4/options.ts';
import { VM_MAC, clientPacket } from '../helpers/dhcp-packets.ts';

const bytes = (...parts: (number | string)[]): Buffer =>
  Buffer.concat(parts.map((p) => (typeof p === 'number' ? Buffer.from([p]) : Buffer.from(p, 'latin1'))));

/** An option as it appears on the wire: code, length, data. */
function tlv(code: number, data: Uint8Array): Buffer {
  const out = Buffer.alloc(optionWireLength(data.length));
  writeOption(out, 0, code, data);
  return out;
}

function header(over: { op?: number; hlen?: number; cookie?: number } = {}): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b[0] = over.op ?? BOOTREQUEST;
  b[1] = 1;
  b[2] = over.hlen ?? 6;
  parseMac(VM_MAC)!.copy(b, 28);
  b.writeUInt32BE(over.cookie ?? MAGIC_COOKIE, 236);
  return b;
}

function reason(buf: Buffer): string {
  try {
    parsePacket(buf);
  } catch (e) {
    expect(e).toBeInstanceOf(ParseError);
    return (e as ParseError).reason;
  }
  return 'parsed';
}

describe('ipv4 helpers', () => {
  it('parses only strict dotted quads', () => {
    expect(parseIpv4('10.22.0.5')).toBe(0x0a160005);
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
    for (const bad of ['10.22.0', '10.22.0.256', '010.1.1.1', '1.1.1.1 ', '::1', '', 'a.b.c.d']) {
      expect(parseIpv4(bad)).toBeUndefined();
    }
    expect(formatIpv4(0xc0a80101)).toBe('192.168.1.1');
  });

  it('reads ip -j destinations: default, CIDR, bare host', () => {
    expect(parseCidr('default')).toEqual({ addr: 0, prefixlen: 0 });
    expect(parseCidr('169.254.1.1')).toEqual({ addr: ipv4('169.254.1.1'), prefixlen: 32 });
    expect(parseCidr('10.22.0.5/16')).toEqual({ addr: ipv4('10.22.0.0'), prefixlen: 16 });
    expect(parseCidr('10.0.0.0/33')).toBeUndefined();
  });
});

describe('scalar options (RFC 2132)', () => {
  it('subnet mask, router, DNS, MTU, lease times', () => {
    expect(tlv(OPT.SUBNET_MASK, encodeU32(0xffff0000))).toEqual(bytes(1, 4, 255, 255, 0, 0));
    expect(tlv(OPT.SUBNET_MASK, encodeU32(0xffffffff))).toEqual(bytes(1, 4, 255, 255, 255, 255));
    expect(tlv(OPT.ROUTER, encodeIps([ipv4('169.254.1.1')]))).toEqual(bytes(3, 4, 169, 254, 1, 1));
    expect(tlv(OPT.DNS, encodeIps([ipv4('10.96.0.10'), ipv4('10.96.0.11')]))).toEqual(bytes(6, 8, 10, 96, 0, 10, 10, 96, 0, 11));
    expect(tlv(OPT.MTU, encodeU16(1450))).toEqual(bytes(26, 2, 0x05, 0xaa));
    expect(tlv(OPT.LEASE_TIME, encodeU32(3600))).toEqual(bytes(51, 4, 0, 0, 0x0e, 0x10));
    expect(tlv(OPT.HOSTNAME, Buffer.from('pod-a'))).toEqual(bytes(12, 5, 'pod-a'));
    expect(decodeIps(bytes(10, 96, 0, 10, 10, 96, 0, 11))).toEqual(['10.96.0.10', '10.96.0.11']);
    expect(() => decodeIps(bytes(1, 2, 3))).toThrow(OptionError);
  });
});

describe('RFC 3442 classless static routes', () => {
  // The destination encodings in RFC 3442 §3, each followed by a router.
  const examples: [string, number[]][] = [
    ['0.0.0.0/0', [0]],
    ['10.0.0.0/8', [8, 10]],
    ['10.0.0.0/24', [24, 10, 0, 0]],
    ['10.17.0.0/16', [16, 10, 17]],
    ['10.27.129.0/24', [24, 10, 27, 129]],
    ['10.229.0.128/25', [25, 10, 229, 0, 128]],
    ['10.198.122.47/32', [32, 10, 198, 122, 47]],
  ];
  for (const [dst, descriptor] of examples) {
    it(`encodes ${dst} as ${descriptor.join('.')}`, () => {
      const encoded = encodeClasslessRoutes([{ dst, gateway: '10.0.0.1' }]);
      expect([...encoded]).toEqual([...descriptor, 10, 0, 0, 1]);
      expect(decodeClasslessRoutes(encoded)).toEqual([{ dst, gateway: '10.0.0.1' }]);
    });
  }

  it('encodes the Calico shape: an on-link host route, then the default route', () => {
    const routes = [
      { dst: '169.254.1.1/32', gateway: '0.0.0.0' },
      { dst: '0.0.0.0/0', gateway: '169.254.1.1' },
    ];
    const encoded = encodeClasslessRoutes(routes);
    expect(tlv(OPT.CLASSLESS_ROUTES, encoded)).toEqual(bytes(121, 14, 32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1));
    expect(decodeClasslessRoutes(encoded)).toEqual(routes);
  });

  it('encodes the ptp shape and clears host bits of destinations', () => {
    const encoded = encodeClasslessRoutes([
      { dst: '10.22.0.5/16', gateway: '10.22.0.1' },
      { dst: 'default', gateway: '10.22.0.1' },
    ]);
    expect([...encoded]).toEqual([16, 10, 22, 10, 22, 0, 1, 0, 10, 22, 0, 1]);
  });

  it('rejects malformed route data', () => {
    expect(() => decodeClasslessRoutes(bytes(33, 1, 2, 3, 4, 5, 6, 7, 8, 9))).toThrow(OptionError);
    expect(() => decodeClasslessRoutes(bytes(24, 10, 0, 0, 10, 0, 0))).toThrow(/past the end/);
    expect(() => encodeClasslessRoutes([{ dst: '10.0.0.0/40', gateway: '1.1.1.1' }])).toThrow(OptionError);
  });
});

describe('RFC 3397 domain search list', () => {
  // RFC 3397 §3's example: "eng.apple.com." and "marketing.apple.com.", the
  // second compressed to a pointer at offset 4 ("apple.com").
  const rfcExample = bytes(3, 'eng', 5, 'apple', 3, 'com', 0, 9, 'marketing', 0xc0, 0x04);

  it('encodes the RFC example with compression', () => {
    expect(rfcExample.length).toBe(27);
    expect(encodeSearchList(['eng.apple.com', 'marketing.apple.com'])).toEqual(rfcExample);
  });

  it('encodes without compression, each name terminated by the root label', () => {
    expect(encodeSearchList(['eng.apple.com.', 'marketing.apple.com'], false)).toEqual(
      bytes(3, 'eng', 5, 'apple', 3, 'com', 0, 9, 'marketing', 5, 'apple', 3, 'com', 0),
    );
  });

  it('decodes the RFC example as split into two options (9 + 18 bytes)', () => {
    // RFC 3397 shows the list cut in the middle of a label: the pointer
    // offset counts in the concatenated data, not in either instance.
    const pkt = Buffer.concat([
      header(),
      tlv(53, bytes(1)),
      bytes(119, 9, ...rfcExample.subarray(0, 9)),
      bytes(119, 18, ...rfcExample.subarray(9)),
      bytes(255),
    ]);
    const p = parsePacket(pkt);
    expect(p.options.get(119)).toEqual(rfcExample);
    expect(decodeSearchList(p.options.get(119)!)).toEqual(['eng.apple.com', 'marketing.apple.com']);
  });

  it('compresses the Kubernetes search list', () => {
    const names = ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local'];
    const encoded = encodeSearchList(names);
    // default(8) svc(4) cluster(8) local(6) root(1), then two pointers.
    expect(encoded).toEqual(bytes(7, 'default', 3, 'svc', 7, 'cluster', 5, 'local', 0, 0xc0, 8, 0xc0, 12));
    expect(decodeSearchList(encoded)).toEqual(names);
    expect(decodeSearchList(encodeSearchList(names, false))).toEqual(names);
  });

  it('round-trips assorted lists', () => {
    const lists = [
      ['a'],
      ['a.b', 'b', 'c.a.b', 'a.b'],
      ['x'.repeat(63) + '.example', 'y.example', 'example'],
      ['us-central1-a.c.my-project.internal', 'c.my-project.internal', 'google.internal', 'default.svc.cluster.local'],
      ['_tcp.example.org', 'Example.ORG'],
    ];
    for (const names of lists) {
      expect(decodeSearchList(encodeSearchList(names))).toEqual(names);
      expect(decodeSearchList(encodeSearchList(names, false))).toEqual(names);
    }
  });

  it('refuses names it cannot encode', () => {
    expect(checkDomainName('ok.example')).toBeUndefined();
    expect(checkDomainName('ok.example.')).toBeUndefined();
    expect(checkDomainName('a'.repeat(64) + '.example')).toMatch(/63/);
    expect(checkDomainName('a..b')).toMatch(/empty label/);
    expect(checkDomainName('')).toMatch(/empty/);
    expect(checkDomainName('bad name.example')).toMatch(/characters/);
    expect(checkDomainName('$(reboot).example')).toMatch(/characters/);
    expect(checkDomainName(Array(130).fill('ab').join('.'))).toMatch(/255/);
    expect(() => encodeSearchList(['fine.example', 'not fine'])).toThrow(OptionError);
  });

  it('rejects hostile encodings without hanging', () => {
    expect(() => decodeSearchList(bytes(1, 'a', 0xc0, 0x00))).toThrow(/backwards/); // loops to itself
    expect(() => decodeSearchList(bytes(0xc0, 0x05, 0, 0, 0, 1, 'a', 0))).toThrow(/backwards/); // forward
    expect(() => decodeSearchList(bytes(1, 'a', 0, 0xc0, 0x03))).toThrow(/backwards/); // points at itself
    expect(() => decodeSearchList(bytes(1, 'a', 0, 0xc0))).toThrow(/past the end/);
    expect(() => decodeSearchList(bytes(5, 'ab'))).toThrow(/past the end/);
    expect(() => decodeSearchList(bytes(3, 'abc'))).toThrow(/past the end/);
    expect(() => decodeSearchList(bytes(0x40, 0))).toThrow(/label type/);
    const long = Buffer.concat([...Array(5).fill(bytes(63, 'x'.repeat(63))), bytes(0)]);
    expect(() => decodeSearchList(long)).toThrow(/255/);
    // A chain of pointers that each go further back terminates.
    expect(decodeSearchList(bytes(1, 'a', 0, 1, 'b', 0xc0, 0, 1, 'c', 0xc0, 3))).toEqual(['a', 'b.a', 'c.b.a']);
  });
});

describe('RFC 3396 long options', () => {
  it('splits an option longer than 255 bytes into consecutive instances', () => {
    const data = Buffer.alloc(600, 0).map((_, i) => i & 255);
    expect(optionWireLength(600)).toBe(606);
    const wire = tlv(OPT.DOMAIN_SEARCH, data);
    expect(wire.length).toBe(606);
    expect([wire[0], wire[1]]).toEqual([119, 255]);
    expect([wire[257], wire[258]]).toEqual([119, 255]);
    expect([wire[514], wire[515]]).toEqual([119, 90]);
    expect(wire.subarray(2, 257)).toEqual(data.subarray(0, 255));
    expect(wire.subarray(516)).toEqual(data.subarray(510));
  });

  it('writes exactly 255 bytes as one instance and an empty option as code, 0', () => {
    expect(optionWireLength(255)).toBe(257);
    expect(optionWireLength(256)).toBe(260);
    expect(tlv(12, Buffer.alloc(0))).toEqual(bytes(12, 0));
  });

  it('joins split instances when parsing, even with other options between them', () => {
    const data = Buffer.alloc(300, 7);
    const pkt = encodePacket(
      { op: 1, htype: 1, hlen: 6, hops: 0, xid: 1, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: parseMac(VM_MAC)! },
      [
        [53, bytes(1)],
        [119, data],
      ],
    );
    expect(parsePacket(pkt).options.get(119)).toEqual(data);
    const interleaved = Buffer.concat([header(), bytes(119, 2, 'ab', 53, 1, 1, 119, 1, 'c', 255)]);
    expect(parsePacket(interleaved).options.get(119)).toEqual(Buffer.from('abc'));
  });

  it('follows option overload: options, then file, then sname', () => {
    const pkt = header();
    const file = bytes(119, 2, 'cd', 12, 2, 'hi', 255);
    const sname = bytes(119, 2, 'ef', 255);
    file.copy(pkt, 108);
    sname.copy(pkt, 44);
    const full = Buffer.concat([pkt, bytes(53, 1, 1, 52, 1, 3, 119, 2, 'ab', 255)]);
    const p = parsePacket(full);
    expect(p.options.get(119)!.toString()).toBe('abcdef');
    expect(p.options.get(12)!.toString()).toBe('hi');
    // Without option 52 the same fields are just names.
    const plain = Buffer.concat([pkt, bytes(53, 1, 1, 255)]);
    expect(parsePacket(plain).options.has(12)).toBe(false);
  });
});

describe('packets', () => {
  it('encodes a reply: fixed fields, cookie, options in order, END, padded to 300 bytes', () => {
    const chaddr = parseMac(VM_MAC)!;
    const out = encodePacket(
      { op: BOOTREPLY, htype: 1, hlen: 6, hops: 0, xid: 0xdeadbeef, secs: 0, flags: 0x8000, ciaddr: 0, yiaddr: ipv4('10.22.0.5'), siaddr: 0, giaddr: 0, chaddr },
      [
        [53, bytes(2)],
        [54, bytes(169, 254, 75, 1)],
      ],
    );
    expect(out.length).toBe(300);
    const expected = Buffer.alloc(300);
    bytes(2, 1, 6, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0x80, 0).copy(expected, 0);
    bytes(10, 22, 0, 5).copy(expected, 16);
    chaddr.copy(expected, 28);
    bytes(99, 130, 83, 99, 53, 1, 2, 54, 4, 169, 254, 75, 1, 255).copy(expected, 236);
    expect(out).toEqual(expected);
  });

  it('grows past 300 bytes when the options need it', () => {
    const out = encodePacket(
      { op: 2, htype: 1, hlen: 6, hops: 0, xid: 1, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: Buffer.alloc(6) },
      [[119, Buffer.alloc(50, 1)]],
    );
    expect(out.length).toBe(300);
    const big = encodePacket(
      { op: 2, htype: 1, hlen: 6, hops: 0, xid: 1, secs: 0, flags: 0, ciaddr: 0, yiaddr: 0, siaddr: 0, giaddr: 0, chaddr: Buffer.alloc(6) },
      [[119, Buffer.alloc(300, 1)]],
    );
    expect(big.length).toBe(240 + 304 + 1);
  });

  it('round-trips a request', () => {
    const buf = clientPacket({ type: 3, xid: 0xcafe, ciaddr: '10.22.0.5', flags: 0x8000, requested: '10.22.0.5', serverId: '169.254.75.1', prl: [1, 3, 121] });
    const p = parsePacket(buf);
    expect(p.op).toBe(BOOTREQUEST);
    expect(p.xid).toBe(0xcafe);
    expect(p.flags).toBe(0x8000);
    expect(formatIpv4(p.ciaddr)).toBe('10.22.0.5');
    expect(hardwareAddress(p)).toBe(VM_MAC);
    expect([...p.options.keys()]).toEqual([53, 50, 54, 55]);
    expect([...p.options.get(55)!]).toEqual([1, 3, 121]);
  });

  it('accepts PAD anywhere and ignores what follows END', () => {
    const p = parsePacket(Buffer.concat([header(), bytes(0, 0, 53, 1, 1, 0, 255, 99, 99, 99)]));
    expect([...p.options.keys()]).toEqual([53]);
  });
});

describe('malformed packets are rejected with a reason', () => {
  const cases: [string, Buffer, string][] = [
    ['empty', Buffer.alloc(0), 'truncated'],
    ['one byte short of the header', header().subarray(0, 239), 'truncated'],
    ['truncated inside the fixed fields', header().subarray(0, 100), 'truncated'],
    ['op 3', Buffer.concat([header({ op: 3 }), bytes(255)]), 'bad-op'],
    ['op 0', Buffer.concat([header({ op: 0 }), bytes(255)]), 'bad-op'],
    ['hlen 17', Buffer.concat([header({ hlen: 17 }), bytes(255)]), 'bad-hlen'],
    ['hlen 255', Buffer.concat([header({ hlen: 255 }), bytes(255)]), 'bad-hlen'],
    ['no cookie', Buffer.concat([header({ cookie: 0 }), bytes(53, 1, 1, 255)]), 'no-cookie'],
    ['BOOTP vendor cookie byte-swapped', Buffer.concat([header({ cookie: 0x63538263 }), bytes(255)]), 'no-cookie'],
    ['option code as the last byte', Buffer.concat([header(), bytes(53)]), 'option-header-past-end'],
    ['option length past the end', Buffer.concat([header(), bytes(53, 1, 1, 12, 10, 'abc')]), 'option-past-end'],
    ['length 255 with 3 bytes', Buffer.concat([header(), bytes(61, 255, 1, 2, 3)]), 'option-past-end'],
    ['no END', Buffer.concat([header(), bytes(53, 1, 1)]), 'no-end-option'],
    ['only PAD', Buffer.concat([header(), Buffer.alloc(60)]), 'no-end-option'],
    ['header only', header(), 'no-end-option'],
    ['overload value 4', Buffer.concat([header(), bytes(52, 1, 4, 255)]), 'bad-overload'],
    ['overload of 2 bytes', Buffer.concat([header(), bytes(52, 2, 1, 1, 255)]), 'bad-overload'],
    ['overloaded file without END', Buffer.concat([header(), bytes(52, 1, 1, 255)]), 'no-end-option'],
  ];
  for (const [name, buf, why] of cases) {
    it(name, () => expect(reason(buf)).toBe(why));
  }

  it('never reads past a short datagram even with a valid header', () => {
    const overloadedFile = header();
    overloadedFile.fill(12, 108, 236); // code 12, length 12, ... running off the field
    expect(reason(Buffer.concat([overloadedFile, bytes(52, 1, 1, 255)]))).toBe('option-past-end');
  });
});
