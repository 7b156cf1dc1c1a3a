import { describe, expect, it, vi } from 'vitest';

// The handler gets a trap: a datagram of 333 bytes starting 0xee makes it
// throw, standing in for a bug in it, to show the server takes that too.
vi.mock('../../src/serve/dhcp4/handler.ts', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/serve/dhcp4/handler.ts')>();
  return {
    ...real,
    handleDatagram: (...args: Parameters<typeof real.handleDatagram>) => {
      const [buf] = args;
      if (buf.length === 333 && buf[0] === 0xee) throw new TypeError('a bug in the handler');
      return real.handleDatagram(...args);
    },
  };
});

import { BoundedSet, FOREIGN_MAC_MEMORY, RateLimit, startDhcpServer } from '../../src/serve/dhcp4/server.ts';
import { parsePacket, type DhcpPacket } from '../../src/serve/dhcp4/codec.ts';
import { parseFrame, udp4Frame, udp6Frame } from '../../src/serve/frames.ts';
import { formatIpv4 } from '../../src/net/ipv4.ts';
import { MSG, OPT, OTHER_MAC, SERVER_ID, VM_MAC, calicoConfig, clientPacket, ptpConfig, type ClientPacket } from '../helpers/dhcp-packets.ts';
import { generator, rng } from '../helpers/dhcp-mutate.ts';
import { MemoryPort } from '../helpers/unit-frame-port.ts';

describe('server bookkeeping stays bounded', () => {
  it('remembers at most its cap of MACs, forgetting the oldest', () => {
    const seen = new BoundedSet(FOREIGN_MAC_MEMORY);
    for (let i = 0; i < 50_000; i++) seen.add(`mac-${i}`);
    expect(seen.size).toBe(FOREIGN_MAC_MEMORY);
    expect(seen.add('mac-49999')).toBe(false); // still remembered: not logged again
    expect(seen.add('mac-0')).toBe(true); // long forgotten: logged again
  });

  it('rate-limits per key and reports how many were suppressed', () => {
    const limit = new RateLimit(6);
    const t0 = 1_000_000;
    const allowed = Array.from({ length: 20 }, () => limit.take('malformed:truncated', t0)).filter((s) => s >= 0);
    expect(allowed).toHaveLength(6);
    // Another reason has its own budget.
    expect(limit.take('relayed', t0)).toBe(0);
    // Ten seconds refill one token; the line then says 14 were held back.
    expect(limit.take('malformed:truncated', t0 + 10_000)).toBe(14);
    expect(limit.take('malformed:truncated', t0 + 10_000)).toBe(-1);
  });

  it('does not grow without bound in keys', () => {
    const limit = new RateLimit(1);
    let most = 0;
    for (let i = 0; i < 10_000; i++) {
      limit.take(`k${i}`, 0);
      most = Math.max(most, limit.size);
    }
    expect(most).toBeLessThanOrEqual(256);
    expect(limit.size).toBeGreaterThan(0);
    // A key still remembered keeps its empty bucket.
    expect(limit.take('k9999', 0)).toBe(-1);
  });
});

// ------------------------------------------------------------------------
// The server of one NIC, over an in-memory FramePort: Ethernet frames in
// from the guest, Ethernet frames out to it.

const SERVER_MAC = '02:aa:00:00:00:01';
const BROADCAST_MAC = 'ff:ff:ff:ff:ff:ff';
const POD_IP = '10.23.5.7';

interface Logged {
  level: string;
  msg: string;
  fields?: Record<string, unknown>;
}

async function serverOn(config = calicoConfig()) {
  const port = new MemoryPort('tap0');
  const logs: Logged[] = [];
  let now = 1_700_000_000_000;
  const server = await startDhcpServer(config, { log: (level, msg, fields) => logs.push({ level, msg, ...(fields ? { fields } : {}) }), port, serverMac: SERVER_MAC, now: () => now });
  return { port, logs, server, advance: (ms: number) => (now += ms) };
}

/** A request as the guest's DHCP client puts it on the wire. */
function fromGuest(p: ClientPacket, to: { ip?: string; mac?: string; src?: string; srcMac?: string } = {}): Buffer {
  return udp4Frame({
    srcMac: to.srcMac ?? p.mac ?? VM_MAC,
    dstMac: to.mac ?? BROADCAST_MAC,
    src: to.src ?? p.ciaddr ?? '0.0.0.0',
    dst: to.ip ?? '255.255.255.255',
    srcPort: 68,
    dstPort: 67,
    payload: clientPacket(p),
  });
}

/** The one reply just sent, taken apart. */
function reply(port: MemoryPort) {
  const frames = port.take();
  expect(frames).toHaveLength(1);
  const f = parseFrame(frames[0]!);
  if (f.kind !== 'ipv4' || !f.udp) throw new Error(`not an IPv4/UDP reply: ${JSON.stringify(f)}`);
  return { ...f, udp: f.udp, dhcp: parsePacket(Buffer.from(f.udp.payload)) };
}

