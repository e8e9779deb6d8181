// The web patron's page in a real browser (Debian's chromium, headless, driven by
// playwright-core): sign in with the URL's token, see a torrent's bar move while it
// downloads, add one by magnet, pause it, choose files, close one with its data behind the
// confirmation; a wrong token and another Host are refused. Screenshots go to SHOTS.
//
// Usage: node page.mjs URL MAGNET SHOTS
// Prints one JSON line per step ({"step": ..., ...}); exits non-zero at the first failure.
import { chromium } from "playwright-core";

const [url, magnet, shots, moveTo] = process.argv.slice(2);
const said = (step, more = {}) => console.log(JSON.stringify({ step, ...more }));
const origin = new URL(url).origin;
const port = new URL(url).port;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Nothing leaves loopback: no background traffic, no component updates; evil.test is
  // this machine, for the DNS-rebinding check.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--host-resolver-rules=MAP evil.test 127.0.0.1, EXCLUDE localhost",
  ],
});
const fail = async (why) => {
  said("failed", { why });
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
  page.setDefaultTimeout(30000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // Signed in by the URL's token: the token leaves the address bar, the list fills.
  await page.goto(url);
  await page.waitForSelector('li.torrent[data-id="0"]');
  if (page.url().includes("token=")) await fail("the token stayed in the address bar");
  said("signed-in", { address: page.url() });
  await page.screenshot({ path: `${shots}/1-list.png` });

  // The bar moves while it downloads (pushed by the server, not polled).
  const progress = () => page.$eval('li.torrent[data-id="0"] progress', (p) => p.value);
  const first = await progress();
  await page.waitForFunction(
    (before) => document.querySelector('li.torrent[data-id="0"] progress').value > before,
    first,
  );
  said("bar-moved", { from: first, to: await progress() });

  // Add by magnet: a new row appears.
  await page.fill("#add-magnet", magnet);
  await page.click('#add-form button[type="submit"]');
  await page.waitForSelector('li.torrent[data-id="1"]');
  said("added-by-magnet");
  await page.screenshot({ path: `${shots}/2-added.png` });

  // Pause it from its row.
  await page.click('li.torrent[data-id="1"] [data-act="pause"]');
  await page.waitForFunction(() =>
    document.querySelector('li.torrent[data-id="1"] .state')?.textContent === "paused");
  said("paused");

  // Files of torrent 0: uncheck the second, save.
  await page.click('li.torrent[data-id="0"] [data-act="files"]');
  await page.waitForSelector('li.torrent[data-id="0"] .detail input[type="checkbox"]');
  const boxes = await page.$$('li.torrent[data-id="0"] .detail input[type="checkbox"]');
  if (boxes.length < 2) await fail(`expected two files, saw ${boxes.length}`);
  await boxes[1].uncheck();
  await page.click('li.torrent[data-id="0"] .detail button:not([type="button"])');
  await page.waitForFunction(() => {
    const b = document.querySelectorAll('li.torrent[data-id="0"] .detail input[type="checkbox"]');
    return b.length >= 2 && !b[1].checked;
  });
  said("files-chosen");
  await page.screenshot({ path: `${shots}/3-files.png` });

  // Torrent 0's labels, then its data moved, from its row.
  await page.click('li.torrent[data-id="0"] [data-act="place"]');
  const place = 'li.torrent[data-id="0"] .detail form';
  await page.waitForSelector(place);
  await page.fill(`${place}:nth-of-type(2) input`, "films, 4k");
  await page.click(`${place}:nth-of-type(2) button`);
  await page.waitForFunction(() =>
    document.querySelector('li.torrent[data-id="0"] .figures')?.textContent.includes("films, 4k"));
  said("labelled");
  await page.click('li.torrent[data-id="0"] [data-act="place"]');
  await page.waitForSelector(place);
  await page.fill(`${place}:nth-of-type(1) input`, moveTo);
  await page.click(`${place}:nth-of-type(1) button`);
  await page.waitForFunction(() =>
    document.querySelector('li.torrent[data-id="0"] .detail').children.length === 0
    && document.querySelector('li.torrent[data-id="0"] .error').textContent === "");
  said("moved");

  // Close torrent 1 with its data, behind the confirmation: cancel first, then confirm.
  await page.click('li.torrent[data-id="1"] [data-act="close"]');
  await page.click('#confirm button[value="cancel"]');
  await page.waitForFunction(() => !document.querySelector("#confirm").open);
  if (!(await page.$('li.torrent[data-id="1"]'))) await fail("cancel closed the torrent");
  await page.click('li.torrent[data-id="1"] [data-act="close"]');
  await page.check("#confirm-delete");
  await page.screenshot({ path: `${shots}/4-confirm.png` });
  await page.click("#confirm-ok");
  await page.waitForSelector('li.torrent[data-id="1"]', { state: "detached" });
  said("closed-with-data");

  // The broker's settings: one download at once, the alternative limits on, ratio 2.
  await page.click("#settings summary");
  // Filled from the broker first (typing before that would be overwritten).
  await page.waitForSelector("#settings-form[data-loaded]");
  await page.fill("#set-downloads", "1");
  await page.check("#set-alt");
  await page.fill("#set-ratio", "2");
  await page.click('#settings-form button[type="submit"]');
  await page.waitForFunction(() => document.querySelector("#set-downloads").value === "1"
    && document.querySelector("#settings-error").textContent === "");
  said("settings-saved");
  await page.screenshot({ path: `${shots}/4b-settings.png` });

  // Narrow and dark: still one column, no sideways scroll.
  await page.setViewportSize({ width: 380, height: 700 });
  await page.emulateMedia({ colorScheme: "dark" });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: `${shots}/5-phone-dark.png` });
  said("phone", { scroll_width: wide });

  // A change asked from another origin carries no cookie (SameSite=Strict) and is refused.
  const other = await browser.newPage();
  await other.goto("data:text/html,<p>another site</p>");
  await other.evaluate(async (target) => {
    try {
      await fetch(target, { method: "POST", credentials: "include", mode: "no-cors" });
    } catch (_) { /* refused either way */ }
  }, `${origin}/api/torrents/0/pause`);
  said("cross-origin-tried");

  // A wrong token: the page asks for one, saying why.
  const stranger = await browser.newContext();
  const wrong = await stranger.newPage();
  await wrong.goto(`${origin}/#token=${"0".repeat(64)}`);
  await wrong.waitForSelector("#login:not([hidden])");
  await wrong.waitForFunction(() => document.querySelector("#login-error").textContent.length > 0);
  said("wrong-token-refused", { message: await wrong.textContent("#login-error") });

  // Another Host (a DNS-rebinding page): refused before anything is served.
  const rebinding = await wrong.goto(`http://evil.test:${port}/`);
  said("other-host", { status: rebinding.status() });

  if (errors.length) await fail(`page errors: ${errors.join("; ")}`);
  said("done");
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
