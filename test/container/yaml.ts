// A reader for the YAML that init/*.yaml are written in, so that tests can
// play those very manifests with a few fields changed (image, pod name, the
// VM's boot media) instead of copies that could drift from them.
//
// It reads a strict subset and refuses everything else with the line number:
// one document; block mappings and sequences indented with spaces (a
// sequence may sit at its key's indentation, as kubectl writes it);
// "- key: value" items; flow collections on one line ({ a: b }, [x, y]);
// plain, 'single' and "double" quoted scalars (double quotes with JSON's
// escapes); # comments. Plain scalars become null, booleans and numbers
// (null ~ true false 12 -3 1.5); what YAML 1.1 (Kubernetes' and podman's
// parsers) and YAML 1.2 read differently is refused: quote it (0660, octal
// or decimal; yes/no/on/off, booleans or strings). Anchors, aliases, tags, block
// scalars (| >), multi-line flow collections and plain scalars continued on
// the next line are refused too, never guessed.

export type Yaml = null | boolean | number | string | Yaml[] | { [key: string]: Yaml };

interface Line {
  no: number; // 1-based, for messages
  indent: number;
  text: string; // without indentation and comment
}

export class YamlError extends Error {
  constructor(line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = 'YamlError';
  }
}

/** Removes a comment: '#' at the start or after a blank, outside quotes. */
function stripComment(s: string, no: number): string {
  let quote: string | undefined;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quote) {
      if (quote === '"' && c === '\\') i++;
      else if (c === quote) {
        if (quote === "'" && s[i + 1] === "'") i++;
        else quote = undefined;
      }
    } else if (c === '"' || c === "'") {
      // A quote starts a scalar only at a value's beginning; elsewhere (it's) it is text.
      const before = s.slice(0, i).trimEnd();
      if (before === '' || /[:\-[{,]$/.test(before)) quote = c;
    } else if (c === '#' && (i === 0 || s[i - 1] === ' ')) return s.slice(0, i).trimEnd();
  }
  if (quote) throw new YamlError(no, 'unterminated quoted scalar');
  return s.trimEnd();
}

function lines(text: string): Line[] {
  const out: Line[] = [];
  text.split('\n').forEach((raw, i) => {
    const no = i + 1;
    if (raw.includes('\t')) throw new YamlError(no, 'tab character (indent with spaces)');
    const body = stripComment(raw, no);
    if (!body.trim()) return;
    if (/^(---|\.\.\.)(\s|$)/.test(body)) {
      if (out.length) throw new YamlError(no, 'more than one document');
      return;
    }
    const indent = body.length - body.trimStart().length;
    out.push({ no, indent, text: body.trimStart() });
  });
  return out;
}

const INT = /^[-+]?(0|[1-9][0-9]*)$/;
const FLOAT = /^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$/;

