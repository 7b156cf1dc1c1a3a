// Random and mutated DHCPv6 messages through the whole request path.
// Seeded, so a failure names the seed and iteration that reproduce it.

import { describe, expect, it } from 'vitest';
import { MSG6, decodeMessage, duidLinkLayer, encodeMessage, firstOption } from '../../src/serve/dhcp6/codec.ts';
import type { Dhcp6Option } from '../../src/serve/dhcp6/codec.ts';
import { dhcp6ConfigFrom } from '../../src/serve/dhcp6/config.ts';
import { MAX_REPLY, handle } from '../../src/serve/dhcp6/handler.ts';
import type { Dhcp6Outcome } from '../../src/serve/dhcp6/handler.ts';
import { Lease6 } from '../../src/serve/dhcp6/lease.ts';
import { rng } from '../helpers/dhcp-mutate.ts';
import type { Rng } from '../helpers/dhcp-mutate.ts';

const SEED = Number(process.env.DHCP6_FUZZ_SEED ?? 0x6eed);
const SERVER_DUID = duidLinkLayer('02:00:00:00:00:01');
const VM_LL = 'fe80::5054:ff:fe12:3456';

const cid: Dhcp6Option = { kind: 'client-id', duid: Buffer.from('00010001329f7066525400123456', 'hex') };
const sid: Dhcp6Option = { kind: 'server-id', duid: SERVER_DUID };
const ia = (iaid: number, ...a: string[]): Dhcp6Option => ({ kind: 'ia-na', iaid, t1: 0, t2: 0, options: a.map((address): Dhcp6Option => ({ kind: 'iaaddr', address, preferred: 0, valid: 0, options: [] })) });
const pd: Dhcp6Option = { kind: 'ia-pd', iaid: 9, t1: 0, t2: 0, options: [{ kind: 'iaprefix', prefix: '2001:db8:5::', prefixlen: 56, preferred: 0, valid: 0, options: [] }] };
const oro: Dhcp6Option = { kind: 'oro', codes: [23, 24, 82] };
const m = (type: number, ...options: Dhcp6Option[]) => encodeMessage({ type, xid: 0x2ef10f, options });

const SEEDS: Buffer[] = [
  // dhclient and dhcpcd, as captured (see dhcp6-handler.test.ts)
  Buffer.from('012ef10f0001000e00010001329f706652540012345600060008001700180027001f0008000200000003000c0012345600000e1000001518', 'hex'),
  Buffer.from('03b3d8c20001000e00010001329f70665254001234560002000a0003000102000000000100060008001700180027001f000800020000000300280012345600000e10000015180005001820010db800010000000000000000000500001c2000001d4c', 'hex'),
  Buffer.from('01f1f91d0001000e00010001329f70805254001234560003000c0012345600000000000000000006000a00170018002700520053000800020000000e0000', 'hex'),
  m(MSG6.SOLICIT, cid, ia(1), pd, oro, { kind: 'rapid-commit' }),
  m(MSG6.REQUEST, cid, sid, ia(1, '2001:db8:1::5'), pd),
  m(MSG6.RENEW, cid, sid, ia(1, '2001:db8:1::5', '2001:db8:1::6'), ia(2, '2001:db8:9::1')),
  m(MSG6.REBIND, cid, ia(1, '2001:db8:1::5'), pd),
  m(MSG6.CONFIRM, cid, ia(1, '2001:db8:1::5')),
  m(MSG6.RELEASE, cid, sid, ia(1, '2001:db8:1::5')),
  m(MSG6.DECLINE, cid, sid, ia(1, '2001:db8:1::5')),
  m(MSG6.INFORMATION_REQUEST, cid, oro),
  m(MSG6.INFORMATION_REQUEST),
];

/** Offsets of the top-level option headers, walking as far as the lengths allow. */
function optionStarts(b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 4; i + 4 <= b.length; i += 4 + b.readUInt16BE(i + 2)) out.push(i);
  return out;
}

function mutate(r: Rng, base: Buffer): Buffer {
  let b = Buffer.from(base);
  for (let k = 1 + r.int(3); k > 0; k--) {
    const starts = optionStarts(b);
    switch (r.int(8)) {
      case 0: // flip bytes anywhere
        for (let n = 1 + r.int(6); n > 0; n--) if (b.length > 0) b[r.int(b.length)] = r.int(256);
        break;
      case 1: // truncate
        b = b.subarray(0, r.int(b.length + 1));
        break;
      case 2: // random tail
        b = Buffer.concat([b, r.bytes(r.int(200))]);
        break;
      case 3: // lie about an option's length, top level or nested
        if (starts.length > 0) {
          const at = r.next() < 0.5 ? r.pick(starts) : 4 + r.int(Math.max(1, b.length - 6));
          if (at + 4 <= b.length) b.writeUInt16BE(r.pick([0, 1, 2, 3, 4, 11, 12, 15, 16, 24, 25, 0xffff, r.int(0x10000)]), at + 2);
        }
        break;
      case 4: // change the message type
        if (b.length > 0) b[0] = r.pick([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 255]);
        break;
      case 5: // splice in an option from another seed
        {
          const other = r.pick(SEEDS);
          const os = optionStarts(other);
          if (os.length > 0 && b.length >= 4) {
            const at = r.pick(os);
            const len = Math.min(other.length - at, 4 + other.readUInt16BE(at + 2));
            b = Buffer.concat([b, other.subarray(at, at + len)]);
          }
        }
        break;
      case 6: // an option code the handler cares about, with random contents
        {
          const code = r.pick([1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 20, 23, 24, 25, 26, 32]);
          const data = r.bytes(r.pick([0, 1, 2, 4, 12, 16, 24, 25, 40, r.int(140)]));
          const h = Buffer.alloc(4);
          h.writeUInt16BE(code, 0);
          h.writeUInt16BE(data.length, 2);
          b = Buffer.concat([b, h, data]);
        }
        break;
      case 7: // duplicate or drop a whole option
        if (starts.length > 0) {
          const at = r.pick(starts);
          const end = Math.min(b.length, at + 4 + b.readUInt16BE(at + 2));
          b = r.next() < 0.5 ? Buffer.concat([b, b.subarray(at, end)]) : Buffer.concat([b.subarray(0, at), b.subarray(end)]);
        }
        break;
    }
  }
  return b;
}

