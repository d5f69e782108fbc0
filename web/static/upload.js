/* The upload page: Uppy's Dashboard (drop, pick, per-file and overall progress, cancel)
   with @uppy/aws-s3 multipart hooks mapped one to one onto /api/v1/uploads, Golden
   Retriever to resume after a reload, and a card per file that follows the asset's jobs
   live once the upload is complete. Parts go straight to storage with presigned URLs. */
(function () {
  'use strict';
  const mm = window.mediamill;
  const { Uppy, Dashboard, AwsS3, GoldenRetriever } = window.Uppy;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const root = document.getElementById('uploader');
  const MiB = 1024 * 1024;
  const MIN_PART = Number(root.dataset.minPartSize);
  const SIGN_BATCH = 100;
  const cards = new Map();        // Uppy file id -> card element
  const signed = new Map();       // upload id -> {expires, urls: {partNumber: url}}
  const signing = new Map();      // upload id -> the batch of part URLs being signed

  /* Same rule as web/api/uploads.py part_size_for: at least 8 MiB, at most 10 000 parts. */
  const partSize = (size) => Math.max(MIN_PART, Math.ceil(size / 10000 / MiB) * MiB);

  function fmtBytes(n) {
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }  // as Uppy shows sizes
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  async function api(method, path, body, signal) {
    const response = await fetch('/api/v1/uploads' + path, {
      method, signal, credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(readable(response.status, data));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function readable(status, problem) {
    const detail = problem.detail || problem.title || ('The server answered ' + status + '.');
    if (status === 413) {
      const limit = /limit of (\d+) bytes/.exec(detail);
      return limit ? 'Too large: the limit is ' + fmtBytes(Number(limit[1])) + ' per file.' : 'Too large. ' + detail;
    }
    if (status === 415) return detail;  // the server's sentence already says what is accepted
    if (status === 401) return 'Your session has ended; sign in again.';
    return detail;
  }

  /* A presigned URL for one part, signed SIGN_BATCH parts at a time. Uppy asks for several
     parts at once: those wait for a batch already being signed instead of each asking for
     a batch of their own (a 2 GB file made 11 requests for its 244 parts, not 3). */
  async function partUrl(uploadId, partNumber, partCount, signal) {
    for (;;) {
      const cached = signed.get(uploadId);
      if (cached && cached.urls[partNumber] && cached.expires > Date.now()) return cached.urls[partNumber];
      const pending = signing.get(uploadId);
      if (!pending) break;
      await pending.catch(() => null);  // its own caller sees its error
    }
    const numbers = [];
    for (let n = partNumber; n <= partCount && numbers.length < SIGN_BATCH; n += 1) numbers.push(n);
    const batch = api('POST', '/' + uploadId + '/parts', { part_numbers: numbers }, signal);
    signing.set(uploadId, batch);
    try {
      const answer = await batch;
      // Re-sign a minute early so a URL never expires in flight.
      signed.set(uploadId, { urls: answer.urls, expires: Date.now() + (answer.expires_in - 60) * 1000 });
      return answer.urls[partNumber];
    } finally {
      signing.delete(uploadId);
    }
  }

  const uppy = new Uppy({ id: 'mediamill', autoProceed: true, allowMultipleUploadBatches: true });
  uppy.use(Dashboard, {
    inline: true, target: root, width: '100%', height: 320, theme: 'light',
    proudlyDisplayPoweredByUppy: false, showProgressDetails: true,
    hideRetryButton: false, showRemoveButtonAfterComplete: false, doneButtonHandler: null,
    note: 'Photos and videos, up to ' + fmtBytes(Number(root.dataset.maxUpload)) + ' each',
  });
  uppy.use(AwsS3, {
    limit: 6,                              // parallel part requests
    retryDelays: [0, 1000, 3000, 5000],    // each part is retried on its own
    shouldUseMultipart: () => true,
    getChunkSize: (file) => partSize(file.size),
    async createMultipartUpload(file) {
      const upload = await api('POST', '', { filename: file.name, content_type: file.type || '', size: file.size });
      uppy.setFileMeta(file.id, { partCount: upload.part_count });
      return { uploadId: upload.id, key: upload.id };
    },
    async listParts(file, { uploadId, signal }) {
      const upload = await api('GET', '/' + uploadId, undefined, signal);
      uppy.setFileMeta(file.id, { partCount: upload.part_count });
      return upload.parts.map((p) => ({ PartNumber: p.part_number, ETag: p.etag, Size: p.size }));
    },
    async signPart(file, { uploadId, partNumber, signal }) {
      const count = uppy.getFile(file.id).meta.partCount || Math.ceil(file.size / partSize(file.size));
      return { method: 'PUT', url: await partUrl(uploadId, partNumber, count, signal) };
    },
    async completeMultipartUpload(file, { uploadId, parts, signal }) {
      // All bytes are in; the server now reads the file once to check its type and digest
      // (about 30 s for 2 GB), so the card says so rather than sitting at 'uploading 100%'.
      setStatus(cardFor(file), 'checking');
      const body = { parts: parts.map((p) => ({ part_number: p.PartNumber, etag: p.ETag })) };
      const asset = await api('POST', '/' + uploadId + '/complete', body, signal);
      return { location: asset.original_url, asset };
    },
    async abortMultipartUpload(file, { uploadId }) {
      signed.delete(uploadId);
      await api('DELETE', '/' + uploadId);
    },
  });
  const GHOST_OVER = 512 * MiB;  // bigger files are not copied into the browser's storage
  uppy.use(GoldenRetriever, { indexedDB: { maxFileSize: GHOST_OVER, maxTotalSize: 1024 * MiB } });

  /* ---- cards ---- */
  const list = document.getElementById('cards');
  const template = document.getElementById('card-template');

  function cardFor(file) {
    if (cards.has(file.id)) return cards.get(file.id);
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.fileId = file.id;
    card.querySelector('.name').textContent = file.name;
    card.querySelector('.name').title = file.name;
    card.querySelector('.size').textContent = fmtBytes(file.size || 0);
    card.querySelector('.kind-icon').classList.add((file.type || '').startsWith('video/') ? 'video' : 'image');
    card.querySelector('.bar').setAttribute('aria-label', 'Upload of ' + file.name);
    card.querySelector('.cancel').addEventListener('click', () => uppy.removeFile(file.id));
    list.prepend(card);
    cards.set(file.id, card);
    return card;
  }

  function setStatus(card, status) {
    card.dataset.status = status;
    mm.badge(card.querySelector('.badge'), status);
    card.querySelector('.cancel').hidden = !['uploading', 'paused'].includes(status);
  }

  function setUploadProgress(card, fraction) {
    const pct = mm.setBar(card.querySelector('.bar'), fraction);
    card.querySelector('.percent').textContent = pct + '%';
  }

  function showError(card, message) {
    const el = card.querySelector('.body > .error');  // not a job row's own error line
    el.textContent = message;
    el.hidden = false;
  }

  function follow(card, asset) {
    const open = card.querySelector('.open');
    open.href = '/assets/' + asset.id;
    open.hidden = false;
    card.querySelector('.thumb').href = open.href;
    card.dataset.assetId = asset.id;
    setUploadProgress(card, 1);
    const update = (current) => {
      setStatus(card, current.status);
      mm.renderJobs(card.querySelector('.jobs'), current, false);  // the reason: in the alert
      mm.showThumbnail(card.querySelector('.thumb'), current);
      const failed = Object.entries(current.jobs || {}).find(([, job]) => job.error);
      if (current.status === 'failed' && failed) {
        const kind = failed[0].charAt(0).toUpperCase() + failed[0].slice(1);
        showError(card, kind + ' failed: ' + failed[1].error);
      }
    };
    update(asset);
    if (!mm.settled(asset)) mm.watch(asset.id, update);
  }

  uppy.on('file-added', (file) => {
    const card = cardFor(file);
    const resumed = card.dataset.status === 'paused';  // a file picked again after a reload
    setStatus(card, 'uploading');
    card.querySelector('.body > .error').hidden = true;  // what it said before no longer holds
    if (resumed) {
      // Its multipart upload carries on: listParts skips the parts storage holds.
      window.setTimeout(() => uppy.retryUpload(file.id), 0);
    }
  });
  uppy.on('upload-progress', (file, progress) => {
    if (!file || !progress.bytesTotal) return;
    setUploadProgress(cardFor(file), progress.bytesUploaded / progress.bytesTotal);
  });
  uppy.on('upload-success', (file, response) => {
    const card = cardFor(file);
    if (response && response.body && response.body.asset) follow(card, response.body.asset);
  });
  const refused = new Set();  // files the server refused for good: never sent again
  uppy.on('upload-error', (file, error) => {
    if (!file) return;
    const card = cardFor(file);
    setStatus(card, 'refused');
    showError(card, error && error.message ? error.message.replace(/^.*?Error: /, '') : 'The upload failed.');
    const status = error && (error.status || (error.cause && error.cause.status));
    if (status >= 400 && status < 500 && status !== 401) {
      // Too large, not media, malformed: the same file would be refused again, so it leaves
      // Uppy (which would otherwise send it again with the next batch, or on Retry).
      refused.add(file.id);
      window.setTimeout(() => {
        uppy.removeFile(file.id);
        // Its card says why. Uppy's own bar would go on saying "Upload failed" over files
        // that all arrived: it speaks of the files still in Uppy from now on.
        const left = uppy.getFiles().find((f) => f.error);
        uppy.setState({ error: left ? left.error : null });
      }, 0);
    }
  });
  uppy.on('file-removed', (file) => {  // by the card's Cancel or the Dashboard's own button
    const card = cards.get(file.id);
    if (!card || !['uploading', 'paused', 'checking'].includes(card.dataset.status)) return;
    const paused = card.dataset.status === 'paused';
    setStatus(card, 'cancelled');
    card.querySelector('.body > .error').hidden = true;
    // Uppy aborts only the uploads it is running: a paused one's parts are freed here.
    const uploadId = file.s3Multipart && file.s3Multipart.uploadId;
    if (paused && uploadId) api('DELETE', '/' + uploadId).catch(() => null);
  });
  uppy.on('restored', () => {
    // Golden Retriever brought back files and their multipart state from before a reload:
    // carry on at once (listParts skips what storage already holds).
    if (uppy.getState().recoveredState) uppy.emit('restore-confirmed');
    for (const file of uppy.getFiles()) {
      const card = cardFor(file);
      const body = file.response && file.response.body;
      if (body && body.asset) follow(card, body.asset);
      else if (file.isGhost) {
        // Too big for the browser to keep over a reload (over GHOST_OVER, or past the total
        // it keeps): only its name and upload came back.
        setStatus(card, 'paused');
        setUploadProgress(card, file.progress && file.size ? (file.progress.bytesUploaded || 0) / file.size : 0);
        showError(card, 'The browser could not keep this file over the reload: pick it again ' +
          'with “Add more” and it carries on where it stopped.');
      } else {
        setStatus(card, 'uploading');
        setUploadProgress(card, file.progress && file.size ? (file.progress.bytesUploaded || 0) / file.size : 0);
      }
    }
  });

  /* ---- overall ---- */
  const overall = document.getElementById('overall');
  /* Bytes sent of every file still going or done; refused and cancelled files drop out. */
  function updateOverall() {
    let sent = 0, total = 0, failed = 0, active = 0;
    for (const file of uppy.getFiles()) {
      if (file.error) { failed += 1; continue; }
      total += file.size || 0;
      sent += file.progress.uploadComplete ? file.size || 0 : file.progress.bytesUploaded || 0;
      if (!file.progress.uploadComplete) active += 1;
    }
    const notSent = failed + refused.size;
    if (!total && !notSent) return;
    overall.hidden = false;
    const pct = mm.setBar(overall.querySelector('.bar'), total ? sent / total : 1);
    document.getElementById('overall-text').textContent = pct + '%';
    document.getElementById('overall-label').textContent =
      (active ? 'Uploading' : 'Uploaded') + (notSent ? ' · ' + notSent + ' refused' : '');
  }
  for (const event of ['upload-progress', 'upload-success', 'upload-error', 'file-removed', 'restored']) {
    uppy.on(event, () => window.requestAnimationFrame(updateOverall));
  }

  window.mediamillUppy = uppy;  // for tests and the curious
})();
