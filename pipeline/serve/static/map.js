// The map view: our own small WebGL2 renderer of every point (no library, nothing from a CDN).
// Points arrive as binary columns (GET map/points: x float32[n], y float32[n], finest cluster uint16|uint32[n]);
// colours come from each point's coarse region (golden-angle hues, as map.png). window.latentMap exposes the
// view's state for tests and benchmarks.
'use strict';
(() => {
  const $ = (s) => document.querySelector(s);
  const S = window.latentMap = {
    ready: false, points: 0, frames: 0, firstFrameMs: null, bytes: 0, error: null,
    hover: null, highlighted: [], hits: [], selection: [], route: [], query: null, labelsShown: [],
  };
  const canvas = $('#map');
  const status = (text) => { $('#map-status').textContent = text; };
  const gl = canvas.getContext('webgl2', { preserveDrawingBuffer: true, antialias: false, premultipliedAlpha: false });
  if (!gl) { status('This browser has no WebGL2: the map cannot be drawn.'); S.error = 'no webgl2'; return; }

  const VS = `#version 300 es
  in float a_x; in float a_y; in float a_c;
  uniform vec2 u_center; uniform vec2 u_half; uniform float u_scale; uniform float u_point; uniform int u_mode; uniform vec3 u_color;
  out vec3 v_color;
  vec3 hue(float h) {
    vec3 rgb = clamp(abs(mod(h * 6.0 + vec3(0.0, 4.0, 2.0), 6.0) - 3.0) - 1.0, 0.0, 1.0);
    return 0.5 + 0.65 * (rgb - 0.5);
  }
  void main() {
    vec2 p = (vec2(a_x, a_y) - u_center) * u_scale / u_half;
    gl_Position = vec4(p, 0.0, 1.0);
    gl_PointSize = u_point;
    v_color = u_mode == 0 ? hue(fract(a_c * 0.618033988749895)) : u_color;
  }`;
  const FS = `#version 300 es
  precision mediump float;
  in vec3 v_color; uniform float u_alpha; uniform int u_round; out vec4 color;
  void main() {
    if (u_round == 1) { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; }
    color = vec4(v_color, u_alpha);
  }`;
  function shader(type, src) {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }
  const prog = gl.createProgram();
  gl.attachShader(prog, shader(gl.VERTEX_SHADER, VS)); gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, FS));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  gl.useProgram(prog);
  const U = {}; for (const n of ['u_center', 'u_half', 'u_scale', 'u_point', 'u_mode', 'u_color', 'u_alpha', 'u_round']) U[n] = gl.getUniformLocation(prog, n);
  const A = { x: gl.getAttribLocation(prog, 'a_x'), y: gl.getAttribLocation(prog, 'a_y'), c: gl.getAttribLocation(prog, 'a_c') };

  let info, clusters, X, Y, fine, coarse, n = 0;
  const view = { cx: 0, cy: 0, scale: 1, base: 1 };
  const main = { vao: null };
  const layers = {};  // name -> {vao, count, color, size, line}

  function buffer(data) { const b = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, b); gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW); return b; }
  function vao(xs, ys, cs, ctype) {
    const v = gl.createVertexArray(); gl.bindVertexArray(v);
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer(xs)); gl.enableVertexAttribArray(A.x); gl.vertexAttribPointer(A.x, 1, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer(ys)); gl.enableVertexAttribArray(A.y); gl.vertexAttribPointer(A.y, 1, gl.FLOAT, false, 0, 0);
    if (cs) { gl.bindBuffer(gl.ARRAY_BUFFER, buffer(cs)); gl.enableVertexAttribArray(A.c); gl.vertexAttribPointer(A.c, 1, ctype, false, 0, 0); }
    else { gl.disableVertexAttribArray(A.c); gl.vertexAttrib1f(A.c, 0); }
    gl.bindVertexArray(null); return v;
  }
  function setLayer(name, indices, color, size, line = false, extra = []) {
    const xs = new Float32Array(indices.length + extra.length), ys = new Float32Array(indices.length + extra.length);
    indices.forEach((i, j) => { xs[j] = X[i]; ys[j] = Y[i]; });
    extra.forEach((p, j) => { xs[indices.length + j] = p[0]; ys[indices.length + j] = p[1]; });
    layers[name] = { vao: vao(xs, ys, null), count: xs.length, color, size, line };
    redraw();
  }
  // the cross-filter (map_filter.js): a translucent white layer over the points outside a where= filter
  S.dim = (indices) => { S.dimmed = indices; setLayer('dimmed', indices, [1, 1, 1], 0); };

  function resize() {
    const r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(r.width * dpr)); canvas.height = Math.max(1, Math.round(r.height * dpr));
    redraw();
  }
  let pending = false;
  function redraw() { if (!pending && n) { pending = true; requestAnimationFrame(draw); } }
  function zoom() { return view.scale / view.base; }
  function draw() {
    pending = false;
    const dpr = window.devicePixelRatio || 1;
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.clearColor(1, 1, 1, 1); gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    gl.uniform2f(U.u_center, view.cx, view.cy); gl.uniform2f(U.u_half, canvas.width / 2, canvas.height / 2);
    gl.uniform1f(U.u_scale, view.scale * dpr);
    const size = Math.min(8, Math.max(1.5, 1.5 * Math.sqrt(zoom()) * Math.sqrt(Math.max(1, 2e5 / n)))) * dpr;
    gl.uniform1f(U.u_point, size); gl.uniform1i(U.u_mode, 0); gl.uniform1f(U.u_alpha, n > 2e5 ? 0.45 : 0.75);
    gl.uniform1i(U.u_round, size > 3 ? 1 : 0);
    gl.bindVertexArray(main.vao); gl.drawArrays(gl.POINTS, 0, n);
    gl.uniform1i(U.u_mode, 1); gl.uniform1f(U.u_alpha, 1); gl.uniform1i(U.u_round, 1);
    for (const name of ['dimmed', 'selection', 'neighbors', 'hits', 'route', 'query']) {
      const l = layers[name]; if (!l || !l.count) continue;
      gl.uniform3f(U.u_color, ...l.color); gl.bindVertexArray(l.vao);
      gl.uniform1f(U.u_alpha, name === 'dimmed' ? 0.85 : 1);
      // lines have no gl_PointCoord: the round-point discard would drop every line fragment
      if (l.line) { gl.uniform1i(U.u_round, 0); gl.drawArrays(gl.LINE_STRIP, 0, l.count); gl.uniform1i(U.u_round, 1); }
      gl.uniform1f(U.u_point, l.size ? l.size * dpr : size + dpr); gl.drawArrays(gl.POINTS, 0, l.count);
    }
    gl.bindVertexArray(null);
    const seen = `${view.cx},${view.cy},${view.scale}`;  // the view moved: a tooltip would point at nothing
    if (seen !== S.lastView) { document.querySelector('#tooltip').hidden = true; S.hover = null; S.lastView = seen; }
    S.frames += 1;
    if (S.firstFrameMs === null) { gl.finish(); S.firstFrameMs = performance.now(); }
    placeLabels();
  }

  // --- coordinates -------------------------------------------------------------------------------
  function toScreen(x, y) { const r = canvas.getBoundingClientRect(); return [r.width / 2 + (x - view.cx) * view.scale, r.height / 2 - (y - view.cy) * view.scale]; }
  function toData(px, py) { const r = canvas.getBoundingClientRect(); return [view.cx + (px - r.width / 2) / view.scale, view.cy - (py - r.height / 2) / view.scale]; }
  S.screenOf = (i) => { const [sx, sy] = toScreen(X[i], Y[i]); const r = canvas.getBoundingClientRect(); return [r.left + sx, r.top + sy]; };
  S.pixelOf = (i) => {  // the colour drawn at point i (read back from the canvas)
    const [sx, sy] = toScreen(X[i], Y[i]), dpr = window.devicePixelRatio || 1, px = new Uint8Array(4);
    gl.readPixels(Math.round(sx * dpr), Math.round(canvas.height - sy * dpr), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    return Array.from(px);
  };
  function fit() {
    const [x0, y0, x1, y1] = info.bounds, r = canvas.getBoundingClientRect();
    view.cx = (x0 + x1) / 2; view.cy = (y0 + y1) / 2;
    view.scale = view.base = 0.92 * Math.min(r.width / Math.max(x1 - x0, 1e-9), r.height / Math.max(y1 - y0, 1e-9));
  }

  // --- labels by zoom level ------------------------------------------------------------------------
  const labelBox = $('#labels');
  function placeLabels() {
    if (!clusters) return;
    const level = Math.min(info.levels - 1, Math.max(0, Math.floor(Math.log2(zoom()) / 1.5)));
    const r = canvas.getBoundingClientRect();
    const shown = [], boxes = [];
    const candidates = clusters.filter((c) => c.level === level && c.size > 0 && c.x !== null)
      .sort((a, b) => b.size - a.size);
    for (const c of candidates) {
      const [sx, sy] = toScreen(c.x, c.y);
      if (sx < 0 || sy < 0 || sx > r.width || sy > r.height) continue;
      const w = 7 * c.label.length + 14, h = 20, box = [sx - w / 2, sy - h / 2, sx + w / 2, sy + h / 2];
      if (boxes.some((b) => box[0] < b[2] && box[2] > b[0] && box[1] < b[3] && box[3] > b[1])) continue;
      boxes.push(box); shown.push({ c, sx, sy });
      if (shown.length >= 60) break;
    }
    labelBox.replaceChildren(...shown.map(({ c, sx, sy }) => {
      const d = document.createElement('div'); d.className = `label l${level}`; d.textContent = c.label;
      d.title = 'Select this region'; d.onclick = () => selectRegion(c);
      d.style.left = `${sx}px`; d.style.top = `${sy}px`; return d;
    }));
    S.labelsShown = shown.map(({ c }) => ({ level: c.level, cluster: c.cluster, label: c.label }));
  }

  // --- hit testing: a grid over the points ---------------------------------------------------------
  const G = 256; let cellStart, cellItems;
  function buildGrid() {
    const [x0, y0, x1, y1] = info.bounds, w = (x1 - x0) || 1, h = (y1 - y0) || 1;
    const cell = new Uint32Array(n), counts = new Uint32Array(G * G + 1);
    for (let i = 0; i < n; i++) {
      const gx = Math.min(G - 1, Math.floor((X[i] - x0) / w * G)), gy = Math.min(G - 1, Math.floor((Y[i] - y0) / h * G));
      cell[i] = gy * G + gx; counts[cell[i] + 1]++;
    }
    for (let c = 0; c < G * G; c++) counts[c + 1] += counts[c];
    cellStart = counts.slice(); const fill = counts.slice(0, G * G); cellItems = new Uint32Array(n);
    for (let i = 0; i < n; i++) cellItems[fill[cell[i]]++] = i;
  }
  function nearest(px, py, radius = 8) {
    const [x0, y0, x1, y1] = info.bounds, w = (x1 - x0) || 1, h = (y1 - y0) || 1;
    const [dx, dy] = toData(px, py), rd = radius / view.scale;
    const gx0 = Math.max(0, Math.floor((dx - rd - x0) / w * G)), gx1 = Math.min(G - 1, Math.floor((dx + rd - x0) / w * G));
    const gy0 = Math.max(0, Math.floor((dy - rd - y0) / h * G)), gy1 = Math.min(G - 1, Math.floor((dy + rd - y0) / h * G));
    let best = -1, bestD = rd * rd;
    for (let gy = gy0; gy <= gy1; gy++) for (let gx = gx0; gx <= gx1; gx++) {
      const c = gy * G + gx;
      for (let j = cellStart[c]; j < cellStart[c + 1]; j++) {
        const i = cellItems[j], ex = X[i] - dx, ey = Y[i] - dy, d = ex * ex + ey * ey;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }

  // --- API --------------------------------------------------------------------------------------------
  // The access token the search page asked for (same tab: sessionStorage), sent as a header, never in a URL.
  function authHeaders(extra) {
    const token = sessionStorage.getItem('latent-token'); const headers = { ...(extra || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }
  function authFetch(path, options) {
    return fetch(path, { ...(options || {}), headers: authHeaders((options || {}).headers) }).then((res) => {
      if (res.status === 401) status('An access token is needed: enter it on the search page, then come back.');
      return res;
    });
  }
  // With a token, thumbnails are fetched with it and shown from blob: URLs (an <img> cannot send headers).
  async function setThumbnail(img, url) {
    if (!url) { img.removeAttribute('src'); img.hidden = true; return; }  // a text-only corpus has no thumbnails
    img.hidden = false;
    if (!sessionStorage.getItem('latent-token')) { img.src = url; return; }
    const res = await authFetch(url);
    if (!res.ok) { if (img.onerror) img.onerror(); return; }
    img.src = URL.createObjectURL(await res.blob());
  }
  async function api(path, body) {
    const res = await authFetch(path, body === undefined ? {} : { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(typeof data.detail === 'string' ? data.detail : JSON.stringify(data.detail || res.status));
    return data;
  }
  function caption(item) { const m = item.metadata || {}; return m.text || m.source || item.id; }
  function showList(title, items) {
    status(title);
    $('#list').replaceChildren(...items.map((it) => {
      const li = document.createElement('li'); li.dataset.id = it.id; if (it.index !== null && it.index !== undefined) li.dataset.index = it.index;
      const img = document.createElement('img'); img.alt = ''; img.onerror = () => { img.style.visibility = 'hidden'; }; setThumbnail(img, it.thumbnail);
      const meta = document.createElement('div'); meta.className = 'meta';
      const score = it.score === null || it.score === undefined ? '' : ` · ${Number(it.score).toFixed(3)}`;
      meta.innerHTML = `<div class="id"></div><div class="cap"></div>`;
      meta.querySelector('.id').textContent = `${it.step !== undefined ? `${it.step}. ` : ''}${it.id}${score}`;
      meta.querySelector('.cap').textContent = caption(it);
      li.append(img, meta);
      li.onclick = () => { if (it.x !== null && it.x !== undefined) { view.cx = it.x; view.cy = it.y; redraw(); } };
      return li;
    }));
  }

  // --- interaction -------------------------------------------------------------------------------------
  const tooltip = $('#tooltip'); const cache = new Map(); let hoverTimer = null;
  async function hover(px, py) {
    const i = nearest(px, py);
    if (i < 0) { tooltip.hidden = true; S.hover = null; return; }
    if (S.hover && S.hover.index === i) return;
    S.hover = { index: i, id: null, loaded: false };
    const item = cache.get(i) || await api(`map/points/${i}`); cache.set(i, item);
    if (!S.hover || S.hover.index !== i) return;
    const img = $('#tooltip-img'); img.hidden = false; img.onerror = () => { img.hidden = true; };
    img.onload = () => { if (S.hover && S.hover.index === i) S.hover.thumbnail = true; };
    setThumbnail(img, item.thumbnail); $('#tooltip-text').textContent = `${item.id}: ${caption(item)}`;
    const [sx, sy] = toScreen(X[i], Y[i]);
    tooltip.style.left = `${sx + 12}px`; tooltip.style.top = `${sy + 12}px`; tooltip.hidden = false;
    Object.assign(S.hover, { id: item.id, caption: caption(item), loaded: true });
  }
  async function neighbors(i) {
    const data = await api(`map/neighbors/${i}?k=10`);
    const idx = data.hits.map((h) => h.index).filter((v) => v !== null);
    S.highlighted = idx; setLayer('neighbors', idx, [1.0, 0.55, 0.0], 9);
    showList(`Nearest neighbours of ${data.hits.length ? data.hits[0].id : i}`, data.hits);
  }
  let drag = null;
  canvas.addEventListener('mousedown', (e) => {
    const r = canvas.getBoundingClientRect();
    drag = { x: e.clientX, y: e.clientY, px: e.clientX - r.left, py: e.clientY - r.top, cx: view.cx, cy: view.cy, box: e.shiftKey, moved: false };
  });
  window.addEventListener('mousemove', (e) => {
    const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.box) {
        const b = $('#box'); b.hidden = false;
        Object.assign(b.style, { left: `${Math.min(px, drag.px)}px`, top: `${Math.min(py, drag.py)}px`, width: `${Math.abs(px - drag.px)}px`, height: `${Math.abs(py - drag.py)}px` });
      } else if (drag.moved) { view.cx = drag.cx - dx / view.scale; view.cy = drag.cy + dy / view.scale; tooltip.hidden = true; redraw(); }
      return;
    }
    if (e.target !== canvas) return;
    clearTimeout(hoverTimer); hoverTimer = setTimeout(() => hover(px, py).catch((err) => status(err.message)), 30);
  });
  async function selectPoints(picked, title) {  // highlighted, listed, their ids ready for export
    S.selection = picked; setLayer('selection', picked, [0.17, 0.35, 0.76], 5);
    const data = await api('map/selection', { indices: picked, items: 50 });
    S.selectionIds = data.ids; $('#panel-actions').hidden = false;
    showList(title(data.count), data.items);
  }
  function ancestors(level) {  // each finest region's region at `level`
    const up = new Map(); for (const r of clusters) if (r.level > 0) up.set(`${r.level}:${r.cluster}`, r.parent);
    const out = new Int32Array(info.clusters[info.levels - 1]);
    for (let f = 0; f < out.length; f++) { let c2 = f; for (let l = info.levels - 1; l > level; l--) c2 = up.get(`${l}:${c2}`); out[f] = c2; }
    return out;
  }
  async function selectRegion(region) {  // a region's items (a label or a legend entry clicked)
    const at = ancestors(region.level), picked = [];
    for (let k = 0; k < n; k++) if (at[fine[k]] === region.cluster) picked.push(k);
    S.region = { level: region.level, cluster: region.cluster };
    await selectPoints(picked, (count) => `${region.label}: ${count.toLocaleString()} items`).catch(failed);
  }
  S.selectRegion = (level, cluster) => selectRegion(clusters.find((r) => r.level === level && r.cluster === cluster));
  function legend() {  // the top-level regions with their sizes, biggest first
    const top = clusters.filter((r) => r.level === 0 && r.size > 0).sort((a, b) => b.size - a.size);
    $('#legend').replaceChildren(...top.map((r) => {
      const li = document.createElement('li'), sw = document.createElement('span');
      sw.className = 'swatch'; sw.style.background = `hsl(${((r.cluster * 0.618033988749895) % 1) * 360}, 65%, 50%)`;
      li.append(sw, `${r.label} · ${r.size.toLocaleString()}`); li.title = 'Select this region';
      li.onclick = () => selectRegion(r); return li;
    }));
  }
  window.addEventListener('mouseup', async (e) => {
    if (!drag) return;
    const d = drag; drag = null;
    const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    try {
      if (d.box && d.moved) {
        $('#box').hidden = true;
        const [ax, ay] = toData(Math.min(px, d.px), Math.max(py, d.py)), [bx, by] = toData(Math.max(px, d.px), Math.min(py, d.py));
        const picked = [];
        for (let i = 0; i < n; i++) if (X[i] >= ax && X[i] <= bx && Y[i] >= ay && Y[i] <= by) picked.push(i);
        await selectPoints(picked, (count) => `${count.toLocaleString()} selected`);
      } else if (!d.moved && e.target === canvas) {
        const i = nearest(px, py); if (i >= 0) await neighbors(i);
      }
    } catch (err) { status(err.message); }
  });
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    const [bx, by] = toData(px, py), f = Math.exp(-e.deltaY * 0.0015);
    view.scale = Math.min(view.base * 4096, Math.max(view.base / 4, view.scale * f));
    const [ax, ay] = toData(px, py); view.cx += bx - ax; view.cy += by - ay; tooltip.hidden = true; redraw();
  }, { passive: false });
  $('#export').onclick = () => {
    const blob = new Blob([(S.selectionIds || []).join('\n') + '\n'], { type: 'text/plain' });
    const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = 'map-selection.txt'; a.click();
  };
  $('#clear').onclick = () => { for (const k of Object.keys(layers)) delete layers[k]; S.selection = []; S.highlighted = []; S.hits = []; S.route = []; S.query = null; $('#list').replaceChildren(); $('#panel-actions').hidden = true; redraw(); };

  async function locate(body) {
    status('Locating…');
    const data = await api('map/locate', { ...body, k: 10 });
    const idx = data.hits.map((h) => h.index).filter((v) => v !== null);
    S.hits = idx; S.query = { x: data.x, y: data.y, hits: idx };
    setLayer('hits', idx, [0.85, 0.1, 0.2], 9); setLayer('query', [], [0, 0, 0], 16, false, [[data.x, data.y]]);
    view.cx = data.x; view.cy = data.y; redraw();
    showList('The query lands here (black); its hits in red', data.hits);
  }
  function failed(err) {  // an error replaces the previous answer: its list would read as this query's
    $('#list').replaceChildren(); $('#panel-actions').hidden = true; status(err.message);
  }
  function fitTo(idx) {  // the view around these points (a route), with a margin
    if (!idx.length) return;
    const xs = idx.map((i) => X[i]), ys = idx.map((i) => Y[i]), r = canvas.getBoundingClientRect();
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    view.cx = (x0 + x1) / 2; view.cy = (y0 + y1) / 2;
    view.scale = Math.min(0.8 * Math.min(r.width / Math.max(x1 - x0, 1e-9), r.height / Math.max(y1 - y0, 1e-9)), 8 * view.base);
    redraw();
  }
  $('#locate-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = $('#locate').value.trim(); if (!q) return;
    // an expression: id:/image: terms, quoted terms, or + / - between terms ("a cat's face" is plain text)
    const expr = /(^|\s)(id|image):|(^|\s)["'][^"']*["'](\s|$)|\s[+-]\s/.test(q);
    locate(expr ? { expression: q } : { text: q }).catch(failed);
  });
  $('#locate-file').addEventListener('change', (e) => {
    const f = e.target.files[0]; if (!f) return;
    const reader = new FileReader(); reader.onload = () => locate({ image: reader.result }).catch(failed); reader.readAsDataURL(f);
  });
  $('#route-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const data = await api('map/path', { from: $('#route-from').value.trim(), to: $('#route-to').value.trim(), steps: Number($('#route-steps').value) });
      const idx = data.route.map((h) => h.index).filter((v) => v !== null);
      S.route = idx; setLayer('route', idx, [0.1, 0.6, 0.3], 8, true);
      fitTo(idx);
      showList(`Route from ${data.from} to ${data.to}`, data.route);
    } catch (err) { failed(err); }
  });
  window.addEventListener('resize', resize);

  // --- load ---------------------------------------------------------------------------------------------
  async function load() {
    const [i, c, res] = await Promise.all([api('map/info'), api('map/clusters'), authFetch('map/points')]);
    if (!res.ok) throw new Error(`map/points: ${res.status}`);
    info = i; clusters = c;
    const buf = await res.arrayBuffer(); S.bytes = buf.byteLength;
    n = Number(res.headers.get('X-Points')); const wide = res.headers.get('X-Cluster-Type') === 'uint32';
    X = new Float32Array(buf, 0, n); Y = new Float32Array(buf, 4 * n, n);
    fine = wide ? new Uint32Array(buf, 8 * n, n) : new Uint16Array(buf.slice(8 * n, 10 * n));
    // each point's coarse region (colour): walk the finest region's parents up to level 0
    const top = new Int32Array(info.clusters[info.levels - 1]);
    const parentOf = info.levels > 1 ? clusters.filter((r) => r.level > 0) : [];
    const byLevel = new Map(); for (const r of parentOf) byLevel.set(`${r.level}:${r.cluster}`, r.parent);
    for (let f = 0; f < top.length; f++) { let c2 = f; for (let l = info.levels - 1; l > 0; l--) c2 = byLevel.get(`${l}:${c2}`); top[f] = c2; }
    coarse = wide ? new Uint32Array(n) : new Uint16Array(n);
    for (let k = 0; k < n; k++) coarse[k] = top[fine[k]];
    main.vao = vao(X, Y, coarse, wide ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT);
    S.points = n;
    $('#map-info').textContent = `${n.toLocaleString()} points · ${info.clusters.join(' / ')} regions`;
    resize(); fit(); redraw(); legend();
    status(`${n.toLocaleString()} points. Hover for an item, click for its neighbours.`);
    setTimeout(() => { buildGrid(); S.ready = true; }, 0);
  }
  load().catch((err) => { S.error = err.message; status(`Cannot load the map: ${err.message}`); });
})();