const messageType = (p: DhcpPacket) => p.options.get(OPT.MESSAGE_TYPE)?.[0];

describe('DHCPv4 server on a NIC', () => {
  it('answers a DISCOVER with an OFFER from its own MAC and identifier, 67 to 68, unicast to the offered address at the VM\'s MAC', async () => {
    const { port, server } = await serverOn();
    port.deliver(fromGuest({ type: MSG.DISCOVER, xid: 0xabcdef01 }));
    const r = reply(port);
    expect(r.eth).toEqual({ src: SERVER_MAC, dst: VM_MAC, ethertype: 0x0800 });
    expect([r.src, r.dst]).toEqual([SERVER_ID, POD_IP]);
    expect([r.udp.srcPort, r.udp.dstPort, r.udp.checksum]).toEqual([67, 68, 'valid']);
    expect(messageType(r.dhcp)).toBe(MSG.OFFER);
    expect(r.dhcp.xid).toBe(0xabcdef01);
    expect(formatIpv4(r.dhcp.yiaddr)).toBe(POD_IP);
    expect(server.stats()).toMatchObject({ received: 1, receivedUnicast: 0, replied: { OFFER: 1, ACK: 0, NAK: 0 } });
    await server.close();
  });

  it('broadcasts to a client that asks for it (RFC 2131 §4.1: the broadcast bit), and every NAK', async () => {
    const { port, server } = await serverOn();
    port.deliver(fromGuest({ type: MSG.DISCOVER, flags: 0x8000 }));
    const offer = reply(port);
    expect([offer.eth.dst, offer.dst, offer.eth.src, offer.src]).toEqual([BROADCAST_MAC, '255.255.255.255', SERVER_MAC, SERVER_ID]);
    port.deliver(fromGuest({ type: MSG.REQUEST, requested: '10.99.0.7' }));
    const nak = reply(port);
    expect(messageType(nak.dhcp)).toBe(MSG.NAK);
    expect([nak.eth.dst, nak.dst, nak.udp.dstPort]).toEqual([BROADCAST_MAC, '255.255.255.255', 68]);
    expect(server.stats().naks).toBe(1);
    await server.close();
  });

  it('ACKs the selecting REQUEST, unicast to the address at the VM\'s MAC', async () => {
    const { port, server } = await serverOn();
    port.deliver(fromGuest({ type: MSG.DISCOVER }));
    port.take();
    port.deliver(fromGuest({ type: MSG.REQUEST, serverId: SERVER_ID, requested: POD_IP }));
    const ack = reply(port);
    expect(messageType(ack.dhcp)).toBe(MSG.ACK);
    expect([ack.eth.src, ack.eth.dst, ack.src, ack.dst]).toEqual([SERVER_MAC, VM_MAC, SERVER_ID, POD_IP]);
    expect(server.stats().acks.selecting).toBe(1);
    expect(server.stats().lease.state).toBe('bound');
    await server.close();
  });

  it('answers a renewal unicast to its identifier (RENEWING), and a broadcast one as REBINDING, at the client\'s address', async () => {
    const { port, server } = await serverOn();
    port.deliver(fromGuest({ type: MSG.REQUEST, ciaddr: POD_IP, xid: 7 }, { ip: SERVER_ID, mac: SERVER_MAC }));
    const ack = reply(port);
    expect(messageType(ack.dhcp)).toBe(MSG.ACK);
    expect([ack.eth.src, ack.eth.dst, ack.src, ack.dst]).toEqual([SERVER_MAC, VM_MAC, SERVER_ID, POD_IP]);
    expect(formatIpv4(ack.dhcp.ciaddr)).toBe(POD_IP);
    port.deliver(fromGuest({ type: MSG.REQUEST, ciaddr: POD_IP, xid: 8 }));
    expect(reply(port).dst).toBe(POD_IP);
    expect(server.stats()).toMatchObject({ received: 2, receivedUnicast: 1, acks: { renewing: 1, rebinding: 1 } });
    await server.close();
  });

  it('ignores frames from another MAC, logging each such MAC once', async () => {
    const { port, server, logs } = await serverOn();
    port.deliver(fromGuest({ type: MSG.DISCOVER, mac: OTHER_MAC }));
    port.deliver(fromGuest({ type: MSG.DISCOVER, mac: OTHER_MAC }));
    // The VM's MAC inside the request does not help a frame from elsewhere.
    port.deliver(fromGuest({ type: MSG.DISCOVER }, { srcMac: OTHER_MAC }));
    // Nor the other way round.
    port.deliver(fromGuest({ type: MSG.DISCOVER, mac: OTHER_MAC }, { srcMac: VM_MAC }));
    expect(port.take()).toEqual([]);
    expect(server.stats().dropped['foreign-mac']).toBe(4);
    expect(logs.filter((l) => /not the VM's/.test(l.msg)).map((l) => l.fields?.mac)).toEqual([OTHER_MAC]);
    await server.close();
  });

  it('drops what is not DHCP to the server port, without a reply', async () => {
    const { port, server } = await serverOn();
    port.deliver(udp4Frame({ srcMac: VM_MAC, dstMac: SERVER_MAC, src: POD_IP, dst: '10.96.0.10', srcPort: 5353, dstPort: 53, payload: Buffer.alloc(20) }));
    port.deliver(udp6Frame({ srcMac: VM_MAC, dstMac: '33:33:00:01:00:02', src: 'fe80::1', dst: 'ff02::1:2', srcPort: 546, dstPort: 547, payload: Buffer.alloc(8) }));
    port.deliver(Buffer.alloc(10));
    expect(port.take()).toEqual([]);
    expect(server.stats().dropped).toEqual({ 'not-dhcp': 2, 'frame:short-ethernet': 1 });
    expect(server.stats().received).toBe(0);
    await server.close();
  });

  it('counts a failed send and goes on; sends nothing once closed', async () => {
    const { port, server } = await serverOn();
    port.closed = true;
    port.deliver(fromGuest({ type: MSG.DISCOVER }));
    expect(server.stats().errors.send).toBe(1);
    port.closed = false;
    await server.close();
    expect(port.closed).toBe(true);
    port.closed = false;
    port.deliver(fromGuest({ type: MSG.DISCOVER }));
    expect(port.take()).toEqual([]);
  });

  it('takes an exception of the handler itself: counted, logged, and the next request is answered', async () => {
    const { port, server, logs } = await serverOn();
    const trap = Buffer.alloc(333, 0);
    trap[0] = 0xee;
    expect(() => port.deliver(fromGuestPayload(trap))).not.toThrow();
    expect(server.stats().errors.handler).toBe(1);
    expect(logs.some((l) => l.level === 'error' && /handling a packet failed: a bug in the handler/.test(l.msg))).toBe(true);
    port.deliver(fromGuest({ type: MSG.DISCOVER }));
    expect(messageType(reply(port).dhcp)).toBe(MSG.OFFER);
    await server.close();
  });

  it('never throws on garbage frames: 2,500 mutated and random ones, every reply well formed and only to the VM', async () => {
    const { port, server } = await serverOn(ptpConfig());
    const target = { vmMac: VM_MAC, podIp: '10.22.0.5', serverId: SERVER_ID };
    const gen = generator(SEED, target);
    const r = rng(SEED + 7);
    let replies = 0;
    for (let i = 0; i < 2_500; i++) {
      const g = gen(i);
      let frame = fromGuestBytes(g.data, g.unicast);
      // Break the Ethernet, IP and UDP headers too, some of the time.
      if (r.next() < 0.3) {
        frame = Buffer.from(frame);
        for (let n = 1 + r.int(4); n > 0; n--) frame[r.int(Math.min(frame.length, 42))] = r.int(256);
      }
      if (r.next() < 0.1) frame = frame.subarray(0, r.int(frame.length + 1));
      if (i % 50 === 0) frame = r.bytes(r.int(400));
      try {
        port.deliver(frame);
      } catch (e) {
        throw new Error(`seed ${SEED} frame ${i} threw ${(e as Error).stack}\nframe ${frame.toString('hex')}`);
      }
      for (const out of port.take()) {
        replies++;
        const f = parseFrame(out);
        expect(f.kind).toBe('ipv4');
        if (f.kind !== 'ipv4') continue;
        expect(f.eth.src).toBe(SERVER_MAC);
        expect([VM_MAC, BROADCAST_MAC]).toContain(f.eth.dst);
        expect(['10.22.0.5', '255.255.255.255']).toContain(f.dst);
        expect([f.src, f.udp?.srcPort, f.udp?.dstPort, f.udp?.checksum]).toEqual([SERVER_ID, 67, 68, 'valid']);
      }
    }
    const s = server.stats();
    expect(s.errors.handler).toBe(0);
    expect(replies).toBeGreaterThan(100);
    expect(Object.values(s.dropped).reduce((a, b) => a + b, 0)).toBeGreaterThan(500);
    await server.close();
  });
});

const SEED = Number(process.env.DHCP_FUZZ_SEED ?? 0x5eed);

function fromGuestBytes(payload: Buffer, unicast: boolean): Buffer {
  return udp4Frame({ srcMac: VM_MAC, dstMac: unicast ? SERVER_MAC : BROADCAST_MAC, src: unicast ? '10.22.0.5' : '0.0.0.0', dst: unicast ? SERVER_ID : '255.255.255.255', srcPort: 68, dstPort: 67, payload });
}

function fromGuestPayload(payload: Buffer): Buffer {
  return udp4Frame({ srcMac: VM_MAC, dstMac: BROADCAST_MAC, src: '0.0.0.0', dst: '255.255.255.255', srcPort: 68, dstPort: 67, payload });
}
