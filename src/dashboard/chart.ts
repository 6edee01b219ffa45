/**
 * The throughput chart of the overview: one stacked bar per minute of the last hour (completed,
 * retried, failed), drawn on the server as inline SVG. Presentation attributes and CSS classes
 * only: a style attribute would break the Content-Security-Policy (no inline styles).
 */
import type { ThroughputMinute } from '../api/overview'
import { type Html, html } from './html'

const WIDTH = 600
const HEIGHT = 160
const TOP = 18
const BOTTOM = 18

const hhmm = (iso: string) => iso.slice(11, 16)

export function throughputChart(minutes: ThroughputMinute[]): Html {
  const total = (m: ThroughputMinute) => m.completed + m.failed + m.retried
  const max = Math.max(1, ...minutes.map(total))
  const plot = HEIGHT - TOP - BOTTOM
  const step = WIDTH / Math.max(1, minutes.length)
  const y = (v: number) => (v / max) * plot
  const sum = (key: 'completed' | 'failed' | 'retried') => minutes.reduce((n, m) => n + m[key], 0)
  const bars = minutes.map((m, i) => {
    const x = (i * step + 1).toFixed(1)
    const w = Math.max(1, step - 2).toFixed(1)
    let base = HEIGHT - BOTTOM
    const segment = (value: number, cls: string) => {
      if (value === 0) return html``
      const h = Math.max(1, y(value))
      base -= h
      return html`<rect class="${cls}" x="${x}" y="${base.toFixed(1)}" width="${w}" height="${h.toFixed(1)}"></rect>`
    }
    const label = `${hhmm(m.minute)} UTC: ${m.completed} completed, ${m.retried} retried, ${m.failed} failed`
    return html`<g class="bar" data-minute="${m.minute}" data-completed="${m.completed}" data-failed="${m.failed}" data-retried="${m.retried}"><title>${label}</title>${segment(m.completed, 'completed')}${segment(m.retried, 'retried')}${segment(m.failed, 'failed')}</g>`
  })
  const first = minutes[0]
  const last = minutes[minutes.length - 1]
  return html`<svg class="chart" viewBox="0 0 ${WIDTH} ${HEIGHT}" role="img" aria-label="Runs finished per minute over the last hour"
    data-total-completed="${sum('completed')}" data-total-failed="${sum('failed')}" data-total-retried="${sum('retried')}">
  <line class="axis" x1="0" y1="${HEIGHT - BOTTOM + 0.5}" x2="${WIDTH}" y2="${HEIGHT - BOTTOM + 0.5}"></line>
  <line class="grid" x1="0" y1="${TOP - 0.5}" x2="${WIDTH}" y2="${TOP - 0.5}"></line>
  <text class="label" x="2" y="${TOP - 5}">${max} / min</text>
  ${bars}
  ${first ? html`<text class="label" x="2" y="${HEIGHT - 4}">${hhmm(first.minute)}</text>` : ''}
  ${last ? html`<text class="label end" x="${WIDTH - 2}" y="${HEIGHT - 4}">${hhmm(last.minute)} UTC</text>` : ''}
</svg>`
}
