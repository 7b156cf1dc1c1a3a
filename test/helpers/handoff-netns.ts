// Throwaway network namespaces for the native/handoff tests. Every namespace
// made here is deleted by the test's own cleanup, and again on process exit
// as a backstop, so a failing test leaves nothing behind in `ip netns list`.

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLONE_NEWNET, setns } from '../../src/sys/native.ts';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const NODE = process.execPath;

const live = new Set<string>();

process.on('exit', () => {
  for (const name of live) spawnSync('ip', ['netns', 'del', name]);
});

export function createNetns(prefix: string): string {
  const name = `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', name]);
  live.add(name);
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

export function deleteNetns(name: string): void {
  spawnSync('ip', ['netns', 'del', name]);
  live.delete(name);
}

// Runs fn with the calling (main JS) thread inside the namespace, so fds it
// opens (taps, sockets) belong there, then switches back before returning.
// fn must be synchronous: the thread must not yield while outside its home.
export function inNetns<T>(name: string, fn: () => T): T {
  const home = openSync('/proc/thread-self/ns/net', 'r');
  let target: number | undefined;
  try {
    target = openSync(`/run/netns/${name}`, 'r');
    setns(target, CLONE_NEWNET);
    try {
      return fn();
    } finally {
      setns(home, CLONE_NEWNET);
    }
  } finally {
    if (target !== undefined) closeSync(target);
    closeSync(home);
  }
}

export function ipIn(ns: string, args: string[]): string {
  return execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });
}

export interface IpLink {
  ifname: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

export function linkIn(ns: string, name: string): IpLink | undefined {
  const r = spawnSync('ip', ['-n', ns, '-d', '-j', 'link', 'show', 'dev', name], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  const links = JSON.parse(r.stdout) as IpLink[];
  return links[0];
}
