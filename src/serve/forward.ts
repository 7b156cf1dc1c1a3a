// --forward-port: `kubectl port-forward` and exec probes connect to
// 127.0.0.1:PORT inside the pod's network namespace, where after podtap
// nothing listens: the pod's address is the VM's now. podtap listens there
// and carries each connection (or UDP exchange) to the VM's PORT, from the
// address the plan gave the pod's stack on the NIC (forwardSteps in
// plan/plan.ts), which the guard lets the guest answer.
//
// A proxy rather than DNAT: rewriting 127.0.0.1 to an outside address needs
// route_localnet, a sysctl, and container engines mount /proc/sys read-only.
// Port-forwarded traffic is a person's or a probe's, not the data path.

import { createServer, connect, type Server, type Socket } from 'node:net';
import dgram from 'node:dgram';
import { RateLimit, type Logger } from '../log.ts';

export interface ForwardSpec {
  ports: { port: number; proto: 'tcp' | 'udp' }[];
  from: string; // the pod stack's address towards the guest
  to: string; // the guest's address
}

/** Connections or UDP peers at once, per port: beyond, new ones are refused. */
export const MAX_FLOWS = 256;
const UDP_IDLE_MS = 60_000;

export interface Forwarder {
  stats(): { port: number; proto: string; flows: number; total: number }[];
  close(): Promise<void>;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function bindUdp(sock: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind({ port, address, exclusive: true }, () => {
      sock.off('error', reject);
      resolve();
    });
  });
}

export async function startForwarding(spec: ForwardSpec, log: Logger): Promise<Forwarder> {
  const limit = new RateLimit(6);
  const warn = (key: string, msg: string) => {
    const s = limit.take(key, Date.now());
    if (s >= 0) log('warn', msg, s > 0 ? { suppressed: s } : undefined);
  };
  const closers: (() => Promise<void>)[] = [];
  const counters = spec.ports.map((p) => ({ port: p.port, proto: p.proto, flows: 0, total: 0 }));
  try {
    for (const [i, p] of spec.ports.entries()) {
      const c = counters[i]!;
      if (p.proto === 'tcp') {
        const open = new Set<Socket>();
        const onConnection = (client: Socket) => {
          if (open.size >= MAX_FLOWS) {
            client.destroy();
            warn(`full-${p.port}`, `forward ${p.port}/tcp: ${MAX_FLOWS} connections open, refusing more`);
            return;
          }
          c.total++;
          const vm = connect({ host: spec.to, port: p.port, localAddress: spec.from });
          open.add(client);
          c.flows = open.size;
          const done = () => {
            client.destroy();
            vm.destroy();
            open.delete(client);
            c.flows = open.size;
          };
          client.on('error', done).on('close', done);
          vm.on('error', (e) => {
            warn(`vm-${p.port}`, `forward ${p.port}/tcp: the VM at ${spec.to}:${p.port} did not take the connection: ${e.message}`);
            done();
          });
          vm.on('close', done);
          client.pipe(vm);
          vm.pipe(client);
        };
        const servers = [createServer(onConnection)];
        await listen(servers[0]!, p.port, '127.0.0.1');
        // ::1 too where the pod's loopback has IPv6 (kubectl tries both).
        const v6 = createServer(onConnection);
        await listen(v6, p.port, '::1').then(
          () => servers.push(v6),
          () => {},
        );
        closers.push(async () => {
          for (const s of open) s.destroy();
          await Promise.all(servers.map((x) => new Promise<void>((r) => x.close(() => r()))));
        });
      } else {
        // One socket towards the VM per local peer, so each peer gets its
        // own answers; idle peers are forgotten.
        const front = dgram.createSocket({ type: 'udp4' });
        const peers = new Map<string, { sock: dgram.Socket; timer: NodeJS.Timeout }>();
        const forget = (key: string) => {
          const peer = peers.get(key);
          if (!peer) return;
          clearTimeout(peer.timer);
          peer.sock.close();
          peers.delete(key);
          c.flows = peers.size;
        };
        front.on('message', (msg, from) => {
          const key = `${from.address}:${from.port}`;
          let peer = peers.get(key);
          if (!peer) {
            if (peers.size >= MAX_FLOWS) {
              warn(`full-${p.port}`, `forward ${p.port}/udp: ${MAX_FLOWS} peers at once, dropping a new one`);
              return;
            }
            c.total++;
            const sock = dgram.createSocket({ type: 'udp4' });
            sock.on('error', (e) => warn(`vm-${p.port}`, `forward ${p.port}/udp: ${e.message}`));
            sock.on('message', (answer) => {
              front.send(answer, from.port, from.address);
              const pr = peers.get(key);
              if (pr) pr.timer.refresh();
            });
            sock.bind({ address: spec.from, port: 0 });
            peer = { sock, timer: setTimeout(() => forget(key), UDP_IDLE_MS) };
            peers.set(key, peer);
            c.flows = peers.size;
          }
          peer.timer.refresh();
          peer.sock.send(msg, p.port, spec.to);
        });
        front.on('error', (e) => warn(`front-${p.port}`, `forward ${p.port}/udp: ${e.message}`));
        await bindUdp(front, p.port, '127.0.0.1');
        closers.push(async () => {
          for (const k of [...peers.keys()]) forget(k);
          await new Promise<void>((r) => front.close(() => r()));
        });
      }
    }
  } catch (e) {
    for (const c of closers.reverse()) await c();
    throw new Error(`forwarding ports: ${(e as Error).message}`, { cause: e });
  }
  log('info', 'forwarding ports to the VM', { ports: spec.ports.map((p) => `${p.port}/${p.proto}`).join(','), to: spec.to });
  return {
    stats: () => counters.map((c) => ({ ...c })),
    close: async () => {
      for (const c of closers.reverse()) await c();
    },
  };
}
