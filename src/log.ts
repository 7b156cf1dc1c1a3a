// Logs go to stderr so stdout stays a clean channel for the ready line and
// `inspect`'s JSON. Text for people, JSON lines for log collectors.

export type Level = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'text' | 'json';
export type Logger = (level: Level, msg: string, fields?: Record<string, unknown>) => void;

const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function createLogger(format: LogFormat, min: Level = 'info', write = (s: string) => process.stderr.write(s)): Logger {
  return (level, msg, fields) => {
    if (ORDER[level] < ORDER[min]) return;
    if (format === 'json') {
      write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + '\n');
      return;
    }
    const kv = fields
      ? Object.entries(fields)
          .map(([k, v]) => ` ${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
          .join('')
      : '';
    write(`podtap: ${level === 'info' ? '' : level + ': '}${msg}${kv}\n`);
  };
}

/**
 * A token bucket per key, keys from a small fixed set (reasons): for log
 * lines the guest or a client can cause once per packet or connection.
 */
const MAX_KEYS = 256;

export class RateLimit {
  private readonly perMinute: number;
  private readonly buckets = new Map<string, { tokens: number; at: number; suppressed: number }>();
  constructor(perMinute: number) {
    this.perMinute = perMinute;
  }
  /** Keys remembered: never more than MAX_KEYS, however many a client invents. */
  get size(): number {
    return this.buckets.size;
  }
  /** Returns -1 if suppressed, else how many were suppressed since the last allowed one. */
  take(key: string, now: number): number {
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= MAX_KEYS) this.buckets.clear();
      b = { tokens: this.perMinute, at: now, suppressed: 0 };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(this.perMinute, b.tokens + ((now - b.at) * this.perMinute) / 60_000);
    b.at = now;
    if (b.tokens < 1) {
      b.suppressed++;
      return -1;
    }
    b.tokens -= 1;
    const s = b.suppressed;
    b.suppressed = 0;
    return s;
  }
}

