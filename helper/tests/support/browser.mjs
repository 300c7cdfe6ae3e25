// A person at a browser, for the sign-in tests: headless Chromium (Debian's, driven by the pinned npm
// `playwright-core`) opens the URL it is given and goes through the real pages it meets: the IdP's
// login form, its consent page, the device confirmation page, until it lands on the loopback redirect
// (the helper's or Codex's page) or the IdP's device success page. The broker's own pages (the choice
// of IdP, consent, the device page) are gone through the same way.
//
//   node browser.mjs URL    (env: TOLLGATE_TEST_TOOLS, BROWSER_USER [alice], BROWSER_ACTION [approve|deny],
//                            CHROMIUM [/usr/bin/chromium])
//
// Every request to anything but 127.0.0.1 is aborted (the IdP's pages link web fonts): the tests stay
// on loopback. Prints one JSON line {"final": url, "text": body text} and exits 0, else exits 1.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const tools = process.env.TOLLGATE_TEST_TOOLS;
const { chromium } = await import(
  pathToFileURL(join(tools, 'idp/node_modules/playwright-core/index.mjs')).href
);
const url = process.argv[2];
const user = process.env.BROWSER_USER || 'alice';
const deny = process.env.BROWSER_ACTION === 'deny';

// Ports from 0 may be ones Chromium refuses as unsafe (ERR_UNSAFE_PORT): allow the ones in play, the
// page's own and the loopback redirect's.
const ports = new Set((process.env.BROWSER_ALLOW_PORTS || '').split(',').filter(Boolean));
const start = new URL(url);
if (start.port) ports.add(start.port);
const redirect = start.searchParams.get('redirect_uri');
if (redirect && new URL(redirect).port) ports.add(new URL(redirect).port);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    `--explicitly-allowed-ports=${[...ports].join(',')}`,
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-pings',
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
  ],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  await page.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return host === '127.0.0.1' || host === '[::1]' ? route.continue() : route.abort();
  });
  await page.goto(url);
  for (let step = 0; step < 12; step++) {
    await page.waitForLoadState('domcontentloaded');
    const here = new URL(page.url());
    const text = (await page.textContent('body')) ?? '';
    const forms = await page.locator('form').count();
    const done =
      here.pathname === '/callback' ||
      (forms === 0 && /Sign-in Success|Sign-in Failure|signed in|Sign-in failed|approved|denied/i.test(text));
    if (done) {
      process.stdout.write(`${JSON.stringify({ final: page.url(), text: text.trim().replace(/\s+/g, ' ') })}\n`);
      code = 0;
      break;
    }
    const nav = () => page.waitForNavigation({ waitUntil: 'domcontentloaded' });
    if (deny && (await page.locator('a[href$="/abort"]').count())) {
      // The person cancels at the IdP.
      await Promise.all([nav(), page.click('a[href$="/abort"]')]);
    } else if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', user);
      await page.fill('input[name="password"]', 'any-password');
      await Promise.all([nav(), page.click('button[type="submit"]')]);
    } else if (await page.locator('form[id="op.deviceConfirmForm"]').count()) {
      const button = deny ? 'button[name="abort"]' : 'button[autofocus]';
      await Promise.all([nav(), page.click(button)]);
    } else if (await page.locator('form[action$="/confirm"]').count()) {
      if (deny) {
        await Promise.all([nav(), page.click('a[href$="/abort"]')]);
      } else {
        await Promise.all([nav(), page.click('button[type="submit"]')]);
      }
    } else if (await page.locator('button[name="decision"]').count()) {
      // The broker's consent page: approve or deny what it grants.
      await Promise.all([
        nav().catch(() => {}),
        page.click(`button[name="decision"][value="${deny ? 'deny' : 'approve'}"]`),
      ]);
    } else if (await page.locator('button[name="idp"]').count()) {
      // The broker's choice of company IdP: the first.
      await Promise.all([nav(), page.locator('button[name="idp"]').first().click()]);
    } else if (await page.locator('form button[type="submit"], form input[type="submit"]').count()) {
      // Any other page with one form (a broker's own sign-in or consent page): submit it.
      await Promise.all([nav(), page.locator('form [type="submit"]').first().click()]);
    } else {
      console.error(`stuck at ${page.url()}: ${text.slice(0, 300)}`);
      break;
    }
  }
} catch (e) {
  console.error(`browser: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(code);
