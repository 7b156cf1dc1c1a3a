// The IPv6 servers of one NIC (src/serve/ipv6.ts) over an in-memory
// FramePort: like DHCPv4's, they answer the VM's MAC only. A DHCPv6 client
// or a router solicitation from any other MAC on the TAP (a second stack in
// the guest, a spoofed frame) gets nothing: no lease handed to someone
// else's DUID, no solicited advertisement.

import { describe, expect, it } from 'vitest';
import { startIpv6Server } from '../../src/serve/ipv6.ts';
import { plan, type Generated, type PlanOptions } from '../../src/plan/plan.ts';
import { eui64LinkLocal, icmp6Frame, ipv6MulticastMac, parseFrame, udp6Frame } from '../../src/serve/frames.ts';
import { ALL_ROUTERS, ND, ND_HOP_LIMIT, buildRouterSolicitation } from '../../src/serve/nd/ndp.ts';
import { ALL_DHCP_RELAY_AGENTS_AND_SERVERS, CLIENT_PORT, MSG6, SERVER_PORT, decodeMessage, duidLinkLayer, encodeMessage } from '../../src/serve/dhcp6/codec.ts';
import { SHAPES, linksOf } from '../helpers/shapes.ts';
import { MemoryPort } from '../helpers/unit-frame-port.ts';

const OPTS: PlanOptions = { bridge: 'br0', tap: 'tap0', queues: 1, linkLocal: '169.254.75.1/32', linkLocalExplicit: false, antispoof: true, persistTap: false, support: { redirect: true }, datapath: 'bridge' };
const GEN = (nic: number): Generated => ({ serverMac: `02:aa:00:00:0${nic}:01`, portMac: `02:aa:00:00:0${nic}:02`, bridgeMac: `02:aa:00:00:0${nic}:03` });
const OTHER_MAC = '02:66:66:66:66:66';

async function serverOn() {
  const pod = SHAPES.dualstack;
  const a = plan(pod, linksOf(pod), OPTS, GEN).attachments[0]!;
  expect(a.ipv6, 'the dual-stack shape gives the NIC IPv6').toBeDefined();
  const port = new MemoryPort('tap0');
  const now = 1_700_000_000_000;
  const server = await startIpv6Server(pod.interfaces[0]!, a, pod.dns, { log: () => {}, port, leaseSeconds: 3600, now: () => now });
  return { a, port, server };
}

function solicit(mac: string, xid: number): Buffer {
  const payload = encodeMessage({
    type: MSG6.SOLICIT,
    xid,
    options: [
      { kind: 'client-id', duid: duidLinkLayer(mac) },
      { kind: 'elapsed-time', hundredths: 0 },
      { kind: 'ia-na', iaid: 1, t1: 0, t2: 0, options: [] },
    ],
  });
  return udp6Frame({ srcMac: mac, dstMac: ipv6MulticastMac(ALL_DHCP_RELAY_AGENTS_AND_SERVERS), src: eui64LinkLocal(mac), dst: ALL_DHCP_RELAY_AGENTS_AND_SERVERS, srcPort: CLIENT_PORT, dstPort: SERVER_PORT, payload });
}

function routerSolicitation(mac: string): Buffer {
  return icmp6Frame({ srcMac: mac, dstMac: ipv6MulticastMac(ALL_ROUTERS), src: eui64LinkLocal(mac), dst: ALL_ROUTERS, hopLimit: ND_HOP_LIMIT, type: ND.ROUTER_SOLICITATION, code: 0, body: buildRouterSolicitation(mac) });
}

/** The DHCPv6 replies among the frames sent, decoded. */
function dhcp6Replies(frames: Buffer[]) {
  return frames.flatMap((b) => {
    const f = parseFrame(b);
    if (f.kind !== 'ipv6' || !f.udp || f.udp.srcPort !== SERVER_PORT) return [];
    const d = decodeMessage(f.udp.payload);
    return d.ok ? [{ to: f.eth.dst, type: d.message.type, xid: d.message.xid }] : [];
  });
}

describe('the IPv6 servers answer the VM\'s MAC only', () => {
  it('a DHCPv6 SOLICIT from another MAC gets no ADVERTISE and is counted as foreign; the VM\'s own gets one', async () => {
    const { a, port, server } = await serverOn();
    port.take();
    port.deliver(solicit(OTHER_MAC, 0x111111));
    expect(dhcp6Replies(port.take())).toEqual([]);
    expect(server.stats().dhcp6.dropped['foreign-mac']).toBe(1);
    // The VM's MAC on the frame, whoever's DUID inside: answered (the DUID is never checked).
    port.deliver(solicit(a.mac, 0x222222));
    expect(dhcp6Replies(port.take())).toEqual([{ to: a.mac, type: MSG6.ADVERTISE, xid: 0x222222 }]);
    await server.close();
  });

  it('a router solicitation from another MAC is not taken as the guest\'s', async () => {
    const { a, port, server } = await serverOn();
    port.deliver(routerSolicitation(OTHER_MAC));
    expect(server.stats().ra.solicited).toBe(0);
    expect(server.stats().dhcp6.dropped['foreign-mac']).toBe(1);
    port.deliver(routerSolicitation(a.mac));
    expect(server.stats().ra.solicited).toBe(1);
    await server.close();
  });
});
