// addNet/removeDevice against a stand-in for Cloud Hypervisor's API server.
//
// The real Cloud Hypervisor can't be installed here, so FAKE_CH below plays
// it: a separate process listening on a Unix socket that reads the request
// the way micro_http does (recvmsg in chunks of at most 1 KiB, collecting
// SCM_RIGHTS fds from every chunk until the request is complete), applies
// the checks of NetConfig::validate (num_queues == 2 x fds, >= 2), and
// answers like Cloud Hypervisor: 200 + PciDeviceInfo, 204 for a cold add,
// errors as a JSON array of messages. It is stricter than Cloud Hypervisor
// in one respect: it insists every fd is a tap with IFF_VNET_HDR, which the
// real one silently assumes.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudHypervisorError, addNet, parseHttpResponse, removeDevice } from '../../src/handoff/cloud-hypervisor.ts';
import { IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, closeAllQuietly, openTap } from '../../src/sys/native.ts';
import { NODE, REPO, createNetns, deleteNetns, inNetns } from '../helpers/handoff-netns.ts';

const NATIVE_URL = pathToFileURL(path.join(REPO, 'src/sys/native.ts')).href;

const FAKE_CH = `
import { createServer } from 'node:net';
import { socketFdOf, recvFds, tapInfo, closeAllQuietly } from ${JSON.stringify(NATIVE_URL)};
const IFF_VNET_HDR = 0x4000;
const sockPath = process.argv[1];
const nets = new Set();
let slot = 5;

function readRequest(fd) {
  let raw = Buffer.alloc(0);
  const fds = [];
  for (;;) {
    const r = recvFds(fd, 1024, 253, { timeoutMs: 5000 });
    fds.push(...r.fds);
    if (r.data.length === 0) break;
    raw = Buffer.concat([raw, r.data]);
    const end = raw.indexOf('\\r\\n\\r\\n');
    if (end < 0) continue;
    const head = raw.toString('latin1', 0, end).split('\\r\\n');
    const headers = {};
    for (const l of head.slice(1)) { const i = l.indexOf(':'); headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim(); }
    const len = Number(headers['content-length'] ?? 0);
    if (raw.length >= end + 4 + len) {
      const [method, target] = head[0].split(' ');
      return { method, target, headers, body: raw.toString('utf8', end + 4, end + 4 + len), fds };
    }
  }
  return { method: '', target: '', headers: {}, body: '', fds };
}

function respond(conn, status, body) {
  const reason = { 200: 'OK', 204: 'No Content', 400: 'Bad Request', 404: 'Not Found', 409: 'Conflict', 500: 'Internal Server Error' }[status];
  let out = 'HTTP/1.1 ' + status + ' ' + reason + '\\r\\nServer: Cloud Hypervisor API\\r\\nConnection: keep-alive\\r\\n';
  if (body !== undefined) {
    const text = JSON.stringify(body);
    out += 'Content-Type: application/json\\r\\nContent-Length: ' + Buffer.byteLength(text) + '\\r\\n\\r\\n' + text;
  } else out += '\\r\\n';
  conn.end(out);
}

function handle(req) {
  const addErr = (...m) => ['Error from API', 'The network device could not be added to the VM', ...m];
  if (req.method !== 'PUT') return [400, ['Bad Request']];
  let cfg;
  try { cfg = JSON.parse(req.body); } catch { return [400, ['Failed to deserialize JSON']]; }
  if (req.target === '/api/v1/vm.add-net') {
    const numQueues = cfg.num_queues ?? 2;
    if (req.fds.length === 0) return [500, addErr('fake: no fds came with the request; the real Cloud Hypervisor would have created a tap of its own')];
    if (numQueues < 2) return [400, addErr('Failed to validate config', 'Number of queues (' + numQueues + ') to virtio_net should be higher than 2')];
    if (numQueues !== 2 * req.fds.length) return [400, addErr('Failed to validate config', 'Number of queues (' + numQueues + ') to virtio_net does not match the number of FDs (' + 2 * req.fds.length + ')')];
    for (const fd of req.fds) {
      let info;
      try { info = tapInfo(fd); } catch (e) { return [500, addErr('fake: fd is not a tap: ' + e.message)]; }
      if (!(info.flags & IFF_VNET_HDR)) return [500, addErr('fake: tap ' + info.name + ' lacks IFF_VNET_HDR')];
    }
    if (nets.has(cfg.id)) return [409, addErr('Failed to validate config', 'Identifier ' + cfg.id + ' is not unique')];
    nets.add(cfg.id);
    if (String(cfg.id).startsWith('cold')) return [204];
    return [200, { id: cfg.id, bdf: '0000:00:0' + (slot++).toString(16) + '.0' }];
  }
  if (req.target === '/api/v1/vm.remove-device') {
    if (!nets.delete(cfg.id)) return [404, ['Error from API', 'The device could not be removed from the VM', 'No device with id ' + cfg.id]];
    return [204];
  }
  return [404, ['Not Found']];
}

const server = createServer({ pauseOnConnect: true }, (conn) => {
  // The connection is never resumed: Node must not read, or the fds would be lost.
  const req = readRequest(socketFdOf(conn));
  const taps = [];
  for (const fd of req.fds) { try { taps.push(tapInfo(fd)); } catch { taps.push(null); } }
  const [status, body] = handle(req);
  closeAllQuietly(req.fds);
  console.log(JSON.stringify({ method: req.method, target: req.target, headers: req.headers, body: req.body, taps, status }));
  respond(conn, status, body);
});
server.listen(sockPath, () => console.log(JSON.stringify({ ready: true })));
`;

