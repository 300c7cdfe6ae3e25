// A person at a browser, for the sign-in tests: headless Chromium (Debian's, driven by the pinned npm
// `playwright-core`) opens the URL it is given and goes through the real pages it meets: the IdP's
// login form, its consent page, the device confirmation page, until it lands on the loopback redirect
// (the helper's or Codex's page) or the IdP's device success page.
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

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
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
    const done =
      here.pathname === '/callback' || /Sign-in Success|Sign-in Failure|signed in|Sign-in failed/i.test(text);
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
