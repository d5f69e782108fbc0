/* The library: a tile whose asset is still queued or processing follows it live (a stream
   or asking every few seconds, as live.js decides), and shows its thumbnail once made. */
(function () {
  'use strict';
  const mm = window.mediamill;
  for (const tile of document.querySelectorAll('.tile[data-asset-id]')) {
    if (mm.FINAL.includes(tile.dataset.status)) continue;
    mm.watch(tile.dataset.assetId, (asset) => {
      tile.dataset.status = asset.status;
      mm.badge(tile.querySelector('.badge'), asset.status);
      const frame = tile.querySelector('.tile-img');
      const url = mm.thumbnail(asset, 256);
      if (!url || frame.querySelector('img')) return;
      const img = document.createElement('img');
      img.alt = '';
      img.src = url;
      const icon = frame.querySelector('.kind-icon');
      if (icon) icon.remove();
      frame.prepend(img);
    });
  }
})();