function checkReply(out: Extract<Dhcp6Outcome, { kind: 'reply' }>, input: Buffer, src: string): void {
  const d = decodeMessage(out.data);
  if (!d.ok) throw new Error(`reply does not decode: ${JSON.stringify(d.error)}`);
  expect(d.message.type).toBe(out.type === 'ADVERTISE' ? MSG6.ADVERTISE : MSG6.REPLY);
  expect(d.message.xid).toBe(input.readUIntBE(1, 3));
  expect(firstOption(d.message.options, 'server-id')?.duid).toEqual(SERVER_DUID);
  expect(out.to).toBe(src);
  expect(out.data.length).toBeLessThanOrEqual(MAX_REPLY);
}

describe('DHCPv6 fuzz', () => {
  it('20,000 random and mutated messages neither throw nor hang, and every reply is well formed', () => {
    const r = rng(SEED);
    const configs = [
      dhcp6ConfigFrom(
        {
          addresses: [{ address: '2001:db8:1::5', prefixlen: 64 }, { address: 'fd00::5', prefixlen: 128 }],
          onLink: [{ prefix: '2001:db8:1::', prefixlen: 64 }],
          routes: [],
          defaultRoute: {},
          router: { linkLocal: 'fe80::1' },
          mtu: 1500,
          dns: { servers: ['2001:db8::53'], search: ['svc.cluster.local', 'cluster.local'] },
        },
        { serverDuid: SERVER_DUID, leaseSeconds: 3600 },
      ).config,
      dhcp6ConfigFrom({ addresses: [], onLink: [], routes: [], router: { linkLocal: 'fe80::1' }, mtu: 1500 }, { serverDuid: SERVER_DUID, leaseSeconds: 60, rapidCommit: false }).config,
    ];
    const lease = new Lease6();
    const kinds = { reply: 0, event: 0, drop: 0 };
    const started = performance.now();
    for (let i = 0; i < 20_000; i++) {
      const buf = i % 5 === 0 ? r.bytes(r.int(300)) : mutate(r, r.pick(SEEDS));
      const src = r.next() < 0.95 ? VM_LL : r.pick(['::', 'ff02::1:2', '2001:db8:1::5']);
      const ctx = { now: 1_700_000_000_000 + i * 1000, src, multicast: r.next() < 0.85 };
      let out: Dhcp6Outcome;
      try {
        out = handle(buf, ctx, r.pick(configs), lease);
      } catch (e) {
        throw new Error(`seed ${SEED} iteration ${i} threw ${(e as Error).stack}\ninput ${buf.toString('hex')}`);
      }
      kinds[out.kind]++;
      if (out.kind === 'reply') {
        try {
          checkReply(out, buf, src);
        } catch (e) {
          throw new Error(`seed ${SEED} iteration ${i}: ${(e as Error).message}\ninput ${buf.toString('hex')}`);
        }
      }
    }
    const ms = performance.now() - started;
    // Both branches must be exercised for the run to mean anything.
    expect(kinds.reply).toBeGreaterThan(1500);
    expect(kinds.drop).toBeGreaterThan(5000);
    expect(kinds.event).toBeGreaterThan(0);
    expect(ms).toBeLessThan(20_000);
  });

  it('the decoder returns a result for anything, never an exception', () => {
    const r = rng(SEED + 1);
    let decoded = 0;
    for (let i = 0; i < 20_000; i++) {
      // Bias towards option-looking bytes so decoding gets deep.
      const n = r.int(200);
      const data = Buffer.from(Array.from({ length: n }, () => (r.next() < 0.4 ? r.pick([0, 0, 1, 3, 5, 12, 13, 24, 25, 26]) : r.int(256))));
      let res;
      try {
        res = decodeMessage(data);
      } catch (e) {
        throw new Error(`seed ${SEED + 1} iteration ${i}: ${(e as Error).stack} on ${data.toString('hex')}`);
      }
      if (res.ok) decoded++;
    }
    expect(decoded).toBeGreaterThan(100);
  });
});
