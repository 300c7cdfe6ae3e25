// Plays a person in headless Chromium (the Debian package, driven by the pinned npm playwright-core)
// through the real pages of a sign-in: the broker's pages and the IdP's own login and consent pages.
//
//   node browser.mjs <node_modules dir> <plan JSON>
//
// plan: {
//   "start": URL to open first,
//   "user": login name at the IdP,
//   "consent": "approve" | "deny" | "stop" (on the broker's consent page: click, or stop there),
//   "idp": on the broker's choice of IdP, the `name` of the one to pick (default: the first),
//   "user_code": code to type on the broker's device page (when it asks),
//   "at_idp": "abort" to cancel at the IdP's login page instead of signing in,
//   "stop_prefix": stop when the browser is sent to a URL starting with this (a client's loopback
//                  callback; the request is answered here and never reaches the network),
//   "allow_ports": the loopback ports of the broker and the IdP (the start page's port and its
//                  `redirect_uri`'s are allowed too),
//   "forge": optional: on the broker's consent page, replace its CSRF token with this value first
// }
// Prints one JSON line: {"final_url", "status", "title", "text", "steps": [...], "headers": {...}}.
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, planText] = process.argv.slice(2);
const plan = JSON.parse(planText);
const { chromium } = await import(pathToFileURL(path.join(modules, 'playwright-core', 'index.mjs')));

// Port 0 may land on a port Chromium blocks as unsafe (ERR_UNSAFE_PORT): allow the plan's ports (the
// broker's, the IdPs'), the start page's and the client's loopback redirect's.
const ports = new Set((plan.allow_ports || []).map(String));
const start = new URL(plan.start);
if (start.port) ports.add(start.port);
const redirect = start.searchParams.get('redirect_uri');
if (redirect && new URL(redirect).port) ports.add(new URL(redirect).port);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage',
    `--explicitly-allowed-ports=${[...ports].join(',')}`],
});
const steps = [];
let finalUrl = null;
let lastResponse = null;
try {
  const context = await browser.newContext();
  // Loopback only: the IdP's pages import web fonts from the internet, and a test never leaves the machine.
  await context.route((url) => !['127.0.0.1', '[::1]', 'localhost'].includes(url.hostname),
    (route) => route.abort('blockedbyclient'));
  const page = await context.newPage();
  if (plan.stop_prefix) {
    await page.route((url) => url.href.startsWith(plan.stop_prefix), async (route) => {
      finalUrl = route.request().url();
      await route.fulfill({ status: 200, contentType: 'text/plain', body: 'signed in; you may close this window' });
    });
  }
  // Redirect hops are not routed by playwright: the request itself says where the browser was sent.
  if (plan.stop_prefix) {
    page.on('request', (r) => { if (!finalUrl && r.url().startsWith(plan.stop_prefix)) finalUrl = r.url(); });
  }
  page.on('response', (r) => { if (r.request().isNavigationRequest()) lastResponse = r; });
  await page.goto(plan.start);
  for (let i = 0; i < 12 && !finalUrl; i++) {
    const url = page.url();
    if (plan.at_idp === 'abort' && await page.locator('a[href$="/abort"]').count()) {
      steps.push('idp-abort');
      await Promise.all([page.waitForNavigation(), page.click('a[href$="/abort"]')]);
    } else if (await page.locator('input[name="login"]').count()) {
      steps.push('idp-login');
      await page.fill('input[name="login"]', plan.user);
      await page.fill('input[name="password"]', 'test-password');
      await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    } else if (await page.locator('form[id="op.deviceConfirmForm"]').count()) {
      // The IdP's own device flow (a client signing in at the IdP directly): confirm the code shown.
      steps.push('idp-device-confirm');
      await Promise.all([page.waitForNavigation(), page.click('button[autofocus]')]);
    } else if (await page.locator('input[name="prompt"][value="consent"]').count()) {
      steps.push('idp-consent');
      await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    } else if (await page.locator('button[name="decision"]').count()) {
      steps.push('broker-consent');
      if (plan.consent === 'stop') break;
      if (plan.forge !== undefined) {
        await page.locator('input[name="csrf"]').evaluate((el, v) => { el.value = v; }, plan.forge);
      }
      await Promise.all([
        page.waitForNavigation().catch(() => {}),
        page.click(`button[name="decision"][value="${plan.consent || 'approve'}"]`),
      ]);
    } else if (await page.locator('input#user_code').count() && !steps.includes('broker-device')) {
      steps.push('broker-device');
      if (plan.user_code) await page.fill('input#user_code', plan.user_code);
      await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    } else if (await page.locator('button[name="idp"]').count()) {
      steps.push('broker-choose-idp');
      const choices = await page.locator('button[name="idp"]').evaluateAll((bs) => bs.map((b) => b.value));
      steps.push(`idps:${choices.join(',')}`);
      const pick = plan.idp ? page.locator(`button[name="idp"][value="${plan.idp}"]`) : page.locator('button[name="idp"]').first();
      await Promise.all([page.waitForNavigation(), pick.click()]);
    } else {
      steps.push(`stop:${new URL(url).pathname}`);
      break;
    }
  }
  const text = finalUrl ? '' : (await page.locator('body').innerText().catch(() => ''));
  const out = {
    final_url: finalUrl || page.url(),
    status: lastResponse ? lastResponse.status() : null,
    headers: lastResponse ? await lastResponse.allHeaders() : {},
    title: finalUrl ? '' : await page.title(),
    text,
    steps,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
} finally {
  await browser.close();
}
