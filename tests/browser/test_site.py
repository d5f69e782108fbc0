"""The upload site in headless Chromium: sign in, drop files through the chooser, watch them
upload and turn into media live, browse the library, play the video; a 60 MiB file goes to
the bucket in parts, never through the web process, and resumes after a reload."""

from __future__ import annotations

import shutil

import boto3
import pytest

from tests.browser.conftest import login, new_page, screenshot
from tests.conftest import free_port

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
PHOTOS = ["images/orientation/Landscape_1.jpg", "images/camera/Canon_40D.jpg",
          "images/misc/vacation_2017.jpg"]
VIDEO = "video/fire2.mp4"


def cards(page) -> list[dict]:
    return page.eval_on_selector_all("#cards .upload-card", """cards => cards.map(c => ({
        name: c.querySelector('.name').textContent, status: c.dataset.status,
        progress: Number(c.querySelector('.bar').getAttribute('aria-valuenow')),
        error: c.querySelector('.body > .error').hidden ? ''
            : c.querySelector('.body > .error').textContent,
        thumbWidth: c.querySelector('.thumb img') ? c.querySelector('.thumb img').naturalWidth : 0,
        assetId: c.dataset.assetId || ''}))""")


def choose_files(page, paths) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(".uppy-Dashboard-browse")
    chooser.value.set_files([str(p) for p in paths])


def test_upload_watch_browse_and_play(browser, site, corpus, tmp_path):
    site = site(max_upload=40 * MiB)
    page = new_page(browser)
    login(page, site)
    policy = page.request.get(f"{site.url}/").headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    oversize = tmp_path / "too-big.mp4"
    shutil.copy(corpus / VIDEO, oversize)
    with open(oversize, "r+b") as fh:
        fh.truncate(40 * MiB + 1)
    files = [corpus / p for p in PHOTOS] + [corpus / VIDEO, oversize]
    choose_files(page, files)
    page.wait_for_function(
        "() => document.querySelectorAll('#cards .upload-card').length === 5")
    screenshot(page, "upload-desktop")

    page.wait_for_function("""() => [...document.querySelectorAll('#cards .upload-card')]
        .every(c => ['completed', 'failed', 'refused'].includes(c.dataset.status))""",
                           timeout=240_000)
    by_name = {c["name"]: c for c in cards(page)}
    refused = by_name.pop("too-big.mp4")
    assert refused["status"] == "refused"
    assert refused["error"] == "Too large: the limit is 40.0 MB per file."
    assert page.inner_text("#overall-label") == "Uploaded · 1 refused"
    assert page.get_attribute("#overall .bar", "aria-valuenow") == "100"
    for card in by_name.values():
        assert card["progress"] == 100, card
        assert card["status"] == "completed", card
    page.wait_for_function("""() => [...document.querySelectorAll('#cards .thumb img')]
        .filter(img => img.complete && img.naturalWidth > 0).length === 4""")
    assert all(c["thumbWidth"] > 0 for c in cards(page) if c["name"] != "too-big.mp4")
    screenshot(page, "upload-done-desktop")

    # The library, newest first, then the video's detail page with its player.
    page.goto(f"{site.url}/assets")
    names = page.eval_on_selector_all(".tile .name", "els => els.map(e => e.textContent)")
    assert sorted(names) == sorted([p.split("/")[-1] for p in PHOTOS] + ["fire2.mp4"])
    page.wait_for_function("""() => [...document.querySelectorAll('.tile img')]
        .every(img => img.complete && img.naturalWidth > 0)""")
    screenshot(page, "gallery-desktop")
    page.click(".tile a:has-text('fire2.mp4')")
    page.wait_for_selector("video#player")
    page.wait_for_function("() => document.querySelector('video#player').readyState >= 2",
                           timeout=30_000)
    assert page.eval_on_selector("video#player", "v => v.poster") != ""
    assert page.locator("#jobs > li[data-status=completed]").count() == 3
    assert page.locator("table th:has-text('video codec')").count() == 1
    screenshot(page, "detail-desktop")
    detail_url = page.url

    phone = new_page(browser, 390, 844)
    login(phone, site)
    screenshot(phone, "upload-phone")
    phone.goto(f"{site.url}/assets")
    phone.wait_for_function("""() => [...document.querySelectorAll('.tile img')]
        .every(img => img.complete && img.naturalWidth > 0)""")
    screenshot(phone, "gallery-phone")
    phone.goto(detail_url)
    phone.wait_for_function("() => document.querySelector('video#player').readyState >= 2")
    screenshot(phone, "detail-phone")
    # Reprocess through the CSRF-protected form, then delete.
    phone.click("button:has-text('Reprocess')")
    phone.wait_for_url(detail_url)
    phone.on("dialog", lambda dialog: dialog.accept())
    phone.click("button:has-text('Delete')")
    phone.wait_for_url(f"{site.url}/assets")
    assert phone.locator(".tile .name:has-text('fire2.mp4')").count() == 0
    assert page.errors == [] and phone.errors == [], page.errors + phone.errors


