// Hot-plugging podtap's tap into a running Cloud Hypervisor through its REST
// API socket (--api-socket).
//
// What Cloud Hypervisor expects, from its source (vmm/src/api/http/
// http_endpoint.rs, vmm/src/config.rs NetConfig::validate, net_util tap.rs)
// and its micro_http server:
//   - the tap fds travel as SCM_RIGHTS on the API connection; micro_http
//     collects fds from every recvmsg until the request is complete and
//     attaches them to that request, so podtap sends them with the first
//     bytes of the request;
//   - fd numbers in the JSON body are ignored (replaced by -1 and warned
//     about), so the body lists none;
//   - num_queues counts queues, not pairs, and must equal 2 x the number of
//     fds; it also may not exceed 2 x the VM's boot vCPUs;
//   - Cloud Hypervisor does not check IFF_VNET_HDR on passed fds (its
//     TUNSETIFF on them fails with EEXIST, which it ignores) but always
//     frames packets with a virtio-net header, so the tap must have been
//     opened with vnetHdr: true; it also sets O_NONBLOCK on them, which is
//     shared with podtap's copies;
//   - success is 200 with PciDeviceInfo {"id","bdf"} (hot-plug) or 204
//     (cold-add before boot); errors carry a JSON array of messages (older
//     releases: plain text).

import type { Socket } from 'node:net';
import { connectRetrying as connectUnix } from './unix-connect.ts';
import { sendFds, socketFdOf } from '../sys/native.ts';

export class CloudHypervisorError extends Error {
  readonly status: number | undefined; // HTTP status, when there was a response
  readonly messages: string[];
  readonly code: string | undefined; // errno code for connection failures

  constructor(message: string, opts: { status?: number; messages?: string[]; code?: string } = {}) {
    super(message);
    this.name = 'CloudHypervisorError';
    this.status = opts.status;
    this.messages = opts.messages ?? [];
    this.code = opts.code;
  }
}

export interface AddNetOptions {
  apiSocket: string;
  fds: readonly number[]; // one per queue pair, opened with vnetHdr (and multiQueue when > 1)
  mac: string;
  id: string;
  mtu?: number;
  // Extra NetConfig fields (queue_size, host_mac, offload_tso, ...).
  extra?: Record<string, unknown>;
  timeoutMs?: number; // connect retries plus the request; default 10 s
}

export interface PciDeviceInfo {
  id: string;
  bdf: string;
}

export interface HttpResponse {
  status: number;
  reason: string;
  headers: Record<string, string>;
  body: string;
}


function connectRetrying(path: string, deadline: number, what: string): Promise<Socket> {
  return connectUnix(path, deadline, (code, err) => {
    const hint =
      code === 'ENOENT'
        ? `no socket at ${path}: is Cloud Hypervisor running with --api-socket path=${path}?`
        : code === 'ECONNREFUSED'
          ? `nothing listens on ${path}: Cloud Hypervisor exited`
          : code === 'EACCES' || code === 'EPERM'
            ? `no permission to connect to ${path}`
            : `cannot connect to ${path}`;
    return new CloudHypervisorError(`${what}: ${hint} (${code ?? String(err)})`, { code });
  });
}

// Parses one HTTP/1.1 response from `raw`; null while it's incomplete.
export function parseHttpResponse(raw: Buffer, ended: boolean): HttpResponse | null {
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd < 0) {
    if (ended) throw new Error(`truncated HTTP response: ${JSON.stringify(raw.toString('latin1').slice(0, 200))}`);
    return null;
  }
  const head = raw.toString('latin1', 0, headEnd).split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(head[0] ?? '');
  if (!m) throw new Error(`not an HTTP response: ${JSON.stringify(head[0])}`);
  const headers: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const status = Number(m[1]);
  const bodyStart = headEnd + 4;
  const cl = headers['content-length'];
  let bodyEnd: number;
  if (cl !== undefined) {
    bodyEnd = bodyStart + Number(cl);
    if (raw.length < bodyEnd) {
      if (ended) throw new Error(`truncated HTTP body: got ${raw.length - bodyStart} of ${cl} bytes`);
      return null;
    }
  } else if (status === 204 || status === 304 || (status >= 100 && status < 200)) {
    bodyEnd = bodyStart;
  } else {
    // No length: the body runs to the end of the connection.
    if (!ended) return null;
    bodyEnd = raw.length;
  }
  return { status, reason: m[2] ?? '', headers, body: raw.toString('utf8', bodyStart, bodyEnd) };
}

