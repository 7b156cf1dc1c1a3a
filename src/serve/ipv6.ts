// The IPv6 servers of one NIC: router advertisements (solicited and on
// schedule), DHCPv6 for the pod interface's own addresses, and neighbour
// advertisements for the router address podtap answers for. Frames come
// from and go to the NIC's TAP only (serve/packet.ts), like DHCPv4's.
//
// The router: the guest must send off-link traffic to the same next hop as
// the pod did. A link-local gateway (Calico's fe80::ecee:eeff:feee:eeee)
// simply is the router the advertisements name, and answers for itself. A
// global gateway (CNI ptp, bridge) cannot be named by an advertisement,
// whose source must be link-local, so podtap advertises a router address of
// its own and answers the guest's solicitations for it with the gateway's
// MAC: at layer 2 the guest's next hop is the pod's. The gateway's MAC comes
// from the pod's neighbour table, or podtap asks the gateway itself (one
// neighbour solicitation from the pod's own address, out of the pod
// interface) before it advertises.

import type { Attachment } from '../plan/attachment.ts';
import type { Dns, PodInterface } from '../pod/model.ts';
import type { Logger } from '../log.ts';
import { RateLimit } from '../log.ts';
import { parseFrame, udp6Frame } from './frames.ts';
import type { FramePort } from './packet.ts';
import { raConfigFrom, routerAdvertisementFrame, withdrawal, type Ipv6Identity, type RaConfig } from './nd/ra.ts';
import { neighborAdvertisementFrame, neighborSolicitationFrame, parseNeighborAdvertisement, parseNeighborSolicitation, parseRouterSolicitation, ND } from './nd/ndp.ts';
import { RaScheduler } from './nd/schedule.ts';
import { dhcp6ConfigFrom } from './dhcp6/config.ts';
import { handle as handleDhcp6 } from './dhcp6/handler.ts';
import { Lease6, type Lease6Snapshot } from './dhcp6/lease.ts';
import { ALL_DHCP_RELAY_AGENTS_AND_SERVERS, CLIENT_PORT, SERVER_PORT, duidLinkLayer } from './dhcp6/codec.ts';
import { network6, parseIpv6 } from '../net/ipv6.ts';

const isLinkLocal = (a: string) => /^fe[89ab]/i.test(a);

/** The identity the NIC's advertisements and DHCPv6 replies describe, from what discovery found. */
export function ipv6IdentityOf(iface: PodInterface, a: Attachment, dns: Dns | undefined, routerMac?: string): Ipv6Identity | undefined {
  const v6 = a.ipv6;
  if (!v6) return undefined;
  const dev = iface.link.name;
  const main = iface.routes.filter((r) => r.family === 'inet6' && r.table === 'main' && r.type === 'unicast' && r.dev === dev && !r.nexthops);
  const split = (dst: string): { prefix: string; prefixlen: number } | undefined => {
    if (dst === 'default') return undefined;
    const [p, l] = dst.includes('/') ? dst.split('/') : [dst, '128'];
    if (parseIpv6(p!) === undefined) return undefined;
    const prefixlen = Number(l);
    return { prefix: network6(p!, prefixlen), prefixlen };
  };
  // On-link prefixes, but no /128 host route: CNI ptp's on-link route to
  // its gateway only says how the pod reached the gateway, which the guest
  // reaches through the router instead; advertised as a prefix, clients
  // (dhcpcd) briefly take the gateway's own address.
  const onLink = main
    .filter((r) => !r.gateway && r.dst !== 'default' && !isLinkLocal(r.dst))
    .flatMap((r) => split(r.dst) ?? [])
    .filter((p) => p.prefixlen < 128);
  const viaGateway = main.filter((r) => r.gateway && r.gateway === v6.gateway);
  const routes = viaGateway
    .filter((r) => r.dst !== 'default')
    .flatMap((r) => {
      const s = split(r.dst);
      return s ? [{ ...s, ...(r.metric !== undefined ? { metric: r.metric } : {}), ...(r.mtu !== undefined ? { mtu: r.mtu } : {}) }] : [];
    });
  const dflt = a.primary ? viaGateway.find((r) => r.dst === 'default') : undefined;
  const mac = v6.routerMac ?? routerMac;
  return {
    addresses: iface.addresses.filter((x) => x.family === 'inet6' && x.scope === 'global' && !x.flags.includes('dadfailed')).map((x) => ({ address: x.local, prefixlen: x.prefixlen })),
    onLink,
    routes,
    ...(dflt ? { defaultRoute: { ...(dflt.metric !== undefined ? { metric: dflt.metric } : {}), ...(dflt.mtu !== undefined ? { mtu: dflt.mtu } : {}) } } : {}),
    router: { linkLocal: v6.router, ...(mac ? { mac } : {}) },
    mtu: a.mtu,
    ...(a.primary && dns ? { dns: { servers: dns.nameservers, search: dns.search } } : {}),
  };
}

