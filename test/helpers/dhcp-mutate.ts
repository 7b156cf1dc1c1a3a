// A deterministic generator of hostile DHCP datagrams for the socket-level
// fuzz (test/ns/dhcp-flood.test.ts): packet `i` of seed `s` is always the
// same bytes, so a failure is reproduced by re-running with the seed it
// printed. Everything is built from a handful of valid requests (from the
// VM's MAC and from others) and then broken in the ways a hostile or broken
// guest might: bit flips, truncation, bad option lengths, option soup, huge
// options, option overload, a wrong cookie, header nonsense, giaddr set...

import { MSG, OPT, clientPacket, ip4 } from './dhcp-packets.ts';

/** mulberry32: small, fast, good enough to spread inputs; seeded so every failure can be replayed. */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = int(256);
    return b;
  };
  return { next, int, bytes, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]! };
}
export type Rng = ReturnType<typeof rng>;

export interface FuzzTarget {
  vmMac: string;
  podIp: string; // the address the VM is to get
  serverId: string;
}

export interface Generated {
  data: Buffer;
  kind: 'valid' | 'random' | 'mutated';
  /** The mutations applied, in order (for the tally). */
  mutations: string[];
  /** Sent to the server identifier rather than broadcast. */
  unicast: boolean;
}

const macText = (b: Iterable<number>) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

/** The valid requests mutations start from, for one client MAC. */
function bases(mac: string, t: FuzzTarget, xid: number): Buffer[] {
  const prl = [1, 3, 6, 12, 15, 26, 28, 119, 121, 249];
  return [
    clientPacket({ type: MSG.DISCOVER, mac, xid, prl, maxSize: 1500 }),
    clientPacket({ type: MSG.DISCOVER, mac, xid, flags: 0x8000 }),
    clientPacket({ type: MSG.REQUEST, mac, xid, serverId: t.serverId, requested: t.podIp, prl }), // SELECTING
    clientPacket({ type: MSG.REQUEST, mac, xid, requested: t.podIp }), // INIT-REBOOT
    clientPacket({ type: MSG.REQUEST, mac, xid, requested: '10.99.0.7' }), // INIT-REBOOT, wrong address: NAK
    clientPacket({ type: MSG.REQUEST, mac, xid, ciaddr: t.podIp }), // RENEWING / REBINDING
    clientPacket({ type: MSG.INFORM, mac, xid, ciaddr: t.podIp, clientId: Buffer.from([1, ...Buffer.from(mac.split(':').map((h) => parseInt(h, 16)))]) }),
    clientPacket({ type: MSG.RELEASE, mac, xid, ciaddr: t.podIp, serverId: t.serverId }),
    clientPacket({ type: MSG.DECLINE, mac, xid, requested: t.podIp, serverId: t.serverId }),
  ];
}

/** Option codes worth aiming at: the ones the server reads, and the framing codes. */
const INTERESTING = [0, 1, 3, 12, 50, 51, 52, 53, 54, 55, 57, 61, 81, 82, 119, 121, 249, 255] as const;

function optionSoup(r: Rng, maxBytes: number): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  while (n < maxBytes) {
    const code = r.next() < 0.6 ? r.pick(INTERESTING) : r.int(256);
    if (code === 0 || code === 255) {
      parts.push(Buffer.from([code]));
      n++;
      if (code === 255 && r.next() < 0.5) break;
      continue;
    }
    // Mostly honest lengths, sometimes lying ones.
    const len = r.next() < 0.8 ? r.pick([0, 1, 2, 4, 6, r.int(40), r.int(256)]) : r.int(256);
    const honest = r.next() < 0.85;
    const data = r.bytes(honest ? len : r.int(len + 1));
    if (code === 53 && data.length > 0 && r.next() < 0.7) data[0] = 1 + r.int(8);
    parts.push(Buffer.from([code, len]), data);
    n += 2 + data.length;
  }
  return Buffer.concat(parts);
}

type Mutation = (r: Rng, b: Buffer, t: FuzzTarget) => Buffer;

