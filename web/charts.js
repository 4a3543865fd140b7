// The two live charts, drawn by uPlot (loaded by index.html as the global
// `uPlot`). Each keeps the last MAX_POINTS points per series, redraws at most
// once per animation frame, and tells how many points it drew in the
// `data-points` attribute of its container.

export const MAX_POINTS = 120;

const PALETTE = ['#60a5fa', '#f472b6', '#fbbf24', '#34d399', '#a78bfa', '#fb923c'];
const AXIS = '#8b97ad';
const GRID = 'rgba(139, 151, 173, 0.12)';
const HEIGHT = 230;

function axis(extra = {}) {
  return {
    stroke: AXIS,
    font: '12px system-ui, sans-serif',
    grid: { stroke: GRID, width: 1 },
    ticks: { stroke: GRID, width: 1 },
    ...extra,
  };
}

const seconds = (time) => Date.parse(time) / 1000;

const fixed = (digits) => (_u, value) => (value == null ? '–' : value.toFixed(digits));

/** What the charts share: the uPlot instance, sizing and redraw batching. */
class LiveChart {
  constructor(container) {
    this.container = container;
    this.plot = null;
    this.pending = false;
    new ResizeObserver(() => this.plot?.setSize(this.size())).observe(container);
  }

  size() {
    return { width: Math.max(this.container.clientWidth, 200), height: HEIGHT };
  }

  /** (Re)creates the plot, e.g. when a series appears. */
  build(options) {
    this.plot?.destroy();
    this.container.replaceChildren();
    const hooks = { draw: [() => (this.container.dataset.points = String(this.points()))] };
    // The legend names the series; the latest values are in the card's header.
    const legend = { live: false };
    this.plot = new uPlot({ ...this.size(), hooks, legend, ...options }, this.data(), this.container);
  }

  /** Redraws on the next frame; many events in one frame cost one draw. */
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData(this.data());
    });
  }
}

/** The first plottable number of a measurement: `value`, or its first numeric field. */
function measurement(data) {
  const value = data !== null && typeof data === 'object' && 'value' in data ? data.value : data;
  if (typeof value === 'number' && Number.isFinite(value)) return { value, field: null };
  if (value !== null && typeof value === 'object') {
    for (const [field, v] of Object.entries(value)) {
      if (typeof v === 'number' && Number.isFinite(v)) return { value: v, field };
    }
  }
  return null;
}

/** Topic `measurements`: data `{"index", "value": number | object}`. */
export class MeasurementsChart extends LiveChart {
  constructor(container, { fieldLabel, nowLabel }) {
    super(container);
    this.fieldLabel = fieldLabel;
    this.nowLabel = nowLabel;
    this.times = [];
    this.values = [];
    this.field = undefined;
    this.rebuild(null);
  }

  rebuild(field) {
    this.field = field;
    this.fieldLabel.textContent = field ? `· value.${field}` : '';
    this.build({
      scales: { x: { time: true } },
      axes: [axis(), axis({ size: 56 })],
      series: [
        {},
        {
          label: field ? `value.${field}` : 'value',
          stroke: '#5eead4',
          fill: 'rgba(94, 234, 212, 0.10)',
          width: 2,
          points: { show: false },
          value: fixed(2),
        },
      ],
    });
  }

  points() {
    return this.times.length;
  }

  data() {
    return [this.times, this.values];
  }

  add(envelope) {
    const m = measurement(envelope.data);
    if (!m) return;
    if (m.field !== this.field) this.rebuild(m.field);
    this.times.push(seconds(envelope.time));
    this.values.push(m.value);
    if (this.times.length > MAX_POINTS) {
      this.times.shift();
      this.values.shift();
    }
    this.nowLabel.textContent = m.value.toFixed(2);
    this.schedule();
  }
}

/** Topics `trades/*`: data `{"symbol", "price", "change", "volume"}`, one series per symbol. */
export class TradesChart extends LiveChart {
  constructor(container, { nowLabel }) {
    super(container);
    this.nowLabel = nowLabel;
    /** symbol → { times, prices, change } */
    this.symbols = new Map();
    this.rebuild();
  }

  rebuild() {
    const symbols = [...this.symbols.keys()];
    const series = [{}];
    const axes = [axis()];
    const scales = { x: { time: true } };
    symbols.forEach((symbol, i) => {
      const color = PALETTE[i % PALETTE.length];
      const scale = `price:${symbol}`;
      scales[scale] = { auto: true };
      series.push({
        label: symbol,
        scale,
        stroke: color,
        width: 2,
        spanGaps: true,
        points: { show: true, size: 4, fill: color },
        value: fixed(2),
      });
      // The first two symbols get an axis each, left and right, in their color.
      if (i < 2) {
        axes.push(axis({
          scale,
          side: i === 0 ? 3 : 1,
          stroke: color,
          size: 60,
          grid: { show: i === 0, stroke: GRID, width: 1 },
        }));
      }
    });
    if (symbols.length === 0) {
      series.push({ label: 'waiting for trades…', stroke: PALETTE[0] });
      axes.push(axis({ size: 60 }));
    }
    this.build({ scales, axes, series });
  }

  points() {
    let n = 0;
    for (const s of this.symbols.values()) n += s.times.length;
    return n;
  }

  /** uPlot wants one x array: the union of all times, with gaps as null. */
  data() {
    const symbols = [...this.symbols.values()];
    if (symbols.length === 0) return [[], []];
    const times = [...new Set(symbols.flatMap((s) => s.times))].sort((a, b) => a - b);
    const at = new Map(times.map((t, i) => [t, i]));
    const columns = symbols.map((s) => {
      const column = new Array(times.length).fill(null);
      s.times.forEach((t, i) => (column[at.get(t)] = s.prices[i]));
      return column;
    });
    return [times, ...columns];
  }

  add(envelope) {
    const data = envelope.data ?? {};
    const symbol = typeof data.symbol === 'string' ? data.symbol : envelope.topic.split('/').pop();
    const price = Number(data.price);
    if (!Number.isFinite(price)) return;
    let series = this.symbols.get(symbol);
    if (!series) {
      series = { times: [], prices: [], change: 0 };
      this.symbols.set(symbol, series);
      this.rebuild();
    }
    series.times.push(seconds(envelope.time));
    series.prices.push(price);
    series.change = Number(data.change) || 0;
    if (series.times.length > MAX_POINTS) {
      series.times.shift();
      series.prices.shift();
    }
    this.showLatest();
    this.schedule();
  }

  showLatest() {
    const parts = [...this.symbols.entries()].map(([symbol, s], i) => {
      const span = document.createElement('span');
      span.className = s.change < 0 ? 'down' : 'up';
      span.style.setProperty('--series', PALETTE[i % PALETTE.length]);
      const arrow = s.change < 0 ? '▼' : '▲';
      span.textContent = `${symbol} ${s.prices.at(-1).toFixed(2)} ${arrow}`;
      return span;
    });
    this.nowLabel.replaceChildren(...parts);
  }
}