export interface Ipv6Stats {
  ra: { sent: number; solicited: number; gatewayMac?: string; needsGatewayMac: boolean };
  dhcp6: Lease6Snapshot & { dropped: Record<string, number> };
}

export interface Ipv6Server {
  stats(): Ipv6Stats;
  /** The last advertisement, with every lifetime 0, while the guest can still hear it. */
  withdraw(): void;
  close(): Promise<void>;
}

export interface Ipv6ServerOptions {
  log: Logger;
  port: FramePort; // the NIC's TAP
  /** The pod interface, to ask the gateway its MAC when discovery did not see it. */
  podPort?: () => Promise<FramePort>;
  leaseSeconds: number;
  /** The guest probed a link-local address of its own (DAD): bind it in the guard (serve/savi.ts). */
  onLinkLocalClaim?: (address: string) => void;
  now?: () => number;
}

export async function startIpv6Server(iface: PodInterface, a: Attachment, dns: Dns | undefined, opts: Ipv6ServerOptions): Promise<Ipv6Server> {
  const log = opts.log;
  const now = opts.now ?? Date.now;
  const v6 = a.ipv6!;
  const limit = new RateLimit(6);
  const limited = (key: string, level: 'info' | 'warn', msg: string, fields: Record<string, unknown> = {}) => {
    const s = limit.take(key, now());
    if (s >= 0) log(level, msg, s > 0 ? { ...fields, suppressed: s } : fields);
  };
  // podtap answers for its own router address; a link-local gateway answers for itself.
  const answersForRouter = v6.router !== v6.gateway;
  let gatewayMac = v6.routerMac;
  const needsGatewayMac = answersForRouter && v6.gateway !== undefined;

  let identity = ipv6IdentityOf(iface, a, dns, gatewayMac)!;
  let warned = false;
  const build = () => {
    const r = raConfigFrom(identity);
    // Once: the same identity gives the same warnings each time it is rebuilt.
    if (!warned) for (const w of r.warnings.slice(0, 10)) log('warn', `ra: ${w}`);
    warned = true;
    return r.config;
  };
  let ra: RaConfig = build();
  const d6 = dhcp6ConfigFrom(identity, { serverDuid: duidLinkLayer(a.serverMac), leaseSeconds: opts.leaseSeconds });
  for (const w of d6.warnings.slice(0, 10)) log('warn', `dhcp6: ${w}`);
  const lease = new Lease6();
  const dropped: Record<string, number> = {};
  let solicited = 0;
  let closed = false;

  const send = (frame: Buffer, what: string) => {
    try {
      opts.port.send(frame);
    } catch (e) {
      limited(`send-${what}`, 'warn', `ipv6: sending ${what} failed: ${(e as Error).message}`);
    }
  };

  // Advertisements wait for the gateway's MAC where podtap must answer for
  // the router with it: a guest that resolved the router to a wrong MAC
  // would send its traffic nowhere.
  const scheduler = new RaScheduler({ maxInterval: ra.maxInterval, minInterval: ra.minInterval });
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    if (closed) return;
    if (timer) clearTimeout(timer);
    const d = scheduler.delay(now());
    if (!Number.isFinite(d)) return;
    timer = setTimeout(tick, Math.min(d, 2 ** 31 - 1));
  };
  const tick = () => {
    if (closed) return;
    if (scheduler.poll(now())) send(routerAdvertisementFrame(ra, { srcMac: a.serverMac }), 'router advertisement');
    arm();
  };
  const startAdvertising = () => {
    scheduler.start(now());
    arm();
  };

  const onFrame = (frame: Buffer) => {
    if (closed) return;
    const f = parseFrame(frame);
    if (f.kind !== 'ipv6') return; // DHCPv4's, or garbage DHCPv4 counts
    if (f.eth.src !== a.mac) {
      dropped['foreign-mac'] = (dropped['foreign-mac'] ?? 0) + 1;
      return;
    }
    // The guest's checksums may be left to an offload that never runs on
    // a TAP; nothing here depends on them.
    const nd = { checksumNotReady: true };
    if (f.udp && f.udp.dstPort === SERVER_PORT) {
      const out = handleDhcp6(f.udp.payload, { now: now(), src: f.src, multicast: f.dst === ALL_DHCP_RELAY_AGENTS_AND_SERVERS }, d6.config, lease);
      if (out.kind === 'drop') {
        dropped[out.reason] = (dropped[out.reason] ?? 0) + 1;
        limited(`dhcp6-${out.reason}`, 'warn', `dhcp6: dropped: ${out.reason}`, { nic: a.nic, ...(out.detail ? { detail: out.detail } : {}) });
        return;
      }
      if (out.kind === 'event') return;
      if (out.event) limited(`dhcp6-${out.event}`, out.event === 'decline' ? 'warn' : 'info', `dhcp6: guest ${out.event === 'decline' ? 'declined its address: it saw it in use on the pod network' : 'released its lease'}`, { nic: a.nic });
      send(udp6Frame({ srcMac: a.serverMac, dstMac: f.eth.src, src: v6.router, dst: out.to, srcPort: SERVER_PORT, dstPort: CLIENT_PORT, payload: out.data }), `DHCPv6 ${out.type}`);
      return;
    }
    const icmp = f.icmp6;
    if (!icmp) return;
    if (icmp.type === ND.ROUTER_SOLICITATION) {
      if (!parseRouterSolicitation(f, nd).ok) return;
      solicited++;
      scheduler.solicited(now());
      arm();
      return;
    }
    if (icmp.type === ND.NEIGHBOR_SOLICITATION) {
      const ns = parseNeighborSolicitation(f, nd);
      if (!ns.ok) return;
      if (ns.dad && isLinkLocal(ns.target)) opts.onLinkLocalClaim?.(ns.target);
      if (!answersForRouter || ns.target !== v6.router || !gatewayMac) return;
      send(
        // From the gateway's MAC, which the advertisement carries as the
        // router's: the frame goes to the guest only.
        neighborAdvertisementFrame({
          srcMac: gatewayMac,
          src: v6.router,
          target: v6.router,
          router: true,
          to: ns.dad ? 'all-nodes' : { ip: f.src, mac: ns.sourceMac ?? f.eth.src },
        }),
        'neighbour advertisement',
      );
    }
  };
  opts.port.onFrame(onFrame);

  // The gateway's MAC, asked from the pod interface as the pod would.
  let asking: { close(): void; timer: NodeJS.Timeout } | undefined;
  const stopAsking = () => {
    if (!asking) return;
    clearTimeout(asking.timer);
    // Not from inside the socket's own callback: close once it returns.
    const a2 = asking;
    asking = undefined;
    setImmediate(() => a2.close());
  };
  if (needsGatewayMac && !gatewayMac && opts.podPort) {
    const pod = await opts.podPort();
    const ask = () =>
      pod.send(neighborSolicitationFrame({ srcMac: a.mac, target: v6.gateway!, src: v6.addresses[0]! }));
    pod.onFrame((frame) => {
      if (gatewayMac || closed) return;
      const f = parseFrame(frame);
      if (f.kind !== 'ipv6' || f.icmp6?.type !== ND.NEIGHBOR_ADVERTISEMENT) return;
      const na = parseNeighborAdvertisement(f);
      if (!na.ok || na.target !== v6.gateway || !na.targetMac) return;
      gatewayMac = na.targetMac;
      identity = ipv6IdentityOf(iface, a, dns, gatewayMac)!;
      ra = build();
      log('info', 'ipv6: learned the gateway\'s MAC', { nic: a.nic, gateway: v6.gateway, mac: gatewayMac });
      stopAsking();
      startAdvertising();
    });
    // Every second at first, then every 5 s: a gateway that never answers
    // is asked on, but not at a rate anyone would notice.
    let tries = 0;
    const tick = () => {
      tries++;
      try {
        ask();
      } catch (e) {
        limited('ask-gw', 'warn', `ipv6: asking the gateway ${v6.gateway} its MAC failed: ${(e as Error).message}`, { nic: a.nic });
      }
      if (tries === 5) log('warn', `ipv6: the gateway ${v6.gateway} does not answer neighbour solicitations on ${a.interface}; the guest gets no IPv6 router until it does`, { nic: a.nic });
      if (asking) asking.timer = setTimeout(tick, tries < 5 ? 1000 : 5000);
    };
    const t = setTimeout(tick, 1000);
    asking = { close: () => pod.close(), timer: t };
    try {
      ask();
    } catch {
      // retried by the timer
    }
  } else if (!needsGatewayMac || gatewayMac) startAdvertising();
  if (needsGatewayMac && !gatewayMac && !opts.podPort) log('warn', `ipv6: the gateway ${v6.gateway}'s MAC is unknown; the guest gets no IPv6 router`, { nic: a.nic });

  let withdrawn = false;
  // The guest drops the router and its routes at once rather than at their
  // lifetime's end: the pod network is going away.
  function withdraw(): void {
    if (withdrawn || closed) return;
    withdrawn = true;
    scheduler.stop();
    if (scheduler.sent > 0) send(routerAdvertisementFrame(withdrawal(ra), { srcMac: a.serverMac }), 'final router advertisement');
  }

  log('info', 'ipv6: serving', { nic: a.nic, device: opts.port.name, router: v6.router, addresses: v6.addresses.join(','), ...(gatewayMac ? { gatewayMac } : {}) });
  return {
    stats: () => ({
      ra: { sent: scheduler.sent, solicited, ...(gatewayMac ? { gatewayMac } : {}), needsGatewayMac: needsGatewayMac && !gatewayMac },
      dhcp6: { ...lease.snapshot(now()), dropped: { ...dropped } },
    }),
    withdraw,
    close: async () => {
      if (closed) return;
      withdraw();
      closed = true;
      scheduler.stop();
      if (timer) clearTimeout(timer);
      stopAsking();
    },
  };
}
