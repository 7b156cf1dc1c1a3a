// Placeholders in the VMM's argv, filled in once the tap fds have their
// final numbers in the VMM's process.
//
// The rule, chosen so that JSON and other brace-heavy arguments pass through
// untouched:
//   - `{word}` where word is [a-z_]+ is a placeholder for NIC 0, and
//     `{word:N}` / `{word:IFNAME}` the same for NIC N (0-based) or for the NIC
//     of pod interface IFNAME; an unknown word, index or name is an error (a
//     typo must not reach the VMM as a literal).
//   - `{{` is a literal `{`; write `{{fd}` to get the text `{fd}`.
//   - every other `{` or `}` is literal: `{"id":1}`, `{}`, `{Fd}`, `${X}`
//     stay as they are.

export const PLACEHOLDERS = {
  fd: 'first queue fd number, as the VMM sees it',
  fds: "all queue fds joined by ':' (QEMU -netdev tap,fds=)",
  fds_csv: "all queue fds joined by ',' (Cloud Hypervisor --net fd=[...])",
  mac: 'guest MAC address',
  mtu: 'MTU of the pod interface',
  tap: 'tap device name',
  bridge: 'bridge device name (bridge data path only)',
  interface: 'the pod interface the NIC stands for',
  queues: 'number of queue pairs (= number of fds)',
  vectors: 'MSI-X vectors for virtio-net: 2 x queues + 2',
  ch_queues: 'Cloud Hypervisor num_queues: 2 x queues (it counts queues, not pairs)',
} as const;

export type Placeholder = keyof typeof PLACEHOLDERS;

/** What one NIC's placeholders stand for. */
export interface NicValues {
  fds: readonly number[];
  mac?: string;
  mtu?: number;
  tap?: string;
  bridge?: string;
  interface?: string;
}

export interface PlaceholderInput {
  nics: readonly NicValues[];
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

const TOKEN = /\{\{|\{([a-z_]+)(?::([A-Za-z0-9_.-]{1,15}))?\}/g;

function isPlaceholder(word: string): word is Placeholder {
  return Object.hasOwn(PLACEHOLDERS, word);
}

function knownList(): string {
  return Object.keys(PLACEHOLDERS)
    .map((k) => `{${k}}`)
    .join(', ');
}

export function placeholderValues(nic: NicValues): Partial<Record<Placeholder, string>> {
  const n = nic.fds.length;
  const values: Partial<Record<Placeholder, string>> = {};
  if (n > 0) {
    values.fd = String(nic.fds[0]);
    values.fds = nic.fds.join(':');
    values.fds_csv = nic.fds.join(',');
    values.queues = String(n);
    values.vectors = String(2 * n + 2);
    values.ch_queues = String(2 * n);
  }
  if (nic.mac !== undefined) values.mac = nic.mac;
  if (nic.mtu !== undefined) values.mtu = String(nic.mtu);
  if (nic.tap !== undefined) values.tap = nic.tap;
  if (nic.bridge !== undefined) values.bridge = nic.bridge;
  if (nic.interface !== undefined) values.interface = nic.interface;
  return values;
}

function unknown(word: string, index: number, arg: string): PlaceholderError {
  return new PlaceholderError(
    word,
    index,
    `unknown placeholder {${word}} in VMM argument ${index} (${JSON.stringify(arg)}); ` +
      `known: ${knownList()}, each also as {name:N} for NIC N or {name:IFNAME}; write {{ for a literal {`,
  );
}

/** The placeholder words used in argv, checked against the known set (selectors are checked when the NICs are known). */
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

function pickNic(input: PlaceholderInput, selector: string | undefined, word: string, index: number, arg: string): NicValues {
  const nics = input.nics;
  const names = nics.map((n, i) => `${i}${n.interface ? `=${n.interface}` : ''}`).join(', ');
  if (selector === undefined) {
    if (!nics[0]) throw new PlaceholderError(word, index, `placeholder {${word}} in VMM argument ${index}: there is no NIC`);
    return nics[0];
  }
  const nic = /^\d+$/.test(selector) ? nics[Number(selector)] : nics.find((n) => n.interface === selector);
  if (!nic)
    throw new PlaceholderError(word, index, `placeholder {${word}:${selector}} in VMM argument ${index} (${JSON.stringify(arg)}) names no NIC; the NICs are ${names || 'none'}`);
  return nic;
}

export function substituteArg(arg: string, input: PlaceholderInput, index = 0): string {
  return arg.replace(TOKEN, (_whole: string, word: string | undefined, selector: string | undefined) => {
    if (word === undefined) return '{';
    if (!isPlaceholder(word)) throw unknown(word, index, arg);
    const value = placeholderValues(pickNic(input, selector, word, index, arg))[word];
    if (value === undefined) {
      throw new PlaceholderError(
        word,
        index,
        `placeholder {${word}${selector !== undefined ? `:${selector}` : ''}} in VMM argument ${index} has no value here (${PLACEHOLDERS[word]} is not known${word === 'bridge' ? '; that NIC has no bridge' : ''})`,
      );
    }
    return value;
  });
}

export function substituteArgv(argv: readonly string[], input: PlaceholderInput): string[] {
  return argv.map((arg, i) => substituteArg(arg, input, i));
}

/** The numbers the VMM sees: NIC 0's queue fds from 3, then NIC 1's, and so on. */
export function vmmFdNumbers(perNic: readonly (readonly unknown[])[]): number[][] {
  let next = 3;
  return perNic.map((fds) => fds.map(() => next++));
}
