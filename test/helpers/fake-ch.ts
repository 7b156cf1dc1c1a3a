// A stand-in for Cloud Hypervisor's API server (`cloud-hypervisor
// --api-socket path=SOCKET`), which can't be installed on this machine. Run
// it in the pod's network namespace, as the real VMM would be:
//
//   ip netns exec <pod> node_modules/.bin/node test/helpers/fake-ch.ts SOCKET
//
// Like Cloud Hypervisor's micro_http server it reads each request with
// recvmsg in chunks of at most 1 KiB, collecting SCM_RIGHTS fds from every
// chunk until the request is complete, and answers one request per
// connection. For PUT /api/v1/vm.add-net it checks what Cloud Hypervisor's
// NetConfig::validate checks (num_queues >= 2 and == 2 x the fds) plus what
// it silently assumes (every fd is a tap opened with IFF_VNET_HDR), answers
// 200 {"id","bdf"} and, like the real VMM, keeps the fds until
// PUT /api/v1/vm.remove-device for that id (answered 204). Errors come back
// as Cloud Hypervisor sends them: a JSON array of messages.
//
// Every request is printed on stdout as one JSON line, so a test sees exactly
// what podtap sent: {"event":"request", method, target, headers, body, fds,
// taps: [{name, flags, vnetHdr, multiQueue, present}], status, response}.
// "present" says whether a link of that name exists in this namespace at the
// time. A remove-device line also has "released": the taps of the fds it
// let go, seen just before closing them. The first line is
// {"event":"listening"}.
//
// FAKE_CH_REJECT=<message> makes vm.add-net fail with HTTP 500 and that
// message, after the checks, to test podtap's error path.

import { createServer, type Socket } from 'node:net';
import {
  IFF_MULTI_QUEUE,
  IFF_VNET_HDR,
  closeAllQuietly,
  ifNameToIndex,
  recvFds,
  socketFdOf,
  tapInfo,
} from '../../src/sys/native.ts';

interface Request {
  method: string;
  target: string;
  headers: Record<string, string>;
  body: string;
  fds: number[];
}

interface TapSeen {
  name: string;
  flags: number;
  vnetHdr: boolean;
  multiQueue: boolean;
  present: boolean;
}

const sockPath = process.argv[2];
if (!sockPath) {
  process.stderr.write('usage: fake-ch.ts SOCKET\n');
  process.exit(2);
}
const reject = process.env.FAKE_CH_REJECT;
// Devices the "VM" has, with the fds it holds for them.
const devices = new Map<string, number[]>();
let slot = 5;