def test_many_assets_waiting_for_workers_do_not_stall_the_page(browser, site, tmp_path):
    """Each card follows its asset live, and a browser opens at most 6 connections to a host:
    a stream for every waiting asset once took them all, and the seventh file's upload
    calls never left the browser. Nine photos, no worker to finish them: all nine go up,
    and each card shows its asset `queued`, streamed or asked for."""
    from PIL import Image

    site = site(queues=())
    page = new_page(browser)
    login(page, site)
    photos = []
    for n in range(9):
        photos.append(tmp_path / f"photo_{n}.jpg")
        Image.new("RGB", (64, 48), (n * 25, 80, 160)).save(photos[-1])

    choose_files(page, photos)

    page.wait_for_function("""() => {
        const cards = [...document.querySelectorAll('#cards .upload-card')];
        return cards.length === 9 && cards.every(c => c.dataset.status === 'queued'); }""",
                           timeout=60_000)
    assert page.inner_text("#overall-label").startswith("Uploaded")
    assert page.errors == [], page.errors


def test_large_file_goes_to_the_bucket_in_parts_and_resumes(browser, site, corpus, tmp_path):
    site = site(queues=("metadata", "thumbnails"))
    big = tmp_path / "big photo.jpg"
    head = (corpus / PHOTOS[0]).read_bytes()
    big.write_bytes(head + bytes(range(256)) * ((60 * MiB - len(head)) // 256))
    size = big.stat().st_size
    page = new_page(browser)
    login(page, site)
    puts: list[tuple[int, str]] = []  # (page load, part number)
    loads = [0]
    page.on("request", lambda r: puts.append((loads[0], r.method, r.url)))
    cdp = page.context.new_cdp_session(page)
    throttle = {"offline": False, "latency": 0, "downloadThroughput": -1,
                "uploadThroughput": 12 * MiB}  # bytes per second: ~5 s for 60 MiB
    cdp.send("Network.emulateNetworkConditions", throttle)
    before = site.counter.body_bytes

    page.evaluate("""() => { window.partsDone = 0;
        window.mediamillUppy.on('s3-multipart:part-uploaded', () => { window.partsDone++; });
    }""")
    choose_files(page, [big])
    page.wait_for_function("() => window.partsDone >= 2")
    screenshot(page, "upload-large-desktop")
    loads[0] = 1
    page.reload()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.emulateNetworkConditions", throttle)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("""() => { const c = document.querySelector('#cards .upload-card');
        return c && Number(c.querySelector('.bar').getAttribute('aria-valuenow')) > 0; }""")
    screenshot(page, "upload-large-phone")
    page.wait_for_function("""() => { const c = document.querySelector('#cards .upload-card');
        return c && c.dataset.status === 'completed'; }""", timeout=120_000)
    card = cards(page)[0]
    assert card["progress"] == 100
    assert page.eval_on_selector("#overall .bar", "b => b.getAttribute('aria-valuenow')") == "100"

    part_puts = [(load, url) for load, method, url in puts
                 if method == "PUT" and "partNumber=" in url]
    creates = [load for load, method, url in puts
               if method == "POST" and url.endswith("/api/v1/uploads")]
    assert creates == [0], puts  # one multipart upload, resumed after the reload
    assert all(url.startswith(site.stack.env["MEDIAMILL_S3_ENDPOINT_URL"])
               for _, url in part_puts), part_puts  # straight to the bucket
    first = {int(url.split("partNumber=")[1].split("&")[0]) for load, url in part_puts if not load}
    second = {int(url.split("partNumber=")[1].split("&")[0]) for load, url in part_puts if load}
    assert first and second and first | second == set(range(1, 9)), (first, second)
    assert len(second) < 8, "after the reload, parts already stored were sent again"
    # The web process never received the file's bytes: only small JSON calls.
    assert site.counter.body_bytes - before < 256 * 1024, site.counter.body_bytes - before

    bucket = site.stack.settings.storage_url.split("/")[2]
    head = boto3.client("s3", endpoint_url=site.stack.env["MEDIAMILL_S3_ENDPOINT_URL"]) \
        .head_object(Bucket=bucket, Key=f"media/assets/{card['assetId']}/original")
    assert head["ContentLength"] == size
    assert page.errors == [], page.errors


def test_refusals_failures_and_a_second_sign_in(browser, site, corpus, tmp_path):
    """A refused file is said why and never sent again; a failed job's reason shows once,
    as the card's alert naming the job; signing in again in another tab leaves open
    pages working; site errors are pages, not JSON."""
    site = site(queues=("metadata", "thumbnails"))
    page = new_page(browser)
    login(page, site)
    creates: list[str] = []
    page.on("request", lambda r: creates.append(r.post_data or "") if r.method == "POST"
            and r.url.endswith("/api/v1/uploads") else None)
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n" * 100)
    choose_files(page, [notes, corpus / "images/pillow/truncated_jpeg.jpg"])
    page.wait_for_function("""() => {
        const c = [...document.querySelectorAll('#cards .upload-card')];
        return c.length === 2 && c.every(x => ['refused', 'failed'].includes(x.dataset.status))
            && c.every(x => [...x.querySelectorAll('.jobs li')].every(
                j => ['completed', 'failed'].includes(j.dataset.status))); }""", timeout=120_000)
    by_name = {c["name"]: c for c in cards(page)}
    assert by_name["notes.txt"]["status"] == "refused"
    assert by_name["notes.txt"]["error"].startswith("The file is not an image or video")
    broken = page.locator(".upload-card", has_text="truncated_jpeg.jpg")
    alert = broken.locator(".body > .error")  # once, naming the job, and announced
    assert alert.is_visible() and alert.get_attribute("role") == "alert"
    assert alert.inner_text().startswith("Thumbnails failed: The image is truncated or corrupt")
    assert broken.locator(".jobs .error:visible").count() == 0
    assert broken.locator("[data-job=thumbnails]").get_attribute("data-status") == "failed"
    assert page.evaluate("() => window.mediamillUppy.getFiles().map(f => f.name)") == [
        "truncated_jpeg.jpg"]
    # Uppy's own bar speaks of the files it still holds, which all arrived.
    status_bar = page.locator(".uppy-StatusBar")
    assert "failed" not in status_bar.inner_text().lower(), status_bar.inner_text()
    screenshot(page, "upload-refusals-desktop")

    # Sign in again in another tab of the same browser: this tab's next upload still works.
    other = page.context.new_page()
    other.goto(f"{site.url}/login")
    other.fill("#api_key", site.key)
    other.click("main button[type=submit]")  # not the top bar's Sign out
    other.wait_for_url(f"{site.url}/")
    # A second batch, through the Dashboard's own file input ("Add more").
    page.click(".uppy-DashboardContent-addMore")
    page.set_input_files("input.uppy-Dashboard-input[type=file] >> nth=0", str(corpus / PHOTOS[0]))
    page.wait_for_function("""() => {
        const c = [...document.querySelectorAll('#cards .upload-card')]
            .find(x => x.querySelector('.name').textContent === 'Landscape_1.jpg');
        return c && c.dataset.status === 'completed'; }""", timeout=120_000)
    assert sum('"notes.txt"' in body for body in creates) == 1, creates  # never sent again

    # A sign-in form from before a sign-out elsewhere, and a missing asset: pages that say so.
    stale = page.context.new_page()
    stale.goto(f"{site.url}/login")
    other.click("button:has-text('Sign out')")
    stale.fill("#api_key", site.key)
    stale.click("main button[type=submit]")
    stale.wait_for_selector("main .alert")
    assert "sign-in form expired" in stale.inner_text("main .alert")  # a page, not JSON
    stale.fill("#api_key", site.key)  # that page's form carries a fresh token
    stale.click("main button[type=submit]")
    stale.wait_for_url(f"{site.url}/")
    missing = stale.goto(f"{site.url}/assets/nope")
    assert missing.status == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert stale.inner_text("h1") == "Not found"
    screenshot(stale, "not-found-desktop")
    assert page.errors == [], page.errors


def test_a_file_too_big_to_keep_over_a_reload_is_picked_again_and_resumes(browser, site, corpus,
                                                                          tmp_path):
    """The browser keeps files of up to 512 MiB over a reload (IndexedDB); a bigger one comes
    back as a ghost: its card asks for it again, and once it is picked again the same
    multipart upload carries on where it stopped."""
    site = site(queues=())
    big = tmp_path / "long take.mp4"
    with open(big, "wb") as fh:
        fh.write((corpus / VIDEO).read_bytes()[:64 * 1024])
        fh.truncate(513 * MiB)  # the rest reads as zeros
    page = new_page(browser)
    login(page, site)
    puts: list[tuple[int, str, str]] = []  # (page load, method, url)
    loads = [0]
    page.on("request", lambda r: puts.append((loads[0], r.method, r.url)))
    page.evaluate("""() => { window.partsDone = 0;
        window.mediamillUppy.on('s3-multipart:part-uploaded', () => { window.partsDone++; });
    }""")
    choose_files(page, [big])
    page.wait_for_function("() => window.partsDone >= 3")
    loads[0] = 1
    page.reload()

    page.wait_for_function("""() => { const c = document.querySelector('#cards .upload-card');
        return c && c.dataset.status === 'paused'; }""")
    assert "pick it again" in cards(page)[0]["error"]
    screenshot(page, "upload-ghost-desktop")
    page.click("text=Add more")
    choose_files(page, [big])
    page.wait_for_function("""() => { const c = document.querySelector('#cards .upload-card');
        return c && c.dataset.status === 'queued'; }""", timeout=180_000)

    creates = [load for load, method, url in puts
               if method == "POST" and url.endswith("/api/v1/uploads")]
    assert creates == [0], puts  # one multipart upload, resumed after the reload
    second = [url for load, method, url in puts if load and method == "PUT"]
    assert 0 < len(second) < 65, len(second)  # the parts stored before were not sent again
    assert page.errors == [], page.errors


def test_cancelling_a_paused_upload_frees_its_parts(browser, site, corpus, tmp_path):
    """A ghost's multipart upload is not running in Uppy, which aborts only running ones:
    its card's Cancel aborts it on the server (DELETE), so its parts do not wait for the
    daily sweep."""
    site = site(queues=())
    big = tmp_path / "long take.mp4"
    with open(big, "wb") as fh:
        fh.write((corpus / VIDEO).read_bytes()[:64 * 1024])
        fh.truncate(513 * MiB)
    page = new_page(browser)
    login(page, site)
    page.evaluate("""() => { window.partsDone = 0;
        window.mediamillUppy.on('s3-multipart:part-uploaded', () => { window.partsDone++; });
    }""")
    choose_files(page, [big])
    page.wait_for_function("() => window.partsDone >= 2")
    page.reload()
    page.wait_for_function("""() => { const c = document.querySelector('#cards .upload-card');
        return c && c.dataset.status === 'paused'; }""")

    with page.expect_request(lambda r: r.method == "DELETE" and "/api/v1/uploads/" in r.url) \
            as deleted:
        page.click("#cards .upload-card .cancel")

    assert deleted.value.response().status == 204
    assert cards(page)[0]["status"] == "cancelled"
    assert page.errors == [], page.errors


def test_the_library_follows_assets_still_being_processed(browser, site, corpus):
    """Opened while its photos wait for workers (after a reload of the upload page, say), the
    library shows them queued, then completed with their thumbnails, without a reload."""
    import requests

    site = site(queues=())
    headers = {"Authorization": f"Bearer {site.key}"}
    for name in PHOTOS[:2]:
        with open(corpus / name, "rb") as fh:
            answer = requests.post(f"{site.url}/api/v1/assets", headers=headers,
                                   files={"file": (name.split("/")[-1], fh)}, timeout=30)
        assert answer.status_code == 202, answer.text
    page = new_page(browser)
    login(page, site)
    page.goto(f"{site.url}/assets")
    assert page.eval_on_selector_all(".tile .badge", "els => els.map(e => e.textContent)") \
        == ["queued", "queued"]
    assert page.locator(".tile img").count() == 0
    page.evaluate("() => { window.notReloaded = true; }")

    for queue in ("metadata", "thumbnails"):
        site.stack.start_worker(queue)
    page.wait_for_function("""() => [...document.querySelectorAll('.tile')].every(t =>
        t.dataset.status === 'completed' && t.querySelector('.badge').textContent === 'completed'
        && t.querySelector('img') && t.querySelector('img').naturalWidth > 0)""",
                           timeout=120_000)
    assert page.evaluate("() => window.notReloaded") is True
    screenshot(page, "gallery-live")
    assert page.errors == [], page.errors



LONG_NAME = "Ünïcödé 夏の思い出 — café terrace at dusk, the long version with everyone in it"
# What sticks out sideways: the page itself, and any card whose content is wider than it
# (a table inside a scrolling box of its own does not count).
WIDER_THAN_PHONE = """() => [document.documentElement, ...document.querySelectorAll('.card')]
    .filter(el => el.scrollWidth > el.clientWidth)
    .map(el => `${el.className || el.tagName}: ${el.scrollWidth} > ${el.clientWidth}`)"""
# On a detail page: the rows of the deliveries table, and the badges and event names broken
# over two lines or more (a text's line count: the distinct tops of its rectangles).
DELIVERIES = """() => {
    const card = [...document.querySelectorAll('section.card')]
        .find(c => c.querySelector('h2')?.textContent === 'Webhook deliveries');
    const lines = el => {
        const range = document.createRange();
        range.selectNodeContents(el);
        return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
    };
    const words = [...document.querySelectorAll('.badge'),
                   ...card.querySelectorAll('tr > td:first-child')];
    return {rows: card.querySelectorAll('tr:has(td)').length,
            broken: words.filter(el => lines(el) > 1).map(el => el.textContent)};
}"""


def log_deliveries(site, asset_id: str, receiver) -> None:
    """Deliveries of the asset's events as the webhooks worker logs them: each one a real
    POST (to a receiver answering 200 or 500, or to a closed port) recorded by
    `deliveries.record`, so the page shows every status with real answers and errors."""
    from media import deliveries, webhooks
    from media.records import Delivery, Tenant, utcnow

    closed = f"http://127.0.0.1:{free_port()}/hooks/mediamill"
    long_url = f"{receiver.url}/tenants/alice/assets/{asset_id}?signature=" + "9f" * 40
    targets = [("asset.metadata.completed", receiver.url, ()),
               ("asset.thumbnails.completed", long_url, (60,)),
               ("asset.completed", closed, (60,)),
               ("asset.completed", closed, ())]
    with site.stack.app.extensions["mediamill"].db.session() as session:
        tenant = session.query(Tenant).one()
        for n, (event_type, url, schedule) in enumerate(targets):
            body = webhooks.body_for(event_type, utcnow(), {"id": asset_id})
            row = Delivery(message_id=f"msg_{asset_id}_{n}", tenant_id=tenant.id,
                           asset_id=asset_id, url=url, event_type=event_type, body=body)
            session.add(row)
            session.flush()
            headers = webhooks.sign(tenant.webhook_secret, row.message_id, 1_700_000_000, body)
            attempt = webhooks.send(url, body, headers, allow_private=True)
            deliveries.record(session, row.id, attempt, schedule)


def test_every_page_fits_a_phone(browser, site, corpus):
    """On a phone (390x844, and 320 wide) nothing scrolls sideways: a detail page's webhook
    deliveries stay inside their card, and badges and event names are never broken mid-word;
    on an image's page and a video's, both with a long unicode filename, and on every other
    page."""
    from tests.helpers import upload, wait_final
    from tests.receiver import Receiver

    site = site(queues=("metadata", "thumbnails", "video"))
    client = site.stack.client()
    sources = {".jpg": corpus / PHOTOS[0], ".mp4": corpus / "video/example.mp4"}
    ids = [upload(client, site.key, path, filename=LONG_NAME + ext).json["id"]
           for ext, path in sources.items()]
    receiver = Receiver(answer=lambda r: 500 if "thumbnails" in r.json["type"] else 200).start()
    try:
        for asset_id in ids:
            assert wait_final(client, site.key, asset_id)["status"] == "completed"
            log_deliveries(site, asset_id, receiver)
    finally:
        receiver.stop()

    pages = {"upload": "/", "gallery": "/assets", "detail-image": f"/assets/{ids[0]}",
             "detail-video": f"/assets/{ids[1]}"}
    phone, wide = new_page(browser, 390, 844), {}
    phone.goto(f"{site.url}/login")
    wide["login"] = phone.evaluate(WIDER_THAN_PHONE)
    login(phone, site)
    for width in (390, 320):  # the phone of the report; the narrowest WCAG asks to reflow at
        phone.set_viewport_size({"width": width, "height": 844})
        for name, path in pages.items():
            phone.goto(f"{site.url}{path}")
            if width == 390:
                screenshot(phone, f"{name}-long-name-phone")
            wide[f"{name} at {width}"] = phone.evaluate(WIDER_THAN_PHONE)
            if name.startswith("detail"):
                deliveries = phone.evaluate(DELIVERIES)
                assert deliveries["rows"] == 4, deliveries
                wide[f"{name} at {width}: broken words"] = deliveries["broken"]
    assert {name: found for name, found in wide.items() if found} == {}
    assert phone.errors == [], phone.errors