const MUTATIONS: Record<string, Mutation> = {
  flip(r, b) {
    for (let n = 1 + r.int(16); n > 0 && b.length; n--) {
      const k = r.int(b.length);
      b[k] = b[k]! ^ (1 << r.int(8));
    }
    return b;
  },
  bytes(r, b) {
    for (let n = 1 + r.int(8); n > 0 && b.length; n--) b[r.int(b.length)] = r.pick([0, 1, 0x7f, 0x80, 0xfe, 0xff, r.int(256)]);
    return b;
  },
  truncate(r, b) {
    // Around the interesting edges: inside the header, at the cookie, inside an option.
    const at = r.pick([r.int(b.length + 1), r.int(240), 236 + r.int(8), 240 + r.int(Math.max(1, b.length - 239))]);
    return b.subarray(0, Math.min(at, b.length));
  },
  tail(r, b) {
    return Buffer.concat([b, r.bytes(r.int(600))]);
  },
  'no-end'(r, b) {
    // Drop END and any padding after it: the options run off the datagram.
    let end = b.length;
    while (end > 240 && (b[end - 1] === 0 || b[end - 1] === 255)) end--;
    return b.subarray(0, end);
  },
  'bad-length'(r, b) {
    // Walk to an option and lie about its length.
    let i = 240;
    const target = r.int(4);
    for (let k = 0; i + 1 < b.length && b[i] !== 255 && k < target; k++) i += b[i] === 0 ? 1 : 2 + b[i + 1]!;
    if (i + 1 < b.length) b[i + 1] = r.pick([0, 1, 3, 5, 127, 200, 254, 255, r.int(256)]);
    return b;
  },
  soup(r, b) {
    return Buffer.concat([b.subarray(0, Math.min(240, b.length)), optionSoup(r, r.int(700))]);
  },
  huge(r, b) {
    // Many maximal options: a datagram far over the MTU (it goes fragmented).
    const parts: Buffer[] = [b.subarray(0, Math.min(240, b.length)), Buffer.from([53, 1, 1 + r.int(8)])];
    for (let n = 1 + r.int(r.next() < 0.1 ? 35 : 6); n > 0; n--) {
      const code = r.pick([12, 55, 61, 81, 119, 121, 43, 224 + r.int(30)]);
      parts.push(Buffer.from([code, 255]), r.bytes(255));
    }
    if (r.next() < 0.7) parts.push(Buffer.from([255]));
    return Buffer.concat(parts);
  },
  split(r, b) {
    // RFC 3396: the same code several times, joined by the parser.
    const code = r.pick([53, 54, 50, 55, 61, 57]);
    const parts: Buffer[] = [b.subarray(0, Math.min(240, b.length))];
    for (let n = 2 + r.int(6); n > 0; n--) {
      const len = r.pick([0, 1, 2, 4, 255, r.int(256)]);
      parts.push(Buffer.from([code, len]), r.bytes(len));
    }
    parts.push(b.subarray(Math.min(240, b.length)));
    return Buffer.concat(parts);
  },
  overload(r, b) {
    // Option 52 with any value, and sname/file holding options, garbage or nothing.
    if (b.length < 240) return b;
    const v = r.pick([0, 1, 2, 3, 3, 4, 255]);
    const fill = r.int(3);
    if (fill === 0) {
      b.fill(0, 44, 236);
      const f = optionSoup(r, 120);
      f.copy(b, 108, 0, Math.min(f.length, 128));
      const s = optionSoup(r, 60);
      s.copy(b, 44, 0, Math.min(s.length, 64));
    } else if (fill === 1) {
      for (let i = 44; i < 236; i++) b[i] = r.pick([0, 1, 4, 12, 52, 53, 55, 119, 255, r.int(256)]);
    } // else: leave them zero, i.e. all padding and no END
    const opt = r.next() < 0.8 ? Buffer.from([52, 1, v]) : Buffer.from([52, r.int(4), ...r.bytes(3)]);
    return Buffer.concat([b.subarray(0, 240), opt, b.subarray(240)]);
  },
  cookie(r, b) {
    if (b.length >= 240) b.writeUInt32BE(r.pick([0, 0xffffffff, 0x63825362, 0x53638263, r.int(2 ** 32)]), 236);
    return b;
  },
  header(r, b) {
    if (b.length < 4) return b;
    b[0] = r.pick([0, 1, 2, 3, 255]); // op
    b[1] = r.pick([0, 1, 1, 6, 32, 255]); // htype
    b[2] = r.pick([0, 1, 5, 6, 6, 7, 16, 17, 255]); // hlen
    b[3] = r.int(256); // hops
    return b;
  },
  giaddr(r, b) {
    if (b.length >= 28) b.writeUInt32BE(r.pick([0x0a160001, 0xa9fe4b01, 0xffffffff, 1 + r.int(2 ** 32 - 1)]), 24);
    return b;
  },
  addresses(r, b, t) {
    // ciaddr / yiaddr / siaddr: the pod's, the server's, broadcast, anything.
    if (b.length >= 24) {
      const pool = [0, ip4(t.podIp).readUInt32BE(0), ip4(t.serverId).readUInt32BE(0), 0xffffffff, r.int(2 ** 32)];
      b.writeUInt32BE(r.pick(pool), 12 + 4 * r.int(3));
    }
    return b;
  },
  flags(r, b) {
    if (b.length >= 12) b.writeUInt16BE(r.pick([0x8000, 0xffff, 0x0001, r.int(65536)]), 10);
    return b;
  },
  'max-size'(r, b) {
    // Option 57 with silly values next to a request list asking for everything.
    const size = r.pick([0, 1, 2, 300, 575, 576, 577, 1500, 9000, 65535]);
    const prl = r.next() < 0.5 ? Buffer.from(Array.from({ length: 255 }, (_, i) => i + 1)) : r.bytes(r.int(256));
    const opts = Buffer.concat([Buffer.from([57, 2, size >> 8, size & 255, 55, prl.length]), prl]);
    return Buffer.concat([b.subarray(0, Math.min(240, b.length)), opts, b.subarray(Math.min(240, b.length))]);
  },
  'client-id'(r, b) {
    // A client identifier joined to well over 255 bytes.
    const parts: Buffer[] = [b.subarray(0, Math.min(240, b.length))];
    for (let n = 1 + r.int(5); n > 0; n--) parts.push(Buffer.from([61, 255]), r.bytes(255));
    parts.push(b.subarray(Math.min(240, b.length)));
    return Buffer.concat(parts);
  },
  chaddr(r, b, t) {
    // The VM's MAC in the wrong place, or half of it.
    if (b.length >= 44) {
      const mac = Buffer.from(t.vmMac.split(':').map((h) => parseInt(h, 16)));
      b.fill(0, 28, 44);
      mac.copy(b, 28 + r.pick([0, 0, 1, 6, 10]), 0, r.pick([6, 6, 3, 5]));
    }
    return b;
  },
};
export const MUTATION_NAMES = Object.keys(MUTATIONS);

