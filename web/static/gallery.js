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
      mm.showThumbnail(tile.querySelector('.tile-img'), asset);
    });
  }
})();
