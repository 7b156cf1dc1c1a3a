// A tiny concurrency limiter. vitest runs one test file in one worker, so
// shapes of one file only overlap as concurrent tests (it.concurrent); this
// keeps the number of podtap processes in flight at what the 2-core machine
// can run without starving the timing-sensitive parts (IPv6 DAD, linkwatch).

export function limiter(max: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let active = 0;
  const queue: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= max) await new Promise<void>((r) => queue.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      queue.shift()?.();
    }
  };
}
