/* Live asset status over server-sent events (GET /api/v1/assets/{id}/events).
   The session cookie authenticates the stream; it ends by itself after a final state. */
(function () {
  'use strict';
  const FINAL = ['completed', 'failed'];

  function watch(assetId, onAsset) {
    const source = new EventSource('/api/v1/assets/' + encodeURIComponent(assetId) + '/events');
    const handle = (event) => {
      const asset = JSON.parse(event.data);
      onAsset(asset);
      if (FINAL.includes(asset.status)) source.close();
    };
    source.addEventListener('state', handle);
    source.addEventListener('progress', handle);
    return source;
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

  /* Render the jobs of `asset` into `list` (an <ul>), one row per job. */
  function renderJobs(list, asset) {
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
      error.hidden = !job.error;
      error.textContent = job.error || '';
    }
  }

  window.mediamill = { watch, setBar, badge, thumbnail, renderJobs, FINAL };
})();
