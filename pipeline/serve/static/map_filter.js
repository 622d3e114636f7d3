// The map's cross-filter (docs/http-api.md, "The map"): a where= box that dims the points outside the filter
// (POST map/filter: one bit per point), and a map selection turned into a filter (id IN (...)) that the search
// page takes (?where=). Kept apart from map.js, which it reaches only through window.latentMap (S.dim, the
// selection's ids). No dependencies.
'use strict';
(() => {
  const $ = (s) => document.querySelector(s);
  const S = window.latentMap;
  if (!S || !S.dim) return;  // no WebGL: map.js drew nothing to dim
  const MAX_IN = 10000;  // the language's limit on IN values (docs/search.md#filters)

  const form = document.createElement('form');
  form.id = 'filter-form'; form.autocomplete = 'off';
  form.innerHTML = '<input id="map-where" placeholder="Filter: where … (e.g. license = \'cc-by\')" aria-label="Filter">'
    + '<button type="submit">Filter</button> <a id="filter-search" href="./" hidden>Search with it</a>';
  $('.mbar').insertBefore(form, $('#map-info'));
  const box = $('#map-where');
  Object.assign(form.style, { display: 'flex', gap: '6px', alignItems: 'center' });  // as map.css lays out the other forms
  Object.assign(box.style, { width: '220px', padding: '6px 8px' });
  const link = $('#filter-search');
  const useSelection = document.createElement('button');
  useSelection.id = 'selection-filter'; useSelection.type = 'button'; useSelection.textContent = 'Use as filter';
  $('#panel-actions').append(' ', useSelection);

  const status = (text) => { $('#map-status').textContent = text; };
  function headers() {  // the search page's token (same tab), as map.js sends it
    const token = sessionStorage.getItem('latent-token'), out = { 'Content-Type': 'application/json' };
    if (token) out.Authorization = `Bearer ${token}`;
    return out;
  }
  S.filter = null;  // {where, matched, points} of the filter shown

  async function apply(where) {
    link.hidden = true;
    if (!where) { S.filter = null; S.dim([]); status('No filter: every point is shown.'); return; }
    const res = await fetch('map/filter', { method: 'POST', headers: headers(), body: JSON.stringify({ where }) });
    if (!res.ok) {  // a bad predicate: the server's 400 says what to change
      const body = await res.json().catch(() => ({}));
      S.filter = { where, error: body.detail || `HTTP ${res.status}` };
      status(typeof body.detail === 'string' ? body.detail : `HTTP ${res.status}`);
      return;
    }
    const bits = new Uint8Array(await res.arrayBuffer()), n = Number(res.headers.get('X-Points'));
    const outside = [];
    for (let i = 0; i < n; i++) if (!((bits[i >> 3] >> (i & 7)) & 1)) outside.push(i);
    S.dim(outside);
    const matched = Number(res.headers.get('X-Matched'));
    S.filter = { where, matched, points: n };
    link.href = `./?where=${encodeURIComponent(where)}`; link.hidden = false;
    status(`${matched.toLocaleString()} of ${n.toLocaleString()} points match the filter; the others are dimmed.`);
  }
  const failed = (err) => status(`Cannot filter: ${err.message}`);

  form.addEventListener('submit', (e) => { e.preventDefault(); apply(box.value.trim()).catch(failed); });
  useSelection.addEventListener('click', () => {
    const ids = S.selectionIds || [];
    if (!ids.length) { status('Select some points first (shift-drag, or a region).'); return; }
    if (ids.length > MAX_IN) { status(`${ids.length.toLocaleString()} items: a filter names at most ${MAX_IN.toLocaleString()} ids; select fewer.`); return; }
    box.value = `id IN (${ids.map((id) => `'${String(id).replace(/'/g, "''")}'`).join(', ')})`;
    apply(box.value).catch(failed);
  });
  // Clear (map.js) drops every layer: the filter's dimming comes back, as the box still shows it
  $('#clear').addEventListener('click', () => setTimeout(() => { if (S.filter && S.dimmed) S.dim(S.dimmed); }, 0));
})();
