import { describe, expect, it } from 'vitest';
import {
  MSG6,
  OPT6,
  STATUS,
  decodeMessage,
  duidLinkLayer,
  encodeMessage,
  encodeOption,
  firstOption,
  optionsOf,
} from '../../src/serve/dhcp6/codec.ts';
import type { DecodeResult, Dhcp6Message, Dhcp6Option } from '../../src/serve/dhcp6/codec.ts';

// UDP payloads real clients sent (tcpdump on the peer of their veth, in a
// throwaway namespace pair): ISC dhclient 4.4.3 and dhcpcd 9.4.1.
const DHCLIENT_SOLICIT = '012ef10f0001000e00010001329f706652540012345600060008001700180027001f0008000200000003000c0012345600000e1000001518';
const DHCLIENT_REQUEST =
  '03b3d8c20001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000e10000015180005001820010db800010000000000000000000500001c2000001d4c';
const DHCLIENT_RELEASE =
  '081a7be70001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000000000000000005001820010db80001000000000000000000050000000000000000';
const DHCLIENT_INFORMATION_REQUEST = '0b7b23c60001000a0003000152540012345600060008001700180027001f000800020000';
const DHCLIENT_SOLICIT_PD = '014471810001000e00010001329f6db552540012345600060008001700180027001f00080002006c0019000c0012345600000e1000001518';
const DHCPCD_SOLICIT_RAPID = '01f1f91d0001000e00010001329f70805254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000';

const hex = (s: string) => Buffer.from(s, 'hex');

function ok(r: DecodeResult): Dhcp6Message {
  if (!r.ok) throw new Error(`did not decode: ${JSON.stringify(r.error)}`);
  return r.message;
}

function err(r: DecodeResult): string {
  if (r.ok) throw new Error('decoded');
  return r.error.reason;
}

describe('decoding what real clients send', () => {
  it('reads dhclient\'s SOLICIT', () => {
    const m = ok(decodeMessage(hex(DHCLIENT_SOLICIT)));
    expect([m.type, m.xid]).toEqual([MSG6.SOLICIT, 0x2ef10f]);
    expect(firstOption(m.options, 'client-id')!.duid.toString('hex')).toBe('00010001329f7066525400123456');
    expect(firstOption(m.options, 'oro')!.codes).toEqual([23, 24, 39, 31]);
    expect(firstOption(m.options, 'elapsed-time')!.hundredths).toBe(0);
    expect(optionsOf(m.options, 'ia-na')).toEqual([{ kind: 'ia-na', iaid: 0x123456, t1: 3600, t2: 5400, options: [] }]);
  });

  it('reads dhclient\'s REQUEST with its server identifier and address hint', () => {
    const m = ok(decodeMessage(hex(DHCLIENT_REQUEST)));
    expect(m.type).toBe(MSG6.REQUEST);
    expect(firstOption(m.options, 'server-id')!.duid).toEqual(duidLinkLayer('02:00:00:00:00:01'));
    expect(firstOption(m.options, 'ia-na')!.options).toEqual([{ kind: 'iaaddr', address: '2001:db8:1::5', preferred: 7200, valid: 7500, options: [] }]);
  });

  it('reads dhcpcd\'s rapid-commit SOLICIT and dhclient\'s prefix-delegation one', () => {
    const m = ok(decodeMessage(hex(DHCPCD_SOLICIT_RAPID)));
    expect(m.options.map((o) => o.kind)).toEqual(['client-id', 'ia-na', 'oro', 'elapsed-time', 'rapid-commit']);
    expect(firstOption(m.options, 'oro')!.codes).toEqual([23, 24, 39, 82, 83]);
    const pd = ok(decodeMessage(hex(DHCLIENT_SOLICIT_PD)));
    expect(optionsOf(pd.options, 'ia-pd')).toEqual([{ kind: 'ia-pd', iaid: 0x123456, t1: 3600, t2: 5400, options: [] }]);
    expect(firstOption(pd.options, 'elapsed-time')!.hundredths).toBe(108);
  });

  it('reads an INFORMATION-REQUEST with a DUID-LL client identifier', () => {
    const m = ok(decodeMessage(hex(DHCLIENT_INFORMATION_REQUEST)));
    expect(m.type).toBe(MSG6.INFORMATION_REQUEST);
    expect(firstOption(m.options, 'client-id')!.duid).toEqual(duidLinkLayer('52:54:00:12:34:56'));
  });

  it('encodes each decoded capture back to the same bytes', () => {
    for (const h of [DHCLIENT_SOLICIT, DHCLIENT_REQUEST, DHCLIENT_RELEASE, DHCLIENT_INFORMATION_REQUEST, DHCLIENT_SOLICIT_PD, DHCPCD_SOLICIT_RAPID]) {
      expect(encodeMessage(ok(decodeMessage(hex(h)))).toString('hex')).toBe(h);
    }
  });
});