function plain(s: string, no: number): Yaml {
  if (/^[&*!|>%@`]/.test(s)) throw new YamlError(no, `unsupported YAML (${s[0]}) in ${JSON.stringify(s)}`);
  if (s === 'null' || s === '~' || s === 'Null' || s === 'NULL') return null;
  if (s === 'true' || s === 'True' || s === 'TRUE') return true;
  if (s === 'false' || s === 'False' || s === 'FALSE') return false;
  if (/^(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$/.test(s)) throw new YamlError(no, `${s} is a boolean in YAML 1.1 and a string in 1.2: quote it`);
  if (/^[-+]?0[0-9]/.test(s)) throw new YamlError(no, `${s} reads as octal in YAML 1.1 and decimal in 1.2: quote it`);
  if (INT.test(s) || FLOAT.test(s)) return Number(s);
  return s;
}

function unquote(s: string, no: number): string {
  if (s.startsWith('"')) {
    try {
      return JSON.parse(s) as string;
    } catch {
      throw new YamlError(no, `bad double-quoted scalar ${s}`);
    }
  }
  if (!s.endsWith("'") || s.length < 2) throw new YamlError(no, `bad single-quoted scalar ${s}`);
  return s.slice(1, -1).replaceAll("''", "'");
}

/** A flow collection or scalar that makes up the whole of `s`. */
function flowValue(s: string, no: number): Yaml {
  let i = 0;
  const ws = () => {
    while (s[i] === ' ') i++;
  };
  const fail = (what: string): never => {
    throw new YamlError(no, `${what} at column ${i + 1} of ${JSON.stringify(s)}`);
  };
  const quoted = (): string => {
    const q = s[i]!;
    let j = i + 1;
    for (; j < s.length; j++) {
      if (q === '"' && s[j] === '\\') j++;
      else if (s[j] === q) {
        if (q === "'" && s[j + 1] === "'") j++;
        else break;
      }
    }
    if (j >= s.length) fail('unterminated quoted scalar');
    const text = s.slice(i, j + 1);
    i = j + 1;
    return unquote(text, no);
  };
  const scalar = (inFlow: boolean, isKey: boolean): Yaml => {
    ws();
    if (s[i] === '"' || s[i] === "'") return quoted();
    const start = i;
    while (i < s.length) {
      const c = s[i]!;
      if (inFlow && (c === ',' || c === ']' || c === '}')) break;
      if (isKey && c === ':' && (s[i + 1] === ' ' || s[i + 1] === undefined || (inFlow && /[,}\]]/.test(s[i + 1]!)))) break;
      if (inFlow && (c === '[' || c === '{')) fail('nested flow collection inside a plain scalar');
      i++;
    }
    const text = s.slice(start, i).trim();
    if (!text) fail('empty value');
    return isKey ? text : plain(text, no);
  };
  const value = (inFlow: boolean): Yaml => {
    ws();
    if (s[i] === '[') {
      i++;
      const out: Yaml[] = [];
      ws();
      if (s[i] === ']') {
        i++;
        return out;
      }
      for (;;) {
        out.push(value(true));
        ws();
        if (s[i] === ',') {
          i++;
          continue;
        }
        if (s[i] === ']') {
          i++;
          return out;
        }
        fail("expected ',' or ']'");
      }
    }
    if (s[i] === '{') {
      i++;
      const out: { [k: string]: Yaml } = {};
      ws();
      if (s[i] === '}') {
        i++;
        return out;
      }
      for (;;) {
        ws();
        const key = String(s[i] === '"' || s[i] === "'" ? quoted() : scalar(true, true));
        ws();
        if (s[i] !== ':') fail("expected ':'");
        i++;
        if (key in out) fail(`duplicate key ${key}`);
        out[key] = value(true);
        ws();
        if (s[i] === ',') {
          i++;
          continue;
        }
        if (s[i] === '}') {
          i++;
          return out;
        }
        fail("expected ',' or '}'");
      }
    }
    return scalar(inFlow, false);
  };
  const v = value(false);
  ws();
  if (i < s.length) fail('unexpected text after the value');
  return v;
}

/** Splits "key: rest" (rest may be empty); undefined if the line is no mapping entry. */
function splitKey(text: string, no: number): { key: string; rest: string } | undefined {
  if (text.startsWith('"') || text.startsWith("'")) {
    const q = text[0]!;
    let j = 1;
    for (; j < text.length; j++) {
      if (q === '"' && text[j] === '\\') j++;
      else if (text[j] === q) {
        if (q === "'" && text[j + 1] === "'") j++;
        else break;
      }
    }
    const after = text.slice(j + 1);
    if (!/^\s*:(\s|$)/.test(after)) return undefined;
    return { key: unquote(text.slice(0, j + 1), no), rest: after.replace(/^\s*:/, '').trim() };
  }
  if (text.startsWith('[') || text.startsWith('{')) return undefined;
  const m = /^([^:]*?[^\s:]):(\s+(.*))?$/.exec(text) ?? /^([^:]*?[^\s:]):()$/.exec(text);
  if (!m) return undefined;
  return { key: m[1]!, rest: (m[3] ?? '').trim() };
}

class Reader {
  #i = 0;
  readonly ls: Line[];
  constructor(ls: Line[]) {
    this.ls = ls;
  }

  get done(): boolean {
    return this.#i >= this.ls.length;
  }

  peek(): Line | undefined {
    return this.ls[this.#i];
  }

  /** The block starting at the next line, whose indentation is `indent`. */
  block(indent: number): Yaml {
    const first = this.peek()!;
    return first.text === '-' || first.text.startsWith('- ') ? this.sequence(indent) : this.mapping(indent);
  }

  /** The value of a key or item whose text after ':' or '-' was `rest`; nested lines are deeper than `parentIndent`. */
  valueAfter(rest: string, parentIndent: number, no: number, seqAtSameIndent: boolean): Yaml {
    if (rest) {
      if (rest === '|' || rest === '>' || /^[|>][-+0-9]*$/.test(rest)) throw new YamlError(no, 'block scalars (| >) are not supported');
      const next = this.peek();
      if (next && next.indent > parentIndent) throw new YamlError(next.no, 'a value continued on the next line is not supported');
      return flowValue(rest, no);
    }
    const next = this.peek();
    if (!next || next.indent < parentIndent || (next.indent === parentIndent && !(seqAtSameIndent && (next.text === '-' || next.text.startsWith('- '))))) return null;
    return this.block(next.indent);
  }

  mapping(indent: number): { [k: string]: Yaml } {
    const out: { [k: string]: Yaml } = {};
    while (!this.done) {
      const l = this.peek()!;
      if (l.indent < indent) break;
      if (l.indent > indent) throw new YamlError(l.no, `unexpected indentation (${l.indent}, expected ${indent})`);
      if (l.text === '-' || l.text.startsWith('- ')) break; // a sequence at its key's indentation ends here
      const kv = splitKey(l.text, l.no);
      if (!kv) throw new YamlError(l.no, `expected "key: value", found ${JSON.stringify(l.text)}`);
      if (kv.key in out) throw new YamlError(l.no, `duplicate key ${kv.key}`);
      this.#i++;
      out[kv.key] = this.valueAfter(kv.rest, indent, l.no, true);
    }
    return out;
  }

  sequence(indent: number): Yaml[] {
    const out: Yaml[] = [];
    while (!this.done) {
      const l = this.peek()!;
      if (l.indent < indent) break;
      if (l.indent > indent) throw new YamlError(l.no, `unexpected indentation (${l.indent}, expected ${indent})`);
      if (!(l.text === '-' || l.text.startsWith('- '))) break;
      const rest = l.text.slice(1).trimStart();
      const itemIndent = indent + (l.text.length - rest.length);
      const kv = rest ? splitKey(rest, l.no) : undefined;
      if (kv) {
        // "- key: value": a mapping whose keys line up after the dash.
        this.ls[this.#i] = { no: l.no, indent: itemIndent, text: rest };
        out.push(this.mapping(itemIndent));
      } else {
        this.#i++;
        out.push(this.valueAfter(rest, indent, l.no, false));
      }
    }
    return out;
  }
}

/** Parses one YAML document of the subset described above. */
export function parseYaml(text: string): Yaml {
  const ls = lines(text);
  if (!ls.length) return null;
  if (ls[0]!.indent !== 0) throw new YamlError(ls[0]!.no, 'the document must start at column 1');
  const r = new Reader(ls);
  const v = r.block(0);
  if (!r.done) throw new YamlError(r.peek()!.no, 'unexpected text after the document');
  return v;
}
