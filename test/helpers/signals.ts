// Aiming a signal at a moment of podtap's start-up. Start-up time depends on
// the machine's load, so fixed delays after spawn mostly land before podtap
// runs any code of its own. Instead, tests watch the state dir: podtap
// installs its SIGTERM/SIGINT handlers, then takes the lock file (so a lock
// means "handlers installed, nothing changed yet"), then writes the journal
// right before the first change (so a journal means "changes under way").
//
// (/proc/PID/status SigCgt cannot tell: Node itself catches SIGTERM and
// SIGINT from its very start, to restore the terminal before dying.)

import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** Polls about every millisecond until path exists; false if `gone()` or the time runs out first. */
export async function waitForPath(path: string, gone: () => boolean, timeoutMs = 20_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (existsSync(path)) return true;
    if (gone()) return false;
    await sleep(1);
  }
  return false;
}

export const SIGNAL_EXIT: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGKILL: 137 };
