// Small pieces the e2e files share (not a test file: vitest only collects
// *.test.ts). Everything that builds pods or runs podtap lives in
// test/helpers; this is only what reading a guest run needs.

import type { ReadyLine } from '../helpers/podtap.ts';
import type { Datapath } from '../helpers/pods.ts';

/**
 * The ready line `podtap run` printed. Its stdout is the VMM's too, so the
 * line sits in the guest's captured console; undefined if podtap never got
 * that far.
 */
export function readyIn(console: string): ReadyLine | undefined {
  const line = console.split('\n').find((l) => l.startsWith('{"event":"ready"'));
  return line ? (JSON.parse(line) as ReadyLine) : undefined;
}

/**
 * podtap's options for a data path: nothing for redirect, which must be
 * what podtap picks by itself (the ready line then proves the default), and
 * `--datapath bridge` for the other.
 */
export function datapathArgs(datapath: Datapath): string[] {
  return datapath === 'redirect' ? [] : ['--datapath', 'bridge'];
}
