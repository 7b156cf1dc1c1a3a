// Random and mutated datagrams through the whole request path. Seeded, so a
// failure names the seed and iteration that reproduce it.

import { describe, expect, it } from 'vitest';
import { ParseError, parsePacket } from '../../src/serve/dhcp4/codec.ts';
import { buildPlan, handleDatagram } from '../../src/serve/dhcp4/handler.ts';
import { Lease } from '../../src/serve/dhcp4/lease.ts';
import { OptionError, decodeClasslessRoutes, decodeSearchList } from '../../src/serve/dhcp4/options.ts';
import { MSG, SERVER_ID, calicoConfig, clientPacket, ptpConfig } from '../helpers/dhcp-packets.ts';
import { rng } from '../helpers/dhcp-mutate.ts';

const SEED = Number(process.env.DHCP_FUZZ_SEED ?? 0x5eed);


const SEEDS = [
  clientPacket({ type: MSG.DISCOVER, prl: [1, 3, 6, 12, 15, 26, 28, 119, 121, 249], maxSize: 1500 }),
  clientPacket({ type: MSG.REQUEST, serverId: SERVER_ID, requested: '10.23.5.7', prl: [1, 3, 121] }),
  clientPacket({ type: MSG.REQUEST, requested: '10.22.0.5' }),
  clientPacket({ type: MSG.REQUEST, ciaddr: '10.23.5.7' }),
  clientPacket({ type: MSG.INFORM, ciaddr: '10.23.5.7', clientId: Buffer.from([1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]) }),
  clientPacket({ type: MSG.RELEASE, ciaddr: '10.23.5.7', serverId: SERVER_ID }),
  clientPacket({ type: MSG.DECLINE, requested: '10.23.5.7', serverId: SERVER_ID }),
  clientPacket({ type: MSG.DISCOVER, extra: [[52, Buffer.from([3])]] }),
  clientPacket({ type: MSG.DISCOVER, extra: [[119, Buffer.from([3, 0x65, 0x6e, 0x67, 0, 0xc0, 0])]] }),
];

function mutate(r: ReturnType<typeof rng>, base: Buffer): Buffer {
  let b = Buffer.from(base);
  const rounds = 1 + r.int(4);
  for (let k = 0; k < rounds; k++) {
    switch (r.int(7)) {
      case 0: // flip bytes anywhere
        for (let n = 1 + r.int(8); n > 0; n--) b[r.int(b.length)] = r.int(256);
        break;
      case 1: // truncate
        b = b.subarray(0, r.int(b.length + 1));
        break;
      case 2: // random tail
        b = Buffer.concat([b, r.bytes(r.int(400))]);
        break;
      case 3: // corrupt an option length in the options area
        if (b.length > 242) b[240 + r.int(b.length - 240)] = r.pick([0, 1, 2, 3, 4, 127, 254, 255]);
        break;
      case 4: // overwrite the options area wholesale
        if (b.length >= 240) b = Buffer.concat([b.subarray(0, 240), r.bytes(r.int(600))]);
        break;
      case 5: // fill sname/file with option-looking bytes, maybe overloaded
        if (b.length >= 240) {
          for (let i = 44; i < 236; i++) b[i] = r.pick([0, 1, 4, 12, 52, 53, 119, 255, r.int(256)]);
        }
        break;
      case 6: // header fields the handler looks at
        if (b.length >= 240) {
          b[0] = r.pick([1, 2, 0, 255]);
          b[1] = r.pick([1, 1, 1, 6]);
          b[2] = r.pick([6, 6, 0, 16, 17, 255]);
          b.writeUInt32BE(r.pick([0, 0x0a170507, 0x0a160005, 0xffffffff]), 12 + 4 * r.int(4));
        }
        break;
    }
  }
  return b;
}

describe('fuzz', () => {
  it('20,000 random and mutated datagrams neither throw nor hang', () => {
    const r = rng(SEED);
    const plans = [buildPlan(calicoConfig()).plan, buildPlan(ptpConfig({ vmMac: '52:54:00:12:34:56' })).plan];
    const lease = new Lease();
    const kinds = { reply: 0, event: 0, drop: 0 };
    const started = performance.now();
    for (let i = 0; i < 20_000; i++) {
      const buf = i % 5 === 0 ? r.bytes(r.int(700)) : mutate(r, r.pick(SEEDS));
      const plan = r.pick(plans);
      let out;
      try {
        out = handleDatagram(buf, plan, lease, { now: 1_700_000_000_000 + i * 1000, unicast: r.next() < 0.5 });
      } catch (e) {
        throw new Error(`seed ${SEED} iteration ${i} threw ${(e as Error).stack}\ninput ${buf.toString('hex')}`);
      }
      kinds[out.kind]++;
      if (out.kind === 'reply') {
        // Whatever came in, what goes out is well formed and goes to the VM.
        const p = parsePacket(out.data);
        expect(out.data.length).toBeGreaterThanOrEqual(300);
        expect(p.options.keys().next().value).toBe(53);
        expect([formatDest(plan.ip), '255.255.255.255']).toContain(out.to);
      }
    }
    const ms = performance.now() - started;
    // Both branches must be exercised for the run to mean anything.
    expect(kinds.reply).toBeGreaterThan(500);
    expect(kinds.drop).toBeGreaterThan(5000);
    expect(ms).toBeLessThan(20_000);
  });

  it('option decoders only ever throw OptionError', () => {
    const r = rng(SEED + 1);
    for (let i = 0; i < 20_000; i++) {
      const n = r.int(300);
      // Bias towards pointers and small lengths so decoding gets deep.
      const data = Buffer.from(Array.from({ length: n }, () => (r.next() < 0.3 ? r.pick([0, 1, 2, 3, 0xc0, 0xc1, 0x40]) : r.int(256))));
      for (const decode of [decodeSearchList, decodeClasslessRoutes]) {
        try {
          decode(data);
        } catch (e) {
          if (!(e instanceof OptionError)) throw new Error(`seed ${SEED + 1} iteration ${i}: ${(e as Error).stack} on ${data.toString('hex')}`);
        }
      }
    }
  });

  it('the parser only ever throws ParseError', () => {
    const r = rng(SEED + 2);
    for (let i = 0; i < 5_000; i++) {
      const buf = mutate(r, r.pick(SEEDS));
      try {
        parsePacket(buf);
      } catch (e) {
        if (!(e instanceof ParseError)) throw e;
      }
    }
  });
});

function formatDest(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}