function readRequest(fd: number): Request {
  let raw = Buffer.alloc(0);
  const fds: number[] = [];
  for (;;) {
    const r = recvFds(fd, 1024, 253, { timeoutMs: 5000 });
    fds.push(...r.fds);
    if (r.data.length === 0) break;
    raw = Buffer.concat([raw, r.data]);
    const end = raw.indexOf('\r\n\r\n');
    if (end < 0) continue;
    const head = raw.toString('latin1', 0, end).split('\r\n');
    const headers: Record<string, string> = {};
    for (const l of head.slice(1)) {
      const i = l.indexOf(':');
      if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = Number(headers['content-length'] ?? 0);
    if (raw.length >= end + 4 + len) {
      const [method = '', target = ''] = (head[0] ?? '').split(' ');
      return { method, target, headers, body: raw.toString('utf8', end + 4, end + 4 + len), fds };
    }
  }
  return { method: '', target: '', headers: {}, body: '', fds };
}

function describeTaps(fds: number[]): (TapSeen | null)[] {
  return fds.map((fd) => {
    try {
      const { name, flags } = tapInfo(fd);
      return { name, flags, vnetHdr: (flags & IFF_VNET_HDR) !== 0, multiQueue: (flags & IFF_MULTI_QUEUE) !== 0, present: ifNameToIndex(name) > 0 };
    } catch {
      return null;
    }
  });
}

// The HTTP answer, and for remove-device the taps whose fds were let go
// (looked at just before closing them: does the tap still exist?).
type Answer = [status: number, body?: unknown, released?: (TapSeen | null)[]];

function addNet(req: Request, cfg: Record<string, unknown>, taps: (TapSeen | null)[]): Answer {
  const err = (...m: string[]): Answer => [400, ['Error from API', 'The network device could not be added to the VM', ...m]];
  const numQueues = typeof cfg.num_queues === 'number' ? cfg.num_queues : 2;
  if (req.fds.length === 0) return [500, ['fake: no fds came with the request; the real Cloud Hypervisor would have created a tap of its own']];
  if (numQueues < 2) return err('Failed to validate config', `Number of queues (${numQueues}) to virtio_net should be higher than 2`);
  if (numQueues !== 2 * req.fds.length)
    return err('Failed to validate config', `Number of queues (${numQueues}) to virtio_net does not match the number of FDs (${2 * req.fds.length})`);
  for (const t of taps) {
    if (!t) return [500, ['fake: an fd is not a tap']];
    if (!t.vnetHdr) return [500, [`fake: tap ${t.name} lacks IFF_VNET_HDR`]];
  }
  if (typeof cfg.id !== 'string') return [500, ['fake: NetConfig without id']];
  if (devices.has(cfg.id)) return err('Failed to validate config', `Identifier ${cfg.id} is not unique`);
  if (reject) return [500, ['Error from API', 'The network device could not be added to the VM', reject]];
  devices.set(cfg.id, req.fds);
  return [200, { id: cfg.id, bdf: `0000:00:${(slot++).toString(16).padStart(2, '0')}.0` }];
}

function handle(req: Request, taps: (TapSeen | null)[]): Answer {
  if (req.method !== 'PUT') return [400, ['Bad Request']];
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(req.body) as Record<string, unknown>;
  } catch {
    return [400, ['Failed to deserialize JSON']];
  }
  if (req.target === '/api/v1/vm.add-net') return addNet(req, cfg, taps);
  if (req.target === '/api/v1/vm.remove-device') {
    const fds = devices.get(String(cfg.id));
    if (!fds) return [404, ['Error from API', 'The device could not be removed from the VM', `No device with id ${String(cfg.id)}`]];
    devices.delete(String(cfg.id));
    const released = describeTaps(fds);
    closeAllQuietly(fds);
    return [204, undefined, released];
  }
  return [404, ['Not Found']];
}

function respond(conn: Socket, status: number, body: unknown): void {
  const reason = ({ 200: 'OK', 204: 'No Content', 400: 'Bad Request', 404: 'Not Found', 500: 'Internal Server Error' } as Record<number, string>)[status];
  let out = `HTTP/1.1 ${status} ${reason}\r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n`;
  if (body !== undefined) {
    const text = JSON.stringify(body);
    out += `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`;
  } else out += '\r\n';
  conn.end(out);
}

const server = createServer({ pauseOnConnect: true }, (conn) => {
  // Never resumed: Node must not read from it, or the fds would be lost.
  const req = readRequest(socketFdOf(conn));
  const taps = describeTaps(req.fds);
  const [status, body, released] = handle(req, taps);
  const kept = status === 200 && req.target === '/api/v1/vm.add-net';
  if (!kept) closeAllQuietly(req.fds);
  let parsed: unknown = req.body;
  try {
    parsed = JSON.parse(req.body);
  } catch {
    // keep the raw text
  }
  process.stdout.write(
    `${JSON.stringify({ event: 'request', method: req.method, target: req.target, headers: req.headers, body: parsed, fds: req.fds.length, taps, ...(released ? { released } : {}), status, response: body ?? null })}\n`,
  );
  respond(conn, status, body);
});

server.listen(sockPath, () => process.stdout.write(`${JSON.stringify({ event: 'listening', socket: sockPath, pid: process.pid })}\n`));
const stop = (): void => {
  server.close();
  for (const fds of devices.values()) closeAllQuietly(fds);
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
