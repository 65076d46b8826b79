// Drives the console page in headless Chromium for tests/console.rs, one
// step at a time: it waits on stdin for the test's "next" before each step,
// and says on stdout what the page showed ("ok STEP ..." or "fail STEP ...").
//   node check.mjs ringlb URL CHROMIUM SCREENSHOT TARGET_A TARGET_B
//   node check.mjs autoscale URL CHROMIUM SCREENSHOT
import { chromium } from "playwright-core";
import readline from "node:readline";

const [mode, url, executablePath, screenshot, a, b] = process.argv.slice(2);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value;
// Points a chart must have before the screenshot (more for the docs' one).
const minPoints = Number(process.env.CONSOLE_MIN_POINTS || 1);
let failed = false;
const say = (s) => { failed ||= s.startsWith("fail"); console.log(s); };

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
const row = (addr) => page.locator(`tr[data-target="${addr}"]`);
const within = async (step, seconds, test) => {
  const started = Date.now();
  while (Date.now() - started < seconds * 1000) {
    if (await test().catch(() => false)) {
      say(`ok ${step} ${((Date.now() - started) / 1000).toFixed(1)}`);
      return;
    }
    await page.waitForTimeout(200);
  }
  say(`fail ${step}: ${await page.locator("main").innerText()}`);
};
const text = async (selector) => (await page.locator(selector).first().innerText()).trim();
const points = async (selector) => Number(await page.locator(selector).first().getAttribute("data-points"));

// ringlb's page: health, a drain's countdown, traffic charts, events.
async function ringlb() {
  await within("loaded", 10, async () =>
    (await row(a).locator(".health").innerText()) === "healthy" &&
    (await row(b).locator(".health").innerText()) === "healthy");
  await next(); // the test has stopped A's backend
  await within("unhealthy", 10, async () => (await row(a).locator(".health").innerText()) === "unhealthy");
  await next(); // the test has taken B out of the targets file
  await within("draining", 10, async () => {
    const health = await row(b).locator(".health").innerText();
    const left = await row(b).locator(".drain").innerText();
    return health === "draining" && /^\d+ s left$/.test(left);
  });
  await next(); // traffic has flowed for two samples
  await within("chart", 20 + minPoints * 6, async () =>
    (await points('tr[data-listener="web"] svg.spark')) >= minPoints);
  await within("events", 5, async () => (await page.locator("#events li").count()) >= 3);
}

// The autoscaler's page: the group's size, its metric over time, its
// decisions with their figures.
async function autoscale() {
  const group = 'section[data-group="web"]';
  await within("loaded", 10, async () =>
    (await text(`${group} .desired`)) === "1" && (await text(`${group} .in-service`)) === "1");
  await next(); // the test has put load on the group
  await within("grown", 30, async () => Number(await text(`${group} .desired`)) >= 2);
  await within("chart", 10 + minPoints * 2, async () =>
    (await points(`${group} svg.chart.metric`)) >= Math.max(3, minPoints));
  await within("activity", 5, async () =>
    (await page.locator("#events li", { hasText: "scale out web 1 -> 2" }).count()) === 1);
}

try {
  await page.goto(url);
  await (mode === "autoscale" ? autoscale() : ringlb());
  await page.screenshot({ path: screenshot });
  say("ok screenshot");
} catch (e) {
  say(`fail error ${e}`);
} finally {
  await browser.close();
  process.exit(failed ? 1 : 0);
}
