// Reads back the nft scripts podtap renders (plan/guard.ts), so unit tests
// can assert on each chain's hook line and rules one by one. Only the subset
// of nft syntax podtap writes: one table, chains with an optional hook line,
// one rule per line.

export interface Chain {
  /** The base chain's `type ... hook ...; policy ...;` line, if any. */
  head?: string;
  rules: string[];
}

export interface Script {
  /** Lines before the table block (podtap's atomic replace: add, then delete). */
  preamble: string[];
  family: string;
  name: string;
  chains: Map<string, Chain>;
}

export function parseNftScript(text: string): Script {
  const lines = text.split('\n');
  const preamble: string[] = [];
  let i = 0;
  for (; i < lines.length && !lines[i]!.startsWith('table '); i++) preamble.push(lines[i]!);
  const m = /^table (\S+) (\S+) \{$/.exec(lines[i] ?? '');
  if (!m) throw new Error(`no table block in:\n${text}`);
  const chains = new Map<string, Chain>();
  let current: Chain | undefined;
  for (i++; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const c = /^chain (\S+) \{$/.exec(line);
    if (c) {
      if (chains.has(c[1]!)) throw new Error(`chain ${c[1]} twice`);
      current = { rules: [] };
      chains.set(c[1]!, current);
      continue;
    }
    if (line === '}') {
      current = undefined;
      continue;
    }
    if (!current) throw new Error(`a line outside any chain: ${line}`);
    if (line.startsWith('type ') && current.rules.length === 0 && current.head === undefined) current.head = line;
    else current.rules.push(line);
  }
  return { preamble, family: m[1]!, name: m[2]!, chains };
}

export function chainOf(s: Script, name: string): Chain {
  const c = s.chains.get(name);
  if (!c) throw new Error(`no chain ${name}; chains: ${[...s.chains.keys()].join(', ')}`);
  return c;
}
