// A dependency-free SVG of horizontal stacked bars: podtap's phases next to
// the floor and the peer, for set-up and for teardown, one shared ms axis.

export interface Segment {
  name: string;
  ms: number;
  /** Default: the next palette colour for a name not seen before. */
  color?: string;
}

export interface Bar {
  label: string;
  segments: Segment[];
  /** Printed at the bar's end; defaults to the sum of the segments. */
  total?: number;
}

export interface Group {
  title: string;
  bars: Bar[];
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function niceStep(max: number): number {
  const raw = max / 8;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac', '#86bcb6', '#d37295'];

export function stackedBars(title: string, subtitle: string, groups: Group[]): string {
  const W = 960;
  const labelW = 190;
  const right = 90;
  const barH = 22;
  const gap = 10;
  const plotW = W - labelW - right;

  // One colour per segment name, in order of first appearance, unless given.
  const colours = new Map<string, string>();
  for (const g of groups) for (const b of g.bars) for (const s of b.segments) if (!colours.has(s.name)) colours.set(s.name, s.color ?? PALETTE[colours.size % PALETTE.length]!);

  const out: string[] = [];
  let y = 56;
  for (const g of groups) {
    // Each group has its own scale: teardown can be 10× set-up.
    const max = Math.max(1, ...g.bars.map((b) => Math.max(b.total ?? 0, b.segments.reduce((a, s) => a + Math.max(0, s.ms), 0))));
    const step = niceStep(max);
    const axisMax = Math.ceil(max / step) * step;
    const x = (ms: number) => labelW + (ms / axisMax) * plotW;
    out.push(`<text x="10" y="${y + 14}" font-weight="bold" font-size="14">${esc(g.title)}</text>`);
    y += 24;
    const top = y;
    for (const b of g.bars) {
      out.push(`<text x="${labelW - 8}" y="${y + barH / 2 + 4}" text-anchor="end" font-size="12">${esc(b.label)}</text>`);
      let acc = 0;
      for (const s of b.segments) {
        if (!(s.ms > 0)) continue;
        const w = x(acc + s.ms) - x(acc);
        out.push(`<rect x="${x(acc).toFixed(1)}" y="${y}" width="${Math.max(0.5, w).toFixed(1)}" height="${barH}" fill="${colours.get(s.name)}"><title>${esc(`${b.label}: ${s.name} ${s.ms.toFixed(1)} ms`)}</title></rect>`);
        if (w > 34) out.push(`<text x="${(x(acc) + w / 2).toFixed(1)}" y="${y + barH / 2 + 4}" text-anchor="middle" font-size="10" fill="#fff">${s.ms.toFixed(0)}</text>`);
        acc += s.ms;
      }
      const total = b.total ?? acc;
      out.push(`<text x="${(x(Math.max(acc, total)) + 6).toFixed(1)}" y="${y + barH / 2 + 4}" font-size="12">${total.toFixed(0)} ms</text>`);
      y += barH + gap;
    }
    const axisY = y - gap / 2;
    out.push(`<line x1="${labelW}" y1="${axisY}" x2="${labelW + plotW}" y2="${axisY}" stroke="#333"/>`);
    for (let t = 0; t <= axisMax + 1e-9; t += step) {
      out.push(`<line x1="${x(t).toFixed(1)}" y1="${top - 4}" x2="${x(t).toFixed(1)}" y2="${axisY}" stroke="#ccc" stroke-width="0.5"/>`);
      out.push(`<text x="${x(t).toFixed(1)}" y="${axisY + 13}" text-anchor="middle" font-size="10">${Number(t.toPrecision(6))}</text>`);
    }
    out.push(`<text x="${labelW + plotW + 6}" y="${axisY + 13}" font-size="10">ms</text>`);
    y = axisY + 28;
  }
  // Legend
  let lx = 10;
  for (const [name, color] of colours) {
    const w = Math.round(18 + name.length * 6.4 + 14);
    if (lx + w > W - 10) {
      lx = 10;
      y += 18;
    }
    out.push(`<rect x="${lx}" y="${y}" width="12" height="12" fill="${color}"/><text x="${lx + 16}" y="${y + 10}" font-size="11">${esc(name)}</text>`);
    lx += w;
  }
  const H = y + 26;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">\n` +
    `<rect width="100%" height="100%" fill="#fff"/>\n` +
    `<text x="10" y="22" font-size="16" font-weight="bold">${esc(title)}</text>\n` +
    `<text x="10" y="40" font-size="11" fill="#555">${esc(subtitle)} (medians; each group has its own scale)</text>\n` +
    out.join('\n') +
    '\n</svg>\n'
  );
}