describe('encoding (RFC 8415 §21 layouts, by hand)', () => {
  it('lays out IA_NA with an IAADDR holding a status', () => {
    const o: Dhcp6Option = {
      kind: 'ia-na',
      iaid: 0x01020304,
      t1: 1800,
      t2: 2880,
      options: [{ kind: 'iaaddr', address: '2001:db8::5', preferred: 3600, valid: 7200, options: [{ kind: 'status', status: STATUS.Success, message: 'ok' }] }],
    };
    expect(encodeOption(o).toString('hex')).toBe(
      '0003' + '0030' + '01020304' + '00000708' + '00000b40' +
        '0005' + '0020' + '20010db8000000000000000000000005' + '00000e10' + '00001c20' +
        '000d' + '0004' + '0000' + '6f6b',
    );
  });

  it('lays out IA_TA, IA_PD with an IAPREFIX, and the small options', () => {
    expect(encodeOption({ kind: 'ia-ta', iaid: 7, options: [] }).toString('hex')).toBe('0004000400000007');
    expect(
      encodeOption({ kind: 'ia-pd', iaid: 1, t1: 0, t2: 0, options: [{ kind: 'iaprefix', preferred: 1, valid: 2, prefixlen: 56, prefix: '2001:db8:ff00::', options: [] }] }).toString('hex'),
    ).toBe('0019' + '0029' + '00000001' + '00000000' + '00000000' + '001a' + '0019' + '00000001' + '00000002' + '38' + '20010db8ff0000000000000000000000');
    expect(encodeOption({ kind: 'oro', codes: [23, 24] }).toString('hex')).toBe('0006000400170018');
    expect(encodeOption({ kind: 'preference', value: 255 }).toString('hex')).toBe('00070001ff');
    expect(encodeOption({ kind: 'elapsed-time', hundredths: 65535 }).toString('hex')).toBe('00080002ffff');
    expect(encodeOption({ kind: 'rapid-commit' }).toString('hex')).toBe('000e0000');
    expect(encodeOption({ kind: 'reconf-accept' }).toString('hex')).toBe('00140000');
    expect(encodeOption({ kind: 'information-refresh-time', seconds: 86400 }).toString('hex')).toBe('0020000400015180');
    expect(encodeOption({ kind: 'dns-servers', servers: ['2001:db8::53', 'fd00::1'] }).toString('hex')).toBe('00170020' + '20010db8000000000000000000000053' + 'fd000000000000000000000000000001');
    expect(encodeOption({ kind: 'raw', code: 39, data: Buffer.from([1, 2]) }).toString('hex')).toBe('002700020102');
  });

  it('writes the domain list uncompressed (RFC 8415 §10, RFC 3646)', () => {
    // "svc.cluster.local" would be a pointer into "cluster.local" if compressed.
    expect(encodeOption({ kind: 'domain-list', domains: ['cluster.local', 'svc.cluster.local'] }).toString('hex')).toBe(
      '0018' + '0022' + '07636c7573746572056c6f63616c00' + '03737663' + '07636c7573746572056c6f63616c00',
    );
  });

  it('puts the 24-bit transaction id after the type', () => {
    expect(encodeMessage({ type: MSG6.REPLY, xid: 0xabcdef, options: [] }).toString('hex')).toBe('07abcdef');
    expect(() => encodeMessage({ type: 7, xid: 0x1000000, options: [] })).toThrow(/transaction/);
    expect(() => encodeOption({ kind: 'preference', value: 256 })).toThrow(/preference/);
    expect(() => encodeOption({ kind: 'iaaddr', address: '10.0.0.1', preferred: 0, valid: 0, options: [] })).toThrow(/IPv6/);
    expect(() => encodeOption({ kind: 'domain-list', domains: ['bad name'] })).toThrow();
    expect(() => encodeOption({ kind: 'raw', code: 1, data: Buffer.alloc(70000) })).toThrow(/does not fit/);
  });

  it('round-trips every kind of option', () => {
    const m: Dhcp6Message = {
      type: MSG6.ADVERTISE,
      xid: 0x123456,
      options: [
        { kind: 'client-id', duid: duidLinkLayer('52:54:00:12:34:56') },
        { kind: 'server-id', duid: Buffer.from('000100010000000102030405', 'hex') },
        { kind: 'preference', value: 255 },
        {
          kind: 'ia-na',
          iaid: 1,
          t1: 10,
          t2: 16,
          options: [
            { kind: 'iaaddr', address: '2001:db8:1::5', preferred: 20, valid: 20, options: [] },
            { kind: 'iaaddr', address: '2001:db8:2::5', preferred: 0, valid: 0, options: [{ kind: 'status', status: STATUS.NotOnLink, message: 'ünïcode ✓' }] },
          ],
        },
        { kind: 'ia-ta', iaid: 2, options: [{ kind: 'status', status: STATUS.NoAddrsAvail, message: '' }] },
        { kind: 'ia-pd', iaid: 3, t1: 0, t2: 0, options: [{ kind: 'iaprefix', preferred: 0, valid: 0, prefixlen: 64, prefix: '2001:db8:3::', options: [] }] },
        { kind: 'oro', codes: [23, 24, 82] },
        { kind: 'elapsed-time', hundredths: 12 },
        { kind: 'status', status: STATUS.UseMulticast, message: 'multicast please' },
        { kind: 'rapid-commit' },
        { kind: 'reconf-accept' },
        { kind: 'dns-servers', servers: ['2001:db8::53'] },
        { kind: 'domain-list', domains: ['svc.cluster.local', 'cluster.local'] },
        { kind: 'information-refresh-time', seconds: 600 },
        { kind: 'raw', code: 39, data: Buffer.from('0003666f6f', 'hex') },
        { kind: 'raw', code: 65535, data: Buffer.alloc(0) },
      ],
    };
    const back = ok(decodeMessage(encodeMessage(m)));
    expect(back).toEqual(m);
  });
});