// One request on a fresh connection, fds attached to its first bytes.
export async function chRequest(
  apiSocket: string,
  method: string,
  endpoint: string,
  body: unknown,
  opts: { fds?: readonly number[]; timeoutMs?: number; what: string },
): Promise<HttpResponse> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  const sock = await connectRetrying(apiSocket, deadline, opts.what);
  try {
    const payload = body === undefined ? '' : JSON.stringify(body);
    const head =
      `${method} /api/v1/${endpoint} HTTP/1.1\r\n` +
      'Host: localhost\r\n' +
      'Accept: application/json\r\n' +
      (body === undefined ? '' : 'Content-Type: application/json\r\n') +
      `Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n`;
    const response = new Promise<HttpResponse>((resolve, reject) => {
      let raw = Buffer.alloc(0);
      const left = Math.max(1000, deadline - Date.now());
      const timer = setTimeout(
        () => reject(new CloudHypervisorError(`${opts.what}: no answer from ${apiSocket} within ${timeoutMs} ms`, { code: 'ETIMEDOUT' })),
        left,
      );
      const settle = (ended: boolean): void => {
        try {
          const r = parseHttpResponse(raw, ended);
          if (r) {
            clearTimeout(timer);
            resolve(r);
          }
        } catch (err) {
          clearTimeout(timer);
          reject(new CloudHypervisorError(`${opts.what}: ${(err as Error).message}`));
        }
      };
      sock.on('data', (chunk: Buffer) => {
        raw = Buffer.concat([raw, chunk]);
        settle(false);
      });
      sock.on('end', () => settle(true));
      sock.on('close', () => settle(true));
      sock.on('error', (err) => {
        clearTimeout(timer);
        reject(new CloudHypervisorError(`${opts.what}: connection to ${apiSocket} failed: ${err.message}`, {
          code: (err as NodeJS.ErrnoException).code,
        }));
      });
    });
    sendFds(socketFdOf(sock), Buffer.from(head + payload), opts.fds ?? []);
    return await response;
  } finally {
    sock.destroy();
  }
}

function errorMessages(body: string): string[] {
  const text = body.trim();
  if (!text) return [];
  try {
    const parsed = JSON.parse(text) as unknown;
    if (Array.isArray(parsed)) return parsed.map(String);
    if (typeof parsed === 'string') return [parsed];
  } catch {
    // plain text from older releases
  }
  return [text];
}

function failure(what: string, r: HttpResponse, hint?: string): CloudHypervisorError {
  const messages = errorMessages(r.body);
  const detail = messages.length > 0 ? messages.join(': ') : r.reason || 'no details';
  return new CloudHypervisorError(`${what}: Cloud Hypervisor answered HTTP ${r.status}: ${detail}${hint ? ` (${hint})` : ''}`, {
    status: r.status,
    messages,
  });
}

// PUT /api/v1/vm.add-net with the tap fds. Resolves with the new device's
// PCI address when hot-plugged, or undefined when Cloud Hypervisor
// cold-added it (VM created but not booted yet, HTTP 204).
export async function addNet(opts: AddNetOptions): Promise<PciDeviceInfo | undefined> {
  const { fds, id, mac } = opts;
  if (fds.length < 1) throw new RangeError('addNet needs at least one tap fd');
  const what = `adding NIC ${id} to Cloud Hypervisor (${fds.length} queue pair${fds.length > 1 ? 's' : ''})`;
  const body: Record<string, unknown> = { id, mac, num_queues: 2 * fds.length };
  if (opts.mtu !== undefined) body.mtu = opts.mtu;
  Object.assign(body, opts.extra ?? {});
  if ('fds' in body || 'tap' in body) {
    throw new RangeError('addNet: fds travel as SCM_RIGHTS and the tap is given by them; do not set "fds" or "tap" in extra');
  }
  const r = await chRequest(opts.apiSocket, 'PUT', 'vm.add-net', body, { fds, timeoutMs: opts.timeoutMs, what });
  if (r.status === 204) return undefined;
  if (r.status === 200) {
    try {
      const info = JSON.parse(r.body) as PciDeviceInfo;
      return { id: String(info.id), bdf: String(info.bdf) };
    } catch {
      throw new CloudHypervisorError(`${what}: unexpected success body ${JSON.stringify(r.body.slice(0, 200))}`, { status: 200 });
    }
  }
  const hint =
    r.status === 404
      ? 'is the VM created? (vm.create before vm.add-net)'
      : r.status === 409
        ? `a device with id ${id} exists already`
        : undefined;
  throw failure(what, r, hint);
}

// PUT /api/v1/vm.remove-device. Cloud Hypervisor ejects the PCI device
// (ACPI) and closes its tap fds once the guest has let go.
export async function removeDevice(opts: { apiSocket: string; id: string; timeoutMs?: number }): Promise<void> {
  const what = `removing device ${opts.id} from Cloud Hypervisor`;
  const r = await chRequest(opts.apiSocket, 'PUT', 'vm.remove-device', { id: opts.id }, { timeoutMs: opts.timeoutMs, what });
  if (r.status === 204 || r.status === 200) return;
  throw failure(what, r, r.status === 404 ? 'no such device, or the VM is not created' : undefined);
}
