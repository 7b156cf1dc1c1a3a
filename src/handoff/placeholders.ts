// Placeholders in the VMM's argv, filled in once the tap fds have their
// final numbers in the VMM's process.
//
// The rule, chosen so that JSON and other brace-heavy arguments pass through
// untouched:
//   - `{word}` where word is [a-z_]+ is a placeholder; an unknown word is an
//     error (a typo must not reach the VMM as a literal).
//   - `{{` is a literal `{`; write `{{fd}` to get the text `{fd}`.
//   - every other `{` or `}` is literal: `{"id":1}`, `{}`, `{Fd}`, `${X}`
//     stay as they are.

export const PLACEHOLDERS = {
  fd: 'first queue fd number, as the VMM sees it',
  fds: "all queue fds joined by ':' (QEMU -netdev tap,fds=)",
  fds_csv: "all queue fds joined by ',' (Cloud Hypervisor --net fd=[...])",
  mac: 'guest MAC address',
  mtu: 'MTU of the pod link',
  tap: 'tap device name',
  bridge: 'bridge device name',
  queues: 'number of queue pairs (= number of fds)',
  vectors: 'MSI-X vectors for virtio-net: 2 x queues + 2',
  ch_queues: 'Cloud Hypervisor num_queues: 2 x queues (it counts queues, not pairs)',
} as const;

export type Placeholder = keyof typeof PLACEHOLDERS;

export interface PlaceholderInput {
  fds: readonly number[];
  mac?: string;
  mtu?: number;
  tap?: string;
  bridge?: string;
}

export class PlaceholderError extends Error {
  readonly placeholder: string;
  readonly argIndex: number;

  constructor(placeholder: string, argIndex: number, message: string) {
    super(message);
    this.name = 'PlaceholderError';
    this.placeholder = placeholder;
    this.argIndex = argIndex;
  }
}

const TOKEN = /\{\{|\{([a-z_]+)\}/g;

function isPlaceholder(word: string): word is Placeholder {
  return Object.hasOwn(PLACEHOLDERS, word);
}

function knownList(): string {
  return Object.keys(PLACEHOLDERS)
    .map((k) => `{${k}}`)
    .join(', ');
}

export function placeholderValues(input: PlaceholderInput): Partial<Record<Placeholder, string>> {
  const n = input.fds.length;
  const values: Partial<Record<Placeholder, string>> = {};
  if (n > 0) {
    values.fd = String(input.fds[0]);
    values.fds = input.fds.join(':');
    values.fds_csv = input.fds.join(',');
    values.queues = String(n);
    values.vectors = String(2 * n + 2);
    values.ch_queues = String(2 * n);
  }
  if (input.mac !== undefined) values.mac = input.mac;
  if (input.mtu !== undefined) values.mtu = String(input.mtu);
  if (input.tap !== undefined) values.tap = input.tap;
  if (input.bridge !== undefined) values.bridge = input.bridge;
  return values;
}

// The placeholder words used in argv, checked against the known set, so a
// caller can reject a bad command line before doing any network work.
export function usedPlaceholders(argv: readonly string[]): Placeholder[] {
  const used = new Set<Placeholder>();
  argv.forEach((arg, i) => {
    for (const m of arg.matchAll(TOKEN)) {
      const word = m[1];
      if (word === undefined) continue;
      if (!isPlaceholder(word)) throw unknown(word, i, arg);
      used.add(word);
    }
  });
  return [...used];
}

function unknown(word: string, index: number, arg: string): PlaceholderError {
  return new PlaceholderError(
    word,
    index,
    `unknown placeholder {${word}} in VMM argument ${index} (${JSON.stringify(arg)}); ` +
      `known: ${knownList()}; write {{ for a literal {`,
  );
}

export function substituteArg(arg: string, values: Partial<Record<Placeholder, string>>, index = 0): string {
  return arg.replace(TOKEN, (_whole: string, word: string | undefined) => {
    if (word === undefined) return '{';
    if (!isPlaceholder(word)) throw unknown(word, index, arg);
    const value = values[word];
    if (value === undefined) {
      throw new PlaceholderError(
        word,
        index,
        `placeholder {${word}} in VMM argument ${index} has no value here (${PLACEHOLDERS[word]} is not known)`,
      );
    }
    return value;
  });
}

export function substituteArgv(argv: readonly string[], input: PlaceholderInput): string[] {
  const values = placeholderValues(input);
  return argv.map((arg, i) => substituteArg(arg, values, i));
}
