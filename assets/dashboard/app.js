// pipeweave dashboard: the page refreshes itself (SPEC §8). Every few seconds it fetches its own
// URL again and swaps in the new <main> and the sign-in state; the server shares one read per
// interval among all viewers, so this costs the database nothing per browser. A refresh waits
// while the page is hidden or someone is typing in a form or selecting text.
'use strict'
;(function () {
  var every = Number(document.body.getAttribute('data-refresh-ms')) || 3000
  var busy = false

  function interacting() {
    var el = document.activeElement
    if (el && el.matches && el.matches('input, select, textarea')) return true
    var selection = window.getSelection ? window.getSelection() : null
    return Boolean(selection && !selection.isCollapsed)
  }

  function swap(doc, id) {
    var next = doc.getElementById(id)
    var current = document.getElementById(id)
    if (next && current) current.replaceWith(document.importNode(next, true))
  }

  function refresh() {
    if (busy || document.hidden || interacting()) return
    busy = true
    fetch(window.location.href, { headers: { 'x-pipeweave-refresh': '1' }, credentials: 'same-origin', cache: 'no-store' })
      .then(function (response) {
        if (!response.ok) return undefined
        return response.text().then(function (text) {
          var doc = new DOMParser().parseFromString(text, 'text/html')
          swap(doc, 'main')
          swap(doc, 'access')
          var footer = doc.querySelector('footer')
          var current = document.querySelector('footer')
          if (footer && current) current.replaceWith(document.importNode(footer, true))
          document.title = doc.title
        })
      })
      .catch(function () { /* the server is away: try again at the next tick */ })
      .then(function () { busy = false })
  }

  window.setInterval(refresh, every)
})()
