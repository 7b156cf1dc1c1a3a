// Order statistics for small samples. Every figure the benchmark reports is
// a median with its min and max: robust to the odd slow run a noisy 2-core
// machine produces, and the spread says how much to trust it.

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
  p25: number;
  p75: number;
  mean: number;
}

/** Linear-interpolated quantile of an already sorted array. */
function quantileSorted(s: number[], q: number): number {
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = s[lo]!;
  const b = s[hi]!;
  return a + (b - a) * (pos - lo);
}

export function quantile(xs: readonly number[], q: number): number {
  return quantileSorted([...xs].sort((a, b) => a - b), q);
}

export function median(xs: readonly number[]): number {
  return quantile(xs, 0.5);
}

export function summarize(xs: readonly number[]): Summary {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return {
    n: s.length,
    median: quantileSorted(s, 0.5),
    min: s.length ? s[0]! : NaN,
    max: s.length ? s[s.length - 1]! : NaN,
    p25: quantileSorted(s, 0.25),
    p75: quantileSorted(s, 0.75),
    mean: s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN,
  };
}

/** Element-wise sum of equally long series (per-iteration composites such as node + ip). */
export function addSeries(...series: readonly (readonly number[])[]): number[] {
  const n = Math.min(...series.map((s) => s.length));
  return Array.from({ length: n }, (_, i) => series.reduce((acc, s) => acc + s[i]!, 0));
}

/** Ratios of paired observations (same iteration), for the spread of a ratio. */
export function pairedRatios(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.min(a.length, b.length);
  return Array.from({ length: n }, (_, i) => a[i]! / b[i]!);
}

/** Short human number: 3 significant digits, no exponent for the ranges we print. */
export function fmt(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return '–';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toString();
  return Number(x.toPrecision(digits)).toString();
}

/** "median (min–max)" */
export function fmtSummary(s: Summary | undefined, unit = ''): string {
  if (!s || s.n === 0) return '–';
  const u = unit ? ` ${unit}` : '';
  if (s.n === 1 || s.min === s.max) return `${fmt(s.median)}${u}`;
  return `${fmt(s.median)}${u} (${fmt(s.min)}–${fmt(s.max)})`;
}
