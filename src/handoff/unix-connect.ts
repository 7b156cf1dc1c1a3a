// Connecting to a VMM's Unix socket (QMP, Cloud Hypervisor's API). The VMM
// may still be starting, so a missing or refusing socket is retried until a
// deadline; anything else fails at once. Callers phrase the error.

import { createConnection, type Socket } from 'node:net';

const RETRY_MS = 100;
const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

function connectOnce(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ path });
    const onError = (err: Error): void => {
      sock.destroy();
      reject(err);
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.off('error', onError);
      resolve(sock);
    });
  });
}

/** `fail` turns the last errno code (and whether it was retried) into the error to throw. */
export async function connectRetrying(path: string, deadline: number, fail: (code: string | undefined, err: unknown, retried: boolean) => Error): Promise<Socket> {
  for (;;) {
    try {
      return await connectOnce(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retryable = code !== undefined && RETRYABLE.has(code);
      if (!retryable || Date.now() + RETRY_MS > deadline) throw fail(code, err, retryable);
      await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  }
}