interface Seen {
  method: string;
  target: string;
  headers: Record<string, string>;
  body: string;
  taps: ({ name: string; flags: number } | null)[];
  status: number;
}

let ns: string;
let dir: string;
let apiSocket: string;
let fake: ChildProcess | undefined;
const seen: Seen[] = [];
const opened: number[] = [];

function tap(name: string, queues: number, vnetHdr = true): number[] {
  const fds = inNetns(ns, () => openTap(name, { queues, vnetHdr, multiQueue: queues > 1 }));
  opened.push(...fds);
  return fds;
}

beforeAll(async () => {
  ns = createNetns('ph-ch');
  dir = mkdtempSync(path.join(tmpdir(), 'ph-ch-'));
  apiSocket = path.join(dir, 'ch.sock');
  fake = spawn(NODE, ['--input-type=module', '-e', FAKE_CH, apiSocket], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = new Promise<void>((resolve) => {
    createInterface({ input: fake!.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as Seen | { ready: true };
      if ('ready' in msg) resolve();
      else seen.push(msg);
    });
  });
  await ready;
});

afterAll(async () => {
  try {
    if (fake?.pid !== undefined && fake.exitCode === null && fake.signalCode === null) {
      const gone = new Promise((resolve) => fake!.once('exit', resolve));
      process.kill(fake.pid, 'SIGKILL');
      await gone;
    }
  } finally {
    closeAllQuietly(opened);
    deleteNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  }
});

async function lastSeen(): Promise<Seen> {
  // The fake logs before it answers, but stdout may trail the response.
  for (let i = 0; i < 50 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  const s = seen.shift();
  if (!s) throw new Error('the fake Cloud Hypervisor saw no request');
  return s;
}

describe('Cloud Hypervisor vm.add-net', () => {
  it('sends the fds with the request and a NetConfig without fds', async () => {
    const fds = tap('phch0', 2);
    const info = await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:05', mtu: 1400, id: 'net0' });
    expect(info).toEqual({ id: 'net0', bdf: '0000:00:05.0' });

    const req = await lastSeen();
    expect(req.method).toBe('PUT');
    expect(req.target).toBe('/api/v1/vm.add-net');
    expect(req.headers['content-type']).toBe('application/json');
    expect(JSON.parse(req.body)).toEqual({ id: 'net0', mac: '02:00:0a:00:00:05', num_queues: 4, mtu: 1400 });
    expect(req.taps).toHaveLength(2);
    const want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    for (const t of req.taps) {
      expect(t?.name).toBe('phch0');
      expect(t!.flags & want).toBe(want);
    }
    expect(req.status).toBe(200);
  });

  it('sends a single queue as num_queues 2', async () => {
    const fds = tap('phch1', 1);
    await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:06', id: 'net1' });
    const req = await lastSeen();
    expect(JSON.parse(req.body)).toEqual({ id: 'net1', mac: '02:00:0a:00:00:06', num_queues: 2 });
    expect(req.taps.map((t) => t?.name)).toEqual(['phch1']);
  });

  it('returns undefined for a cold add (204)', async () => {
    const fds = tap('phch2', 1);
    expect(await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:07', id: 'cold0' })).toBeUndefined();
    await lastSeen();
  });

  it('reports a duplicate id (409) with Cloud Hypervisor\'s messages', async () => {
    const fds = tap('phch3', 1);
    const err = await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:08', id: 'net0' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloudHypervisorError);
    const e = err as CloudHypervisorError;
    expect(e.status).toBe(409);
    expect(e.messages).toContain('Identifier net0 is not unique');
    expect(e.message).toMatch(/adding NIC net0 .*HTTP 409: Error from API: .*not unique \(a device with id net0 exists already\)/);
    await lastSeen();
  });

  it('surfaces a queue/fd mismatch (400)', async () => {
    const fds = tap('phch4', 2);
    const err = (await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:09', id: 'net4', extra: { num_queues: 2 } }).catch(
      (e: unknown) => e,
    )) as CloudHypervisorError;
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/does not match the number of FDs \(4\)/);
    await lastSeen();
  });

  it('surfaces a tap without vnet_hdr as the fake\'s 500', async () => {
    const fds = tap('phch5', 1, false);
    const err = (await addNet({ apiSocket, fds, mac: '02:00:0a:00:00:0a', id: 'net5' }).catch((e: unknown) => e)) as CloudHypervisorError;
    expect(err.status).toBe(500);
    expect(err.message).toMatch(/lacks IFF_VNET_HDR/);
    await lastSeen();
  });

  it('refuses fds or tap in the body', async () => {
    await expect(addNet({ apiSocket, fds: [0], mac: '02:00:0a:00:00:0b', id: 'x', extra: { fds: [3] } })).rejects.toThrow(
      /SCM_RIGHTS/,
    );
  });
});

describe('Cloud Hypervisor vm.remove-device', () => {
  it('removes a device (204) and reports an unknown one (404)', async () => {
    await removeDevice({ apiSocket, id: 'net1' });
    const req = await lastSeen();
    expect(req.target).toBe('/api/v1/vm.remove-device');
    expect(JSON.parse(req.body)).toEqual({ id: 'net1' });
    expect(req.taps).toEqual([]);

    const err = (await removeDevice({ apiSocket, id: 'net1' }).catch((e: unknown) => e)) as CloudHypervisorError;
    expect(err.status).toBe(404);
    expect(err.message).toMatch(/removing device net1 .*HTTP 404: .*No device with id net1/);
    await lastSeen();
  });
});

describe('Cloud Hypervisor connection errors', () => {
  it('gives up on a missing socket after a bounded retry, naming it', async () => {
    const bad = path.join(dir, 'nope.sock');
    const t0 = Date.now();
    const err = (await removeDevice({ apiSocket: bad, id: 'x', timeoutMs: 500 }).catch((e: unknown) => e)) as CloudHypervisorError;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(err).toBeInstanceOf(CloudHypervisorError);
    expect(err.code).toBe('ENOENT');
    expect(err.message).toContain(`--api-socket path=${bad}`);
  });
});

describe('parseHttpResponse', () => {
  it('waits for the whole body and handles 204 without a length', () => {
    const ok = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel');
    expect(parseHttpResponse(ok, false)).toBeNull();
    expect(() => parseHttpResponse(ok, true)).toThrow(/truncated/);
    expect(parseHttpResponse(Buffer.concat([ok, Buffer.from('lo')]), false)?.body).toBe('hello');
    const none = parseHttpResponse(Buffer.from('HTTP/1.1 204 \r\nServer: Cloud Hypervisor API\r\n\r\n'), false);
    expect(none).toMatchObject({ status: 204, body: '', headers: { server: 'Cloud Hypervisor API' } });
    expect(parseHttpResponse(Buffer.from('HTTP/1.1 500 Oops\r\n\r\nplain text'), true)?.body).toBe('plain text');
    expect(() => parseHttpResponse(Buffer.from('SSH-2.0\r\n\r\n'), false)).toThrow(/not an HTTP response/);
  });
});
