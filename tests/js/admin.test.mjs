// The admin dashboard (GET /admin/) in headless Chromium against a gateway
// with live traffic. Driven by tests/admin.rs, which starts the gateway and
// its WebSocket clients (some publishing) and passes:
//   GATEWAY_URL         http://127.0.0.1:<port> of the running gateway
//   ADMIN_TOKEN         its [admin] token
//   EXPECT_CONNECTIONS  how many connections the gateway holds
//   SCREENSHOT          where to save the page (PNG)
//   CHROMIUM            browser binary (default /usr/bin/chromium)
// Prints "PASS dashboard-live" when the page showed the live numbers.
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const GW = required('GATEWAY_URL');
const TOKEN = required('ADMIN_TOKEN');
const EXPECT = Number(required('EXPECT_CONNECTIONS'));
const SHOT = required('SCREENSHOT');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (run through tests/admin.rs)`);
    process.exit(2);
  }
  return v;
}

const watchdog = setTimeout(() => {
  console.log('FAIL watchdog: the dashboard test took over 60 s');
  process.exit(1);
}, 60_000);

const num = (s) => Number(String(s).replace(/[^0-9.]/g, ''));

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
let failed = false;
try {
  // A laptop screen.
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  const requests = [];
  page.on('request', (r) => requests.push(r));

  // The page loads without the token and asks for it.
  const resp = await page.goto(`${GW}/admin/`);
  assert.equal(resp.status(), 200);
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('token'));

  // A wrong token is refused and said so.
  await page.fill('#token', 'wrong-token');
  await page.click('#token-form button');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'bad admin token');

  // (Chromium logs the refused calls as console errors: expected so far, once
  // all three have answered — the page stops polling at the first 401.)
  await page.waitForLoadState('networkidle');
  errors.length = 0;

  // The right one: live numbers.
  await page.fill('#token', TOKEN);
  await page.click('#token-form button');
  await page.waitForFunction(
    (n) => document.getElementById('kpi-connections').textContent === String(n),
    EXPECT,
  );
  await page.waitForFunction(() => {
    const v = (id) => Number(document.getElementById(id).textContent.replace(/[^0-9.]/g, ''));
    return v('kpi-in') > 0 && v('kpi-out') > 0;
  });
  await page.waitForFunction(() => /\d/.test(document.getElementById('kpi-p50').textContent));
  await page.waitForFunction(() => {
    const cell = document.querySelector('#plugins tr[data-plugin="token-bucket"] [data-field="calls_per_sec"]');
    return cell && Number(cell.textContent) > 0;
  });
  // The shadow limiter (the same plugin under another name) agrees.
  await page.waitForFunction(() => {
    const row = document.querySelector('#shadows tr[data-shadow="default/rate_limit"]');
    if (!row) return false;
    const n = (f) => Number(row.querySelector(`[data-field="${f}"]`).textContent.replace(/[^0-9.]/g, ''));
    // (A shadow call timing out on a loaded machine is an error, not a
    // difference: only agreement and no difference are asserted.)
    return n('calls') > 0 && n('same') > 0 && n('differ') === 0;
  });
  // Numbers keep moving: the page polls.
  const stamp = await page.textContent('#status');
  await page.waitForFunction((s) => document.getElementById('status').textContent !== s, stamp);

  const nodeId = await page.textContent('#node-id');
  assert.ok(nodeId && nodeId !== '–', `node id shown: ${nodeId}`);
  const row = page.locator('#tenants tr[data-tenant="default"]');
  assert.equal(await row.locator('[data-field="connections"]').textContent(), String(EXPECT));
  assert.equal(await row.locator('[data-field="websocket"]').textContent(), String(EXPECT));
  assert.equal(await row.locator('[data-field="subscriptions"]').textContent(), String(EXPECT));
  assert.ok(num(await row.locator('[data-field="in"]').textContent()) > 0, 'tenant in/s > 0');
  assert.ok(num(await row.locator('[data-field="out"]').textContent()) > 0, 'tenant out/s > 0');
  assert.ok(num(await row.locator('[data-field="plugin_calls"]').textContent()) > 0, 'plugin calls/s > 0');
  const acme = page.locator('#tenants tr[data-tenant="acme"]');
  assert.equal(await acme.locator('[data-field="connections"]').textContent(), '0');
  const plugin = page.locator('#plugins tr[data-plugin="token-bucket"]');
  assert.equal(await plugin.locator('[data-field="role"]').textContent(), 'rate_limit');
  assert.equal(await plugin.locator('[data-field="status"]').textContent(), 'loaded');
  assert.match(await plugin.locator('[data-field="hash"]').textContent(), /^[0-9a-f]{12}$/);
  assert.equal(await page.locator('#connections tbody tr[data-session]').count(), EXPECT);

  // Every data call carried the token; the token never went into a URL.
  const data = requests.filter((r) => /\/admin\/(stats|plugins|connections|shadow)/.test(r.url()));
  assert.ok(data.length >= 3, 'data calls made');
  for (const r of data) {
    assert.ok(/^Bearer /.test(r.headers().authorization || ''), `${r.url()} carries the token`);
    assert.ok(!r.url().includes(TOKEN), 'no token in URLs');
  }
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchyard.admin.token')), TOKEN);
  // Fits a laptop screen: no horizontal scrolling.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than 1366px`);
  assert.deepEqual(errors, [], 'no page errors');

  await page.screenshot({ path: SHOT, fullPage: true });
  console.log(`screenshot ${SHOT}`);
  console.log(
    `numbers connections=${await page.textContent('#kpi-connections')} in=${await page.textContent('#kpi-in')}/s ` +
      `out=${await page.textContent('#kpi-out')}/s p50=${await page.textContent('#kpi-p50')} p99=${await page.textContent('#kpi-p99')}`,
  );
  console.log('PASS dashboard-live');
} catch (e) {
  failed = true;
  console.log(`FAIL dashboard-live: ${e.stack || e}`);
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
process.exit(failed ? 1 : 0);
