/**
 * HTML built as text, escaped by default: every value interpolated into `html` is escaped unless
 * it is itself Html (made by `html` or, for markup built here, `trusted`). Everything from workers
 * (errors, outputs, task ids) and from the database reaches a page only through this.
 */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ESCAPES[c])
}

type Value = Html | string | number | boolean | null | undefined | Value[]

function render(value: Value): string {
  if (value === null || value === undefined || value === false) return ''
  if (value instanceof Html) return value.text
  if (Array.isArray(value)) return value.map(render).join('')
  return escapeHtml(String(value))
}

/** A template whose interpolations are escaped (arrays joined; null, undefined and false are empty). */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0]
  for (let i = 0; i < values.length; i += 1) out += render(values[i]) + strings[i + 1]
  return new Html(out)
}

/** Markup this module's callers built themselves from escaped parts (the SVG chart). */
export function trusted(text: string): Html {
  return new Html(text)
}
