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
