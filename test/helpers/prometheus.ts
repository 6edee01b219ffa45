/**
 * A Prometheus text-format (0.0.4) parser that rejects what a scraper would reject, for the tests
 * that read `run --http-port`'s /metrics (health-metrics, flow-control).
 */

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

export interface Exposition {
  types: Map<string, string>
  help: Map<string, string>
  samples: Sample[]
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/

function parseValue(text: string, line: string): number {
  // Prometheus reads values with Go's strconv.ParseFloat: NaN and Inf in any case (prom-client
  // writes "Nan" for an empty event-loop histogram).
  if (/^\+?inf$/i.test(text)) return Infinity
  if (/^-inf$/i.test(text)) return -Infinity
  if (/^nan$/i.test(text)) return NaN
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad sample value "${text}" in: ${line}`)
  return Number(text)
}

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {}
  let rest = text
  while (rest.length > 0) {
    const m = /^([^=\s]+)="((?:[^"\\\n]|\\[\\"n])*)"(,?)/.exec(rest)
    if (!m) throw new Error(`bad labels in: ${line}`)
    if (!LABEL_NAME.test(m[1])) throw new Error(`bad label name "${m[1]}" in: ${line}`)
    if (m[1] in labels) throw new Error(`label "${m[1]}" twice in: ${line}`)
    labels[m[1]] = m[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\')
    rest = rest.slice(m[0].length)
    if (!m[3] && rest.length > 0) throw new Error(`bad labels in: ${line}`)
  }
  return labels
}

/** The family a sample belongs to: histogram and summary samples carry suffixes. */
function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name
  for (const suffix of ['_bucket', '_sum', '_count']) {
    const base = name.endsWith(suffix) ? name.slice(0, -suffix.length) : undefined
    if (base && ['histogram', 'summary'].includes(types.get(base) ?? '')) return base
  }
  return undefined
}

export function parsePrometheus(text: string): Exposition {
  const types = new Map<string, string>()
  const help = new Map<string, string>()
  const samples: Sample[] = []
  const seen = new Set<string>()
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline')
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line)
      if (!m) continue // a plain comment
      if (!METRIC_NAME.test(m[2])) throw new Error(`bad metric name in: ${line}`)
      if (m[1] === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3])) throw new Error(`bad type in: ${line}`)
        if (types.has(m[2])) throw new Error(`TYPE twice for ${m[2]}`)
        if (samples.some((s) => familyOf(s.name, new Map([[m[2], m[3]]])) === m[2])) throw new Error(`TYPE after samples of ${m[2]}`)
        types.set(m[2], m[3])
      } else {
        if (help.has(m[2])) throw new Error(`HELP twice for ${m[2]}`)
        help.set(m[2], m[3])
      }
      continue
    }
    const m = /^([^\s{]+)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$/.exec(line)
    if (!m) throw new Error(`not a sample line: ${line}`)
    if (!METRIC_NAME.test(m[1])) throw new Error(`bad metric name in: ${line}`)
    const labels = parseLabels(m[2] ?? '', line)
    const key = `${m[1]}${JSON.stringify(Object.entries(labels).sort())}`
    if (seen.has(key)) throw new Error(`duplicate sample: ${line}`)
    seen.add(key)
    if (!familyOf(m[1], types)) throw new Error(`sample without a TYPE before it: ${line}`)
    samples.push({ name: m[1], labels, value: parseValue(m[3], line) })
  }
  // Histograms: cumulative buckets ending in le="+Inf", equal to _count.
  for (const [family, type] of types) {
    if (type !== 'histogram') continue
    const series = new Map<string, Sample[]>()
    for (const s of samples.filter((x) => x.name === `${family}_bucket`)) {
      const { le, ...rest } = s.labels
      if (le === undefined) throw new Error(`${family}_bucket without le`)
      const k = JSON.stringify(Object.entries(rest).sort())
      series.set(k, [...(series.get(k) ?? []), s])
    }
    for (const [k, buckets] of series) {
      const values = buckets.map((b) => b.value)
      if (values.some((v, i) => i > 0 && v < values[i - 1])) throw new Error(`${family} buckets are not cumulative`)
      const inf = buckets.find((b) => b.labels.le === '+Inf')
      const countSample = samples.find((x) => x.name === `${family}_count` && JSON.stringify(Object.entries(x.labels).sort()) === k)
      if (!inf || !countSample || inf.value !== countSample.value) throw new Error(`${family}: +Inf bucket and _count disagree`)
    }
  }
  return { types, help, samples }
}

export function value(exposition: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  return exposition.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(Object.entries(labels).sort()))?.value
}

export function series(exposition: Exposition, name: string): Record<string, number> {
  return Object.fromEntries(exposition.samples.filter((s) => s.name === name)
    .map((s) => [Object.entries(s.labels).map(([k, v]) => `${k}=${v}`).sort().join(','), s.value]))
}
