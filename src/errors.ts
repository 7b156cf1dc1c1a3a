// Every failure a user can meet is a PodtapError: one sentence naming the
// problem, one naming the fix, and an exit status. The CLI prints both and
// exits; nothing else in podtap decides how errors look.

export type ErrorCode =
  | 'usage' // malformed options or arguments
  | 'environment' // missing device, capability, tool, unwritable state dir
  | 'discovery' // the namespace isn't a pod shape podtap can take over
  | 'conflict' // names taken, another podtap, a journal from another run
  | 'journal' // the state file is corrupt or foreign
  | 'apply' // a kernel operation failed while setting up
  | 'teardown' // some of the restore failed
  | 'handoff' // the VMM side (QMP, Cloud Hypervisor, fd socket) failed
  | 'internal';

const EXIT: Record<ErrorCode, number> = {
  usage: 2,
  environment: 3,
  discovery: 4,
  conflict: 5,
  journal: 6,
  apply: 7,
  teardown: 8,
  handoff: 9,
  internal: 70,
};

export class PodtapError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  override readonly cause: unknown;

  constructor(code: ErrorCode, message: string, hint?: string, cause?: unknown) {
    super(message);
    this.name = 'PodtapError';
    this.code = code;
    this.hint = hint;
    this.cause = cause;
  }

  get exitCode(): number {
    return EXIT[this.code];
  }

  /** The text a user sees: problem, then the fix. */
  describe(): string {
    return this.hint ? `${this.message}\n  fix: ${this.hint}` : this.message;
  }
}

export function usage(message: string, hint?: string): PodtapError {
  return new PodtapError('usage', message, hint ?? 'see `podtap --help`');
}
