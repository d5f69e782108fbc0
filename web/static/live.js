/* Live asset status over server-sent events (GET /api/v1/assets/{id}/events), at most
   three streams at a time. The session cookie authenticates the stream; it ends by itself
   after a final state.
   An asset is failed as soon as one job fails, while its other jobs may still run: those
   are then followed by asking for the asset every few seconds until they end too. */
(function () {
  'use strict';
  const FINAL = ['completed', 'failed'];

  const POLL_MS = 3000;

  /* The asset and every one of its jobs are final: nothing about it will change. */
  function settled(asset) {
    return FINAL.includes(asset.status) &&
      Object.values(asset.jobs || {}).every((job) => FINAL.includes(job.status));
  }

  /* Ask for the asset every POLL_MS until it is settled or gone, or `stop()` says so; then
     `done()`. */
  function poll(assetId, onAsset, stop = () => false, done = () => {}) {
    window.setTimeout(async () => {
      if (stop()) return;
      const asset = await current(assetId);
      if (stop()) return;
      if (asset) onAsset(asset);
      if (asset === undefined || (asset && settled(asset))) done();  // gone, or final
      else poll(assetId, onAsset, stop, done);
    }, POLL_MS);
  }

  /* Browsers open at most 6 connections to a host over HTTP/1.1 and an open stream holds
     one: with a stream for every asset, a drop of many files stalled every other request of
     the page, the next uploads included, until assets finished. So at most MAX_STREAMS
     streams are open; any other asset is asked for every few seconds until a stream frees
     up for it. */
  const MAX_STREAMS = 3;
  let streams = 0;
  const waiting = [];

  function watch(assetId, onAsset) {
    if (streams < MAX_STREAMS) {
      stream(assetId, onAsset);
      return;
    }
    const entry = { assetId, onAsset, streaming: false };
    waiting.push(entry);
    poll(assetId, onAsset, () => entry.streaming,
      () => waiting.splice(waiting.indexOf(entry), 1));
  }

  /* The asset; undefined when it will never answer (signed out, deleted); null on a
     passing failure. */
  async function current(assetId) {
    const response = await fetch('/api/v1/assets/' + encodeURIComponent(assetId), {
      credentials: 'same-origin', headers: { Accept: 'application/json' },
    }).catch(() => null);
    if (response && [401, 403, 404].includes(response.status)) return undefined;
    return response && response.ok ? response.json() : null;
  }

  function stream(assetId, onAsset) {
    streams += 1;
    const source = new EventSource('/api/v1/assets/' + encodeURIComponent(assetId) + '/events');
    let open = true;
    const release = () => {
      if (!open) return;
      open = false;
      source.close();
      streams -= 1;
      const next = waiting.shift();
      if (next) {
        next.streaming = true;
        stream(next.assetId, next.onAsset);
      }
    };
    const handle = (event) => {
      const asset = JSON.parse(event.data);
      onAsset(asset);
      if (FINAL.includes(asset.status)) {
        release();
        if (!settled(asset)) poll(assetId, onAsset);
      }
    };
    source.addEventListener('state', handle);
    source.addEventListener('progress', handle);
    // Closed for good, not reconnecting: the asset was deleted or the session ended (asking
    // says so and stops), or a proxy answered 5xx (asking carries on until it settles).
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED || !open) return;
      release();
      poll(assetId, onAsset);
    });
  }

  function setBar(bar, fraction) {
    const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    const fill = bar.querySelector('span');
    if (fill) fill.style.width = pct + '%';
    bar.setAttribute('aria-valuenow', String(pct));
    return pct;
  }

  function badge(el, status) {
    el.dataset.status = status;
    el.textContent = status;
  }

  function thumbnail(asset, box) {
    const byName = {};
    for (const d of asset.derivatives || []) byName[d.name] = d.url;
    const names = ['thumb_' + box + '.webp', 'thumb_' + box + '.jpg', 'thumb_256.webp', 'thumb_256.jpg'];
    for (const n of names) if (byName[n]) return byName[n];
    return null;
  }

  /* Put `asset`'s thumbnail in `frame` in place of its kind icon, once it exists. */
  function showThumbnail(frame, asset) {
    const url = thumbnail(asset, 256);
    if (!url || frame.querySelector('img')) return;
    const img = document.createElement('img');
    img.alt = '';
    img.src = url;
    const icon = frame.querySelector('.kind-icon');
    if (icon) icon.remove();
    frame.prepend(img);
  }

  /* Render the jobs of `asset` into `list` (an <ul>), one row per job, each with its error
     unless `withErrors` is false (the caller then shows the reason once, elsewhere). */
  function renderJobs(list, asset, withErrors = true) {
    for (const [kind, job] of Object.entries(asset.jobs || {})) {
      let row = list.querySelector('[data-job="' + kind + '"]');
      if (!row) {
        row = document.createElement('li');
        row.dataset.job = kind;
        row.innerHTML = '<span class="job-name"></span><span class="badge"></span>' +
          '<div class="bar thin" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span></span></div>' +
          '<p class="error" hidden></p>';
        row.querySelector('.job-name').textContent = kind;
        list.appendChild(row);
      }
      row.dataset.status = job.status;
      badge(row.querySelector('.badge'), job.status);
      setBar(row.querySelector('.bar'), job.status === 'completed' ? 1 : job.progress || 0);
      let error = row.querySelector('.error');
      if (!error) {
        error = document.createElement('p');
        error.className = 'error';
        row.appendChild(error);
      }
      error.hidden = !job.error || !withErrors;
      error.textContent = withErrors ? job.error || '' : '';
    }
  }

  window.mediamill = { watch, settled, setBar, badge, showThumbnail, renderJobs, FINAL };
})();
