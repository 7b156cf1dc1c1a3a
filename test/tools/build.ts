// Compiles every test/tools/*.c into test/tools/bin/<name> when the source
// (or this file, which holds the flags) is newer than the binary. Cheap when
// everything is up to date: a few stat calls. Safe when several test workers
// build at once: each compiles to its own temporary file and renames it into
// place, so nobody ever executes a half-written binary.
//
//   node test/tools/build.ts          # from a shell
//   await buildTools();               # from a test or helper

import { execFile } from 'node:child_process';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const TOOLS_DIR = import.meta.dirname;
export const BIN_DIR = join(TOOLS_DIR, 'bin');
/** The stand-in VMM: relays podtap's TAP queues to a TAP in a guest namespace. */
export const TAP_GUEST = join(BIN_DIR, 'tap-guest');
/** Raw frame sender and receiver. */
export const PKT = join(BIN_DIR, 'pkt');

const CFLAGS = ['-O2', '-Wall', '-Wextra', '-Werror'];

async function mtimeMs(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).mtimeMs;
  } catch {
    return undefined;
  }
}

/** Builds what is stale; returns the binaries it (re)built. */
export async function buildTools(): Promise<string[]> {
  const sources = (await readdir(TOOLS_DIR)).filter((f) => f.endsWith('.c')).sort();
  await mkdir(BIN_DIR, { recursive: true });
  const flagsChanged = (await mtimeMs(import.meta.filename)) ?? 0;
  const built: string[] = [];
  for (const source of sources) {
    const src = join(TOOLS_DIR, source);
    const out = join(BIN_DIR, source.slice(0, -2));
    const have = await mtimeMs(out);
    if (have !== undefined && have >= ((await mtimeMs(src)) ?? Infinity) && have >= flagsChanged) continue;
    const tmp = `${out}.${process.pid}.tmp`;
    try {
      await promisify(execFile)('gcc', [...CFLAGS, '-o', tmp, src]);
      await rename(tmp, out);
    } catch (e) {
      await rm(tmp, { force: true });
      const err = e as { code?: string; stderr?: string; message: string };
      if (err.code === 'ENOENT') throw new Error('test/tools: gcc is not installed (test/install.sh installs it)');
      throw new Error(`test/tools: gcc ${source} failed:\n${err.stderr ?? err.message}`);
    }
    built.push(out);
  }
  return built;
}

if (import.meta.main) {
  const built = await buildTools();
  process.stdout.write(built.length ? `built ${built.join(' ')}\n` : 'test/tools: up to date\n');
}
