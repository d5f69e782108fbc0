/* The detail page: live job states until the asset and all its jobs are final, then a
   reload for the finished preview and player; a confirmation before delete. */
(function () {
  'use strict';
  const mm = window.mediamill;
  const detail = document.getElementById('detail');
  for (const fill of document.querySelectorAll('[data-progress]')) {
    mm.setBar(fill.parentElement, Number(fill.dataset.progress));
  }
  for (const form of document.querySelectorAll('form.confirm')) {
    form.addEventListener('submit', (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  if (!detail || detail.dataset.settled === 'true') return;
  mm.watch(detail.dataset.assetId, (asset) => {
    mm.renderJobs(document.getElementById('jobs'), asset);
    mm.badge(document.getElementById('status'), asset.status);
    if (mm.settled(asset)) window.location.reload();
  });
})();