export interface GeneratorOptions {
  /** Share of packets carrying the VM's MAC before mutation (default 0.5). */
  vmShare?: number;
  /** Share left as valid requests (default 0.05). */
  validShare?: number;
  /** Share of pure random bytes (default 0.1). */
  randomShare?: number;
}

/**
 * Packet `i` depends only on (seed, i): the sequence is the same however it
 * is paced or split up.
 */
export function generator(seed: number, t: FuzzTarget, o: GeneratorOptions = {}): (i: number) => Generated {
  const vmShare = o.vmShare ?? 0.5;
  const validShare = o.validShare ?? 0.05;
  const randomShare = o.randomShare ?? 0.1;
  // A pool of other MACs, so that some recur (remembered and not logged
  // again) while most are new.
  const pool = rng(seed ^ 0x9e3779b9);
  const others = Array.from({ length: 2000 }, () => macText([0x02, ...pool.bytes(5)]));
  return (i: number): Generated => {
    const r = rng((Math.imul(seed, 0x85ebca6b) ^ Math.imul(i + 1, 0xc2b2ae35)) >>> 0);
    const unicast = r.next() < 0.4;
    const roll = r.next();
    if (roll < randomShare) {
      const len = r.pick([0, 1, 4, 200, 239, 240, 241, 300, 548, 1000, 1472, 1473, 4000]);
      return { data: r.bytes(r.next() < 0.5 ? len : r.int(len + 1)), kind: 'random', mutations: [], unicast };
    }
    const mac = r.next() < vmShare ? t.vmMac : r.next() < 0.7 ? r.pick(others) : macText([r.int(256), ...r.bytes(5)]);
    const base = Buffer.from(r.pick(bases(mac, t, r.int(2 ** 32))));
    if (roll < randomShare + validShare) return { data: base, kind: 'valid', mutations: [], unicast };
    let b: Buffer = base;
    const names: string[] = [];
    for (let n = 1 + r.int(r.next() < 0.2 ? 6 : 3); n > 0; n--) {
      const name = r.pick(MUTATION_NAMES);
      names.push(name);
      b = MUTATIONS[name]!(r, b, t);
    }
    return { data: b, kind: 'mutated', mutations: names, unicast };
  };
}

/** A valid DISCOVER from the VM with a recognisable xid: the server must OFFER it. */
export function probe(t: FuzzTarget, xid: number, broadcastReply = false): Buffer {
  return clientPacket({ type: MSG.DISCOVER, mac: t.vmMac, xid, flags: broadcastReply ? 0x8000 : 0, prl: [1, 3, 6, 121] });
}

export { MSG, OPT };