describe('what decoding refuses, never by throwing', () => {
  const msg = (...opts: string[]) => hex('01000001' + opts.join(''));

  it('refuses short datagrams and relay messages', () => {
    expect(err(decodeMessage(hex('010000')))).toBe('truncated');
    expect(err(decodeMessage(hex('0c00fe800000000000000000000000000001')))).toBe('relay-message');
    expect(err(decodeMessage(hex('0d000000')))).toBe('relay-message');
  });

  it('refuses options that run past the message', () => {
    expect(err(decodeMessage(msg('000100')))).toBe('option-header-past-end');
    expect(err(decodeMessage(msg('0001000e0001')))).toBe('option-past-end');
  });

  it('bounds nested options by the option that holds them', () => {
    // An IA_NA of 16 bytes whose IAADDR claims 24: the bytes after the IA
    // must not be read as the rest of it.
    const ia = '0003' + '0010' + '00000001' + '00000000' + '00000000' + '0005' + '0018';
    expect(err(decodeMessage(msg(ia, '00'.repeat(24))))).toBe('option-past-end');
  });

  it('refuses known options of the wrong size', () => {
    const bad: [string, string][] = [
      ['empty client id', '00010000'],
      ['short IA_NA', '0003000b' + '00'.repeat(11)],
      ['short IA_TA', '00040003' + '000000'],
      ['short IA_PD', '00190004' + '00000001'],
      ['odd ORO', '0006000300170018'],
      ['long preference', '000700020000'],
      ['short elapsed time', '0008000100'],
      ['short status', '000d000100'],
      ['rapid commit with data', '000e000100'],
      ['reconfigure accept with data', '0014000100'],
      ['DNS list of 15 bytes', '0017000f' + '00'.repeat(15)],
      ['domain list running off', '00180004' + '05616263'],
      ['refresh time of 3 bytes', '00200003000258'],
      ['IAADDR too short', '0003' + '0020' + '00000001' + '00000000' + '00000000' + '0005' + '0010' + '00'.repeat(16)],
      ['IAPREFIX length 129', '0019' + '0029' + '00000001' + '00000000' + '00000000' + '001a' + '0019' + '00000000' + '00000000' + '81' + '00'.repeat(16)],
    ];
    for (const [what, o] of bad) {
      const r = decodeMessage(msg(o));
      expect(r.ok, what).toBe(false);
      expect(!r.ok && r.error.reason, what).toBe('bad-option');
    }
  });

  it('keeps unknown options, and known ones out of place, as raw bytes', () => {
    const m = ok(decodeMessage(msg('00ff0003616263', '00050001ff', '001a000100')));
    expect(m.options).toEqual([
      { kind: 'raw', code: 255, data: hex('616263') },
      { kind: 'raw', code: OPT6.IAADDR, data: hex('ff') }, // an IAADDR only means something inside an IA
      { kind: 'raw', code: OPT6.IAPREFIX, data: hex('00') },
    ]);
    // Inside an IA_NA, a client identifier is just bytes too.
    const ia = ok(decodeMessage(msg('0003' + '0010' + '00000001' + '00000000' + '00000000' + '0001' + '0000')));
    expect(firstOption(ia.options, 'ia-na')!.options).toEqual([{ kind: 'raw', code: OPT6.CLIENTID, data: Buffer.alloc(0) }]);
  });

  it('makes DUID-LL from a MAC', () => {
    expect(duidLinkLayer('02:00:00:00:00:01').toString('hex')).toBe('00030001020000000001');
    expect(() => duidLinkLayer('02:00:00')).toThrow(/MAC/);
  });
});
