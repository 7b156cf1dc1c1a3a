// Running iproute2 and nft. A few lines over child_process rather than execa:
// importing execa costs 100-130 ms on our reference machine, four times
// Node's whole start-up, and podtap sits on every VM pod's start-up path.

import { spawn } from 'node:child_process';

export interface Ran {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Set when the program could not be started at all (ENOENT: not installed). */
  spawnError?: string;
}

export function run(file: string, args: string[], input?: string): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    let spawnError: string | undefined;
    child.on('error', (e: NodeJS.ErrnoException) => (spawnError = e.code ?? e.message));
    child.on('close', (code, signal) =>
      resolve({
        exitCode: code ?? (signal ? 128 : 127),
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        ...(spawnError ? { spawnError } : {}),
      }),
    );
    if (input !== undefined) {
      child.stdin!.on('error', () => {}); // the program may exit without reading
      child.stdin!.end(input);
    }
  });
}
