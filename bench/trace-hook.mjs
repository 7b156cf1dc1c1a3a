// Preloaded into podtap for the profile only (NODE_OPTIONS=--import=...):
// records, against the process's own clock, when each module is loaded,
// each child process's spawn and exit, fsyncs, the first read of
// /proc/self/status (setUp's preflight: "setUp starts"), the ready line's
// write, SIGTERM and exit. Written as JSON to
// $PODTAP_BENCH_TRACE at exit. Plain JavaScript so that loading it does not
// start Node's TypeScript loader early and skew what it measures.

import cp from 'node:child_process';
import fs from 'node:fs';
import module from 'node:module';
import { performance } from 'node:perf_hooks';

const out = process.env.PODTAP_BENCH_TRACE;
const now = () => performance.now();
const events = [];
const hookAt = now();

if (out) {
  if (typeof module.registerHooks === 'function') {
    module.registerHooks({
      load(url, context, nextLoad) {
        const s = now();
        const r = nextLoad(url, context);
        if (url.startsWith('file:')) events.push({ k: 'load', url, s, e: now() });
        return r;
      },
    });
  }

  const origSpawn = cp.spawn;
  cp.spawn = function spawn(file, args, opts) {
    const s = now();
    const child = origSpawn.apply(this, arguments);
    const ev = { k: 'spawn', cmd: [file, ...(Array.isArray(args) ? args : [])].join(' ').slice(0, 160), s, spawned: now() };
    events.push(ev);
    child.once('exit', () => (ev.exit = now()));
    return child;
  };

  const origFsync = fs.fsyncSync;
  fs.fsyncSync = function fsyncSync(fd) {
    const s = now();
    try {
      return origFsync.apply(this, arguments);
    } finally {
      events.push({ k: 'fsync', s, e: now() });
    }
  };
  const origWrite = fs.writeFileSync;
  const origRead = fs.readFileSync;
  let sawStatus = false;
  fs.readFileSync = function readFileSync(path) {
    if (!sawStatus && path === '/proc/self/status') {
      sawStatus = true;
      events.push({ k: 'setup-start', s: now() });
    }
    return origRead.apply(this, arguments);
  };
  module.syncBuiltinESMExports();

  const origStdout = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk, ...rest) => {
    if (typeof chunk === 'string' && chunk.startsWith('{"event":"ready"')) events.push({ k: 'ready', s: now() });
    return origStdout(chunk, ...rest);
  };

  // Teardown markers. A SIGTERM listener here is harmless: podtap installs
  // its own, and with any listener Node does not die of the signal.
  process.once('SIGTERM', () => events.push({ k: 'sigterm', s: now() }));

  process.on('exit', () => {
    events.push({ k: 'exit', s: now() });
    try {
      origWrite(out, JSON.stringify({ timeOrigin: performance.timeOrigin, hookAt, events }));
    } catch {
      // the profile is best effort
    }
  });
}
